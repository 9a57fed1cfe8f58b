//! Counting what the controller did: Kubernetes writes from the kube-apiserver audit log (by
//! the controller's identity) and EC2 calls from the fault proxy's request log.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use feip::testenv::fault_proxy::{Fault, RequestRecord};

use crate::world::Env;
use crate::{CONTROLLER_USER, LEADER_NS};

/// Reads the kube-apiserver audit log incrementally.
pub struct Audit {
    path: PathBuf,
    offset: u64,
}

#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub at: Timestamp,
    pub user: String,
    pub verb: String,
    pub resource: String,
}

impl Audit {
    pub fn new(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Self {
            path: path.to_path_buf(),
            offset,
        }
    }

    /// Complete events appended since the last call.
    pub fn read_new(&mut self) -> anyhow::Result<Vec<AuditEvent>> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut out = Vec::new();
        for line in buf[..complete].split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if v["stage"] != "ResponseComplete" {
                continue;
            }
            let Some(at) = v["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
            else {
                continue;
            };
            let obj = &v["objectRef"];
            let mut resource = obj["resource"].as_str().unwrap_or("-").to_string();
            if let Some(sub) = obj["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            if resource == "leases" && obj["namespace"] == LEADER_NS {
                resource = "leases (leader election)".into();
            }
            out.push(AuditEvent {
                at,
                user: v["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                verb: v["verb"].as_str().unwrap_or_default().to_string(),
                resource,
            });
        }
        Ok(out)
    }
}

/// Kubernetes writes (create/update/patch/delete) by the controller, keyed "verb resource".
pub fn controller_writes(events: &[AuditEvent]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events.iter().filter(|e| e.user == CONTROLLER_USER) {
        if matches!(e.verb.as_str(), "create" | "update" | "patch" | "delete") {
            *m.entry(format!("{} {}", e.verb, e.resource)).or_default() += 1;
        }
    }
    m
}

pub fn ec2_counts(records: &[RequestRecord]) -> (BTreeMap<String, usize>, usize) {
    let mut m = BTreeMap::new();
    let mut throttled = 0;
    for r in records {
        *m.entry(r.action.clone()).or_default() += 1;
        if r.fault == Some(Fault::Throttle) {
            throttled += 1;
        }
    }
    (m, throttled)
}

const MUTATING: &[&str] = &["AssociateAddress", "DisassociateAddress"];

pub fn mutations(records: &[RequestRecord]) -> usize {
    records
        .iter()
        .filter(|r| MUTATING.contains(&r.action.as_str()))
        .count()
}

/// What one scenario (phase) sent to EC2 through the controller's proxy and what AWS's
/// one-EIP-per-private-IP rule did about it. A scenario may associate each address it moves
/// once (`moved_addresses`; 0 for adoption, steady state, restart) and displace none.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScenarioEc2 {
    pub scenario: String,
    pub moved_addresses: usize,
    pub associate_calls: usize,
    pub disassociate_calls: usize,
    /// `FaultProxy::displacements()` recorded during the scenario.
    pub displacements: usize,
    /// "displaced by other at interface/private IP", one per displacement.
    pub displaced: Vec<String>,
}

impl ScenarioEc2 {
    /// Why the scenario broke the rules, if it did.
    pub fn violation(&self) -> Option<String> {
        let mut v = Vec::new();
        if self.displacements > 0 {
            v.push(format!(
                "{} displacement(s): {}",
                self.displacements,
                self.displaced.join("; ")
            ));
        }
        if self.associate_calls > self.moved_addresses {
            v.push(format!(
                "{} AssociateAddress for {} moved address(es)",
                self.associate_calls, self.moved_addresses
            ));
        }
        if self.disassociate_calls > 0 {
            v.push(format!("{} DisassociateAddress", self.disassociate_calls));
        }
        (!v.is_empty()).then(|| format!("{}: {}", self.scenario, v.join(", ")))
    }
}

/// Where the controller proxy's request log and displacement list stood when a scenario
/// started.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub log: usize,
    displacements: usize,
}

impl Mark {
    pub fn now(env: &Env) -> Self {
        Self {
            log: env.proxy.log_len(),
            displacements: env.proxy.displacements().len(),
        }
    }

    /// The scenario's EC2 figures from this mark to now.
    pub fn scenario(&self, env: &Env, scenario: &str, moved_addresses: usize) -> ScenarioEc2 {
        let records = env.proxy.requests_since(self.log);
        // Every request counts, throttled or not: a throttled associate is one too many.
        let count = |action: &str| records.iter().filter(|r| r.action == action).count();
        let displaced: Vec<String> = env
            .proxy
            .displacements()
            .iter()
            .skip(self.displacements)
            .map(|d| {
                format!(
                    "{} by {} at {}/{}",
                    d.displaced, d.by, d.network_interface_id, d.private_ip
                )
            })
            .collect();
        let s = ScenarioEc2 {
            scenario: scenario.into(),
            moved_addresses,
            associate_calls: count("AssociateAddress"),
            disassociate_calls: count("DisassociateAddress"),
            displacements: displaced.len(),
            displaced,
        };
        println!(
            "    EC2 [{}]: AssociateAddress {} for {} moved address(es), DisassociateAddress {}, displacements {}",
            s.scenario, s.associate_calls, s.moved_addresses, s.disassociate_calls, s.displacements
        );
        s
    }
}
