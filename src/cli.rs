//! The pcs-style operator verbs of the `feip` binary (also usable as the kubectl plugin
//! `kubectl feip`): status, move, ban, clear, cleanup, disable/enable, unmanage/manage and
//! standby/unstandby.
//!
//! Every verb is a small edit of the declarative API: a merge patch of the FloatingElasticIP's
//! spec (or a label on a Node); the controller does the rest. Edits that compute a list from the
//! current object (`bans`, `pin`) carry the object's `resourceVersion`, so a concurrent change
//! makes the patch fail with a conflict and the verb recomputes instead of overwriting it.
//!
//! The pure parts (what to patch, how to print) are plain functions with unit tests; `Session`
//! binds them to a cluster.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::SelectorExt as _;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{
    Ban, FailoverRecord, FloatingElasticIP, FloatingElasticIPSpec, FloatingElasticIPStatus,
    Management, STANDBY_LABEL, TargetState,
};

/// Field manager recorded for every change the CLI makes.
pub const FIELD_MANAGER: &str = "feip-cli";

/// How often an edit is attempted when concurrent writers keep changing the object.
const CONFLICT_RETRIES: usize = 10;

/// What is printed in a cell that has no value (as kubectl does).
const NONE: &str = "<none>";

/// Errors an operator can act on; their messages name the thing that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("floatingelasticip \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound { name: String, namespace: String },
    #[error("node \"{0}\" not found")]
    NodeNotFound(String),
    #[error(
        "node \"{node}\" is not a candidate of floatingelasticip \"{name}\" (candidates: {candidates})"
    )]
    NotCandidate {
        node: String,
        name: String,
        candidates: String,
    },
    #[error(
        "node \"{node}\" does not match the nodeSelector of floatingelasticip \"{name}\" ({selector})"
    )]
    SelectorMismatch {
        node: String,
        name: String,
        selector: String,
    },
    #[error(
        "node \"{node}\" is banned from floatingelasticip \"{name}\"; run `feip clear {name} {node}` first"
    )]
    Banned { node: String, name: String },
    #[error("lifetime must be a positive Go duration such as 30m or 1h: {0}")]
    BadLifetime(String),
}

/// The outcome of a verb: what goes to stdout, and warnings for stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub stdout: String,
    pub warnings: Vec<String>,
}

impl Report {
    fn line(message: impl Into<String>) -> Self {
        let mut stdout = message.into();
        stdout.push('\n');
        Self {
            stdout,
            warnings: Vec::new(),
        }
    }
}

/// How to reach the cluster, as kubectl takes it.
#[derive(Debug, Default, Clone)]
pub struct ConnectOptions {
    /// Kubeconfig file(s), `:`-separated like `KUBECONFIG`; the default loading rules
    /// (`~/.kube/config`, then in-cluster) when absent.
    pub kubeconfig: Option<OsString>,
    /// Kubeconfig context; the current context when absent.
    pub context: Option<String>,
    /// Namespace; the context's namespace (else "default") when absent.
    pub namespace: Option<String>,
}

/// A client and the namespace the verbs act in.
#[derive(Clone)]
pub struct Session {
    pub client: Client,
    pub namespace: String,
}

impl Session {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
        }
    }

    /// Builds a client from the kubeconfig rules kubectl follows.
    pub async fn connect(opts: &ConnectOptions) -> anyhow::Result<Self> {
        let kopts = KubeConfigOptions {
            context: opts.context.clone(),
            ..KubeConfigOptions::default()
        };
        let paths: Vec<_> = opts
            .kubeconfig
            .as_ref()
            .map(|v| {
                std::env::split_paths(v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let config = if paths.is_empty() {
            match kube::Config::from_kubeconfig(&kopts).await {
                Ok(c) => c,
                Err(kubeconfig_err) if opts.context.is_none() => kube::Config::incluster()
                    .map_err(|incluster_err| {
                        anyhow::anyhow!(
                            "no usable kubeconfig ({kubeconfig_err}) and not running in a cluster ({incluster_err}); pass --kubeconfig"
                        )
                    })?,
                Err(e) => return Err(e).context("loading the kubeconfig"),
            }
        } else {
            let mut merged = Kubeconfig::default();
            for p in &paths {
                let kc = Kubeconfig::read_from(p)
                    .with_context(|| format!("reading kubeconfig {}", p.display()))?;
                merged = merged.merge(kc)?;
            }
            kube::Config::from_custom_kubeconfig(merged, &kopts)
                .await
                .context("loading the kubeconfig")?
        };
        let namespace = opts
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        Ok(Self {
            client: Client::try_from(config)?,
            namespace,
        })
    }

    fn feips(&self) -> Api<FloatingElasticIP> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn not_found(&self, name: &str) -> CliError {
        CliError::NotFound {
            name: name.into(),
            namespace: self.namespace.clone(),
        }
    }

    /// The object, or a `NotFound` naming it and the namespace.
    pub async fn get(&self, name: &str) -> anyhow::Result<FloatingElasticIP> {
        match self.feips().get(name).await {
            Ok(f) => Ok(f),
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(self.not_found(name).into()),
            Err(e) => Err(e).with_context(|| format!("reading floatingelasticip \"{name}\"")),
        }
    }

    async fn get_node(&self, node: &str) -> anyhow::Result<Node> {
        match Api::<Node>::all(self.client.clone()).get(node).await {
            Ok(n) => Ok(n),
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                Err(CliError::NodeNotFound(node.into()).into())
            }
            Err(e) => Err(e).with_context(|| format!("reading node \"{node}\"")),
        }
    }

    /// Merge-patches `{"spec": spec_patch}` without a precondition (for plain field sets).
    async fn patch_spec(&self, name: &str, spec_patch: Value) -> anyhow::Result<FloatingElasticIP> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self
            .feips()
            .patch(name, &pp, &Patch::Merge(json!({"spec": spec_patch})))
            .await
        {
            Ok(f) => Ok(f),
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(self.not_found(name).into()),
            Err(e) => Err(e).with_context(|| format!("patching floatingelasticip \"{name}\"")),
        }
    }

    /// Reads the object, lets `compute` derive a spec patch from it (None = nothing to do) and
    /// applies it with the read `resourceVersion` as a precondition, retrying on conflicts.
    async fn update_spec<T>(
        &self,
        name: &str,
        mut compute: impl FnMut(&FloatingElasticIP) -> anyhow::Result<(Option<Value>, T)>,
    ) -> anyhow::Result<(Option<FloatingElasticIP>, T)> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.get(name).await?;
            let (patch, extra) = compute(&current)?;
            let Some(spec_patch) = patch else {
                return Ok((None, extra));
            };
            let body = json!({
                "metadata": {"resourceVersion": current.resource_version()},
                "spec": spec_patch,
            });
            match self.feips().patch(name, &pp, &Patch::Merge(body)).await {
                Ok(f) => return Ok((Some(f), extra)),
                Err(kube::Error::Api(s)) if s.is_conflict() && attempt < CONFLICT_RETRIES => {
                    // Someone else changed it: recompute from the new object, after a short
                    // random pause so racing writers spread out.
                    let pause = rand::random_range(10..60);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    return Err(self.not_found(name).into());
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("patching floatingelasticip \"{name}\""));
                }
            }
        }
    }

    /// `feip status [-A] [NAME]`.
    pub async fn status(
        &self,
        all_namespaces: bool,
        name: Option<&str>,
        now: Timestamp,
    ) -> anyhow::Result<Report> {
        if let Some(name) = name {
            let f = self.get(name).await?;
            let mut out = render_table(&STATUS_HEADERS, &[status_row(&f, now)]);
            out.push('\n');
            out.push_str(&describe(&f, now));
            return Ok(Report {
                stdout: out,
                warnings: Vec::new(),
            });
        }
        let api: Api<FloatingElasticIP> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.feips()
        };
        let mut items = api
            .list(&ListParams::default())
            .await
            .context("listing floatingelasticips")?
            .items;
        if items.is_empty() {
            let msg = if all_namespaces {
                "No floatingelasticips found.".to_string()
            } else {
                format!(
                    "No floatingelasticips found in namespace \"{}\".",
                    self.namespace
                )
            };
            return Ok(Report::line(msg));
        }
        items.sort_by_key(|a| (a.namespace(), a.name_any()));
        let rows: Vec<_> = items.iter().map(|f| status_row(f, now)).collect();
        Ok(Report {
            stdout: render_table(&STATUS_HEADERS, &rows),
            warnings: Vec::new(),
        })
    }

    /// `feip move NAME --to NODE`: pins the address to NODE until the controller has confirmed
    /// it there (`clearWhenDone`).
    pub async fn move_to(&self, name: &str, node: &str) -> anyhow::Result<Report> {
        let f = self.get(name).await?;
        let node_obj = self.get_node(node).await?;
        check_candidate(&f, node, Some(&node_obj))?;
        let (_, ()) = self
            .update_spec(name, |f| {
                check_candidate(f, node, Some(&node_obj))?;
                check_not_banned(f, node)?;
                Ok((Some(move_patch(node)), ()))
            })
            .await?;
        let mut report = Report::line(format!(
            "floatingelasticip \"{name}\" moving to node \"{node}\" (the pin is cleared once the address is confirmed there)"
        ));
        report.warnings = node_warnings(&f, &node_obj);
        Ok(report)
    }

    /// `feip ban NAME NODE [--lifetime D]`.
    pub async fn ban(
        &self,
        name: &str,
        node: &str,
        lifetime: Option<Duration>,
        now: Timestamp,
    ) -> anyhow::Result<Report> {
        let expires_at = lifetime.map(|l| expiry(now, l)).transpose()?;
        let f = self.get(name).await?;
        let node_obj = if f.spec.candidates.is_none() {
            Some(self.get_node(node).await?)
        } else {
            None
        };
        let (_, unpinned) = self
            .update_spec(name, |f| {
                check_candidate(f, node, node_obj.as_ref())?;
                let unpins = f.spec.pin.as_ref().is_some_and(|p| p.node == node);
                Ok((Some(ban_patch(&f.spec, node, expires_at)), unpins))
            })
            .await?;
        let until = match expires_at {
            Some(t) => format!(" until {}", fmt_ts(t)),
            None => String::new(),
        };
        let mut report = Report::line(format!(
            "node \"{node}\" banned from floatingelasticip \"{name}\"{until}"
        ));
        if unpinned {
            report
                .warnings
                .push(format!("the pin on node \"{node}\" was removed"));
        }
        Ok(report)
    }

    /// `feip clear NAME [NODE]`: removes the pin and the bans (all, or NODE's).
    pub async fn clear(&self, name: &str, node: Option<&str>) -> anyhow::Result<Report> {
        let (_, what) = self
            .update_spec(name, |f| {
                let cleared = cleared_constraints(&f.spec, node);
                Ok((clear_patch(&f.spec, node), cleared))
            })
            .await?;
        let scope = match node {
            Some(n) => format!(" for node \"{n}\""),
            None => String::new(),
        };
        Ok(Report::line(if what.is_empty() {
            format!("floatingelasticip \"{name}\": nothing to clear{scope}")
        } else {
            format!(
                "floatingelasticip \"{name}\": cleared {}{scope}",
                what.join(", ")
            )
        }))
    }

    /// `feip cleanup NAME [NODE] [--wait]`: asks the controller to reset failure counts; with
    /// `wait`, waits (at most that long) until the status shows the request handled.
    pub async fn cleanup(
        &self,
        name: &str,
        node: Option<&str>,
        wait: Option<Duration>,
        now: Timestamp,
    ) -> anyhow::Result<Report> {
        let f = self.get(name).await?;
        if let Some(n) = node {
            let known = f
                .status
                .as_ref()
                .is_some_and(|s| s.nodes.iter().any(|r| r.node == n));
            if !known {
                let node_obj = if f.spec.candidates.is_none() {
                    Some(self.get_node(n).await?)
                } else {
                    None
                };
                check_candidate(&f, n, node_obj.as_ref())?;
            }
        }
        let request_id = new_request_id(now);
        self.patch_spec(name, cleanup_patch(&request_id, node))
            .await?;
        let scope = node.map_or("all nodes".to_string(), |n| format!("node \"{n}\""));
        let Some(timeout) = wait else {
            return Ok(Report::line(format!(
                "floatingelasticip \"{name}\": cleanup of {scope} requested (request {request_id})"
            )));
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = self.get(name).await?;
            let handled = f
                .status
                .as_ref()
                .and_then(|s| s.last_cleanup_request_id.as_deref())
                == Some(request_id.as_str());
            if handled {
                return Ok(Report::line(format!(
                    "floatingelasticip \"{name}\": failure counts of {scope} reset (request {request_id})"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "floatingelasticip \"{name}\": cleanup request {request_id} not handled within {timeout:?} (is the controller running?)"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `feip disable|enable NAME`.
    pub async fn set_target_state(&self, name: &str, state: TargetState) -> anyhow::Result<Report> {
        self.patch_spec(name, json!({"targetState": state})).await?;
        let verb = match state {
            TargetState::Stopped => "disabled",
            TargetState::Started => "enabled",
        };
        Ok(Report::line(format!(
            "floatingelasticip \"{name}\" {verb} (targetState: {state:?})"
        )))
    }

    /// `feip unmanage|manage NAME`.
    pub async fn set_management(&self, name: &str, mode: Management) -> anyhow::Result<Report> {
        self.patch_spec(name, json!({"management": mode})).await?;
        let verb = match mode {
            Management::ObserveOnly => "unmanaged",
            Management::Managed => "managed",
        };
        Ok(Report::line(format!(
            "floatingelasticip \"{name}\" {verb} (management: {mode:?})"
        )))
    }

    /// `feip standby|unstandby NODE`: sets or removes the standby label.
    pub async fn standby(&self, node: &str, on: bool) -> anyhow::Result<Report> {
        self.get_node(node).await?;
        let value = if on { json!("true") } else { Value::Null };
        let patch = json!({"metadata": {"labels": {STANDBY_LABEL: value}}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match Api::<Node>::all(self.client.clone())
            .patch(node, &pp, &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                return Err(CliError::NodeNotFound(node.into()).into());
            }
            Err(e) => return Err(e).with_context(|| format!("labelling node \"{node}\"")),
        }
        Ok(Report::line(if on {
            format!("node \"{node}\" in standby ({STANDBY_LABEL}=true)")
        } else {
            format!("node \"{node}\" out of standby ({STANDBY_LABEL} removed)")
        }))
    }
}

// ---- pure helpers: what to patch ----

/// Parses a ban lifetime: a positive Go duration (`30m`, `1h30m`).
pub fn parse_lifetime(s: &str) -> Result<Duration, CliError> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| CliError::BadLifetime(format!("{s:?}: {e}")))?;
    if d.is_negative() || Duration::from(d).is_zero() {
        return Err(CliError::BadLifetime(format!("{s:?}")));
    }
    Ok(d.into())
}

/// `now + lifetime`, whole seconds (what a metav1.Time can hold).
pub fn expiry(now: Timestamp, lifetime: Duration) -> anyhow::Result<Timestamp> {
    let lifetime = SignedDuration::try_from(lifetime).context("lifetime out of range")?;
    let t = now.checked_add(lifetime).context("lifetime out of range")?;
    Ok(Timestamp::from_second(t.as_second())?)
}

/// The spec fragment of `feip move`: a pin the controller clears once done.
pub fn move_patch(node: &str) -> Value {
    json!({"pin": {"node": node, "clearWhenDone": true}})
}

/// The spec fragment of `feip ban`: the ban list with NODE's ban added or replaced (in place),
/// and the pin removed when it names NODE (a ban wins over a pin, as -INFINITY over INFINITY).
pub fn ban_patch(spec: &FloatingElasticIPSpec, node: &str, expires_at: Option<Timestamp>) -> Value {
    let ban = Ban {
        node: node.into(),
        expires_at: expires_at.map(Time),
    };
    let mut bans = spec.bans.clone().unwrap_or_default();
    match bans.iter_mut().find(|b| b.node == node) {
        Some(existing) => *existing = ban,
        None => bans.push(ban),
    }
    let mut patch = json!({"bans": bans});
    if spec.pin.as_ref().is_some_and(|p| p.node == node) {
        patch["pin"] = Value::Null;
    }
    patch
}

/// What `feip clear` removes, for the message ("pin on a", "ban on b").
pub fn cleared_constraints(spec: &FloatingElasticIPSpec, node: Option<&str>) -> Vec<String> {
    let hits = |n: &str| node.is_none_or(|want| want == n);
    let mut out = Vec::new();
    if let Some(p) = spec.pin.as_ref().filter(|p| hits(&p.node)) {
        out.push(format!("pin on \"{}\"", p.node));
    }
    for b in spec.bans.iter().flatten().filter(|b| hits(&b.node)) {
        out.push(format!("ban on \"{}\"", b.node));
    }
    out
}

/// The spec fragment of `feip clear`: the pin and bans without those of NODE (or all);
/// None when there is nothing to remove.
pub fn clear_patch(spec: &FloatingElasticIPSpec, node: Option<&str>) -> Option<Value> {
    let hits = |n: &str| node.is_none_or(|want| want == n);
    let mut patch = serde_json::Map::new();
    if spec.pin.as_ref().is_some_and(|p| hits(&p.node)) {
        patch.insert("pin".into(), Value::Null);
    }
    let bans = spec.bans.clone().unwrap_or_default();
    if bans.iter().any(|b| hits(&b.node)) {
        let kept: Vec<Ban> = bans.into_iter().filter(|b| !hits(&b.node)).collect();
        let value = if kept.is_empty() {
            Value::Null
        } else {
            json!(kept)
        };
        patch.insert("bans".into(), value);
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// The spec fragment of `feip cleanup`. `node: null` removes a node left by an earlier request.
pub fn cleanup_patch(request_id: &str, node: Option<&str>) -> Value {
    json!({"cleanup": {"requestId": request_id, "node": node}})
}

/// A request id that differs on every call (time for readability, randomness for uniqueness).
pub fn new_request_id(now: Timestamp) -> String {
    format!("cli-{}-{:08x}", now.as_second(), rand::random::<u32>())
}

/// The candidate list as text, for messages.
fn candidate_names(spec: &FloatingElasticIPSpec) -> String {
    let names: Vec<&str> = spec
        .candidates
        .iter()
        .flatten()
        .map(|c| c.node.as_str())
        .collect();
    if names.is_empty() {
        NONE.into()
    } else {
        names.join(", ")
    }
}

/// Whether a label selector matches; an unparseable selector matches nothing (as the
/// controller treats it).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    kube::core::Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

fn selector_text(selector: &LabelSelector) -> String {
    kube::core::Selector::try_from(selector.clone())
        .map(|s| s.to_string())
        .unwrap_or_else(|e| format!("invalid selector: {e}"))
}

/// Checks that NODE may hold the address: listed among `spec.candidates`, or (with a node
/// selector) a Node whose labels match. `node_obj` is needed only for selector objects.
pub fn check_candidate(
    f: &FloatingElasticIP,
    node: &str,
    node_obj: Option<&Node>,
) -> Result<(), CliError> {
    let name = f.name_any();
    if let Some(cands) = &f.spec.candidates {
        if cands.iter().any(|c| c.node == node) {
            return Ok(());
        }
        return Err(CliError::NotCandidate {
            node: node.into(),
            name,
            candidates: candidate_names(&f.spec),
        });
    }
    let Some(selector) = &f.spec.node_selector else {
        return Err(CliError::NotCandidate {
            node: node.into(),
            name,
            candidates: NONE.into(),
        });
    };
    let Some(n) = node_obj else {
        return Err(CliError::NodeNotFound(node.into()));
    };
    if selector_matches(selector, n.labels()) {
        Ok(())
    } else {
        Err(CliError::SelectorMismatch {
            node: node.into(),
            name,
            selector: selector_text(selector),
        })
    }
}

/// A pin on a banned node is rejected at admission; say why in the CLI's words.
pub fn check_not_banned(f: &FloatingElasticIP, node: &str) -> Result<(), CliError> {
    if f.spec.bans.iter().flatten().any(|b| b.node == node) {
        return Err(CliError::Banned {
            node: node.into(),
            name: f.name_any(),
        });
    }
    Ok(())
}

/// Why a move to `node` may not happen (yet), as warnings.
fn node_warnings(f: &FloatingElasticIP, node: &Node) -> Vec<String> {
    let name = node.name_any();
    let mut out = Vec::new();
    if node
        .labels()
        .get(STANDBY_LABEL)
        .is_some_and(|v| v == "true")
    {
        out.push(format!(
            "node \"{name}\" is in standby; the address moves there only after `feip unstandby {name}`"
        ));
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push(format!(
            "node \"{name}\" is cordoned; the address moves there only once it is uncordoned"
        ));
    }
    let failure_banned = f
        .status
        .as_ref()
        .is_some_and(|s| s.nodes.iter().any(|r| r.node == name && r.banned));
    if failure_banned {
        out.push(format!(
            "node \"{name}\" is banned after failures; run `feip cleanup {} {name}` to reset it",
            f.name_any()
        ));
    }
    out
}

// ---- pure helpers: what to print ----

/// Columns of `feip status`.
pub const STATUS_HEADERS: [&str; 8] = [
    "NAMESPACE",
    "NAME",
    "ADDRESS",
    "HOLDER",
    "STATUS",
    "FAILOVERS",
    "LAST-FAILOVER",
    "BANS",
];

/// A kubectl-style table: columns padded to their widest cell, three spaces apart.
pub fn render_table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.as_ref().chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{cell:<w$}   ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(AsRef::as_ref).collect());
    }
    out
}

/// One `feip status` row.
pub fn status_row(f: &FloatingElasticIP, now: Timestamp) -> Vec<String> {
    let st = f.status.clone().unwrap_or_default();
    let address = st
        .address
        .as_ref()
        .and_then(|a| a.public_ip.clone())
        .or_else(|| f.spec.public_ip.clone())
        .or_else(|| f.spec.allocation_id.clone())
        .unwrap_or_else(|| NONE.into());
    vec![
        f.namespace().unwrap_or_default(),
        f.name_any(),
        address,
        st.holder
            .as_ref()
            .map_or_else(|| NONE.into(), |h| h.node.clone()),
        st.phase.map_or_else(|| NONE.into(), |p| format!("{p:?}")),
        st.failover_count.to_string(),
        st.last_failover
            .as_ref()
            .map_or_else(|| NONE.into(), format_last_failover),
        format_bans(&f.spec, &st, now),
    ]
}

/// `from->to (reason, 1.234s)`.
pub fn format_last_failover(r: &FailoverRecord) -> String {
    let from = r.from.as_deref().unwrap_or("?");
    match &r.duration_seconds {
        Some(d) => format!("{from}->{} ({}, {d}s)", r.to, r.reason),
        None => format!("{from}->{} ({})", r.to, r.reason),
    }
}

/// Active bans: operator bans (`node` or `node (1h)` with the time left) and failure bans
/// (`node (failed)`), or `<none>`.
pub fn format_bans(
    spec: &FloatingElasticIPSpec,
    status: &FloatingElasticIPStatus,
    now: Timestamp,
) -> String {
    let mut out: Vec<String> = Vec::new();
    for b in spec.bans.iter().flatten() {
        match &b.expires_at {
            None => out.push(b.node.clone()),
            Some(t) if t.0 > now => {
                out.push(format!(
                    "{} ({})",
                    b.node,
                    human_duration(t.0.duration_since(now))
                ));
            }
            Some(_) => {} // expired
        }
    }
    for r in status.nodes.iter().filter(|r| r.banned) {
        if !out
            .iter()
            .any(|o| o.split(' ').next() == Some(r.node.as_str()))
        {
            out.push(format!("{} (failed)", r.node));
        }
    }
    if out.is_empty() {
        NONE.into()
    } else {
        out.join(", ")
    }
}

/// kubectl-like short durations: `45s`, `3m20s`, `42m`, `5h7m`, `20h`, `3d`.
pub fn human_duration(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (m, h, days) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        format!("{m}m{}s", s % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else {
        format!("{days}d")
    }
}

fn fmt_ts(t: Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_else(|_| t.to_string())
}

fn fmt_time(t: &Option<Time>) -> String {
    t.as_ref().map_or_else(|| NONE.into(), |t| fmt_ts(t.0))
}

/// The details of `feip status NAME` below its table row: settings, holder, last failover,
/// conditions and per-node failure counts.
pub fn describe(f: &FloatingElasticIP, now: Timestamp) -> String {
    let st = f.status.clone().unwrap_or_default();
    let spec = &f.spec;
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
    };
    let eip = spec
        .allocation_id
        .clone()
        .or_else(|| spec.public_ip.clone())
        .unwrap_or_default();
    let assoc = st
        .address
        .as_ref()
        .and_then(|a| a.association_id.clone())
        .map_or_else(
            || "not associated".to_string(),
            |a| format!("association {a}"),
        );
    field("Elastic IP", format!("{eip} ({assoc})"));
    let candidates = match (&spec.candidates, &spec.node_selector) {
        (Some(c), _) => c
            .iter()
            .map(|c| match c.priority {
                Some(p) => format!("{} (priority {p})", c.node),
                None => c.node.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        (None, Some(sel)) => format!("nodeSelector {}", selector_text(sel)),
        (None, None) => NONE.into(),
    };
    field("Candidates", candidates);
    field(
        "Target state",
        format!("{:?}", spec.target_state.unwrap_or_default()),
    );
    field(
        "Management",
        format!("{:?}", spec.management.unwrap_or_default()),
    );
    let pin = spec.pin.as_ref().map_or_else(
        || NONE.into(),
        |p| {
            let mut s = p.node.clone();
            if p.clear_when_done == Some(true) {
                s.push_str(" (move in progress; cleared when done)");
            }
            if let Some(t) = &p.expires_at {
                let _ = write!(s, " until {}", fmt_ts(t.0));
            }
            s
        },
    );
    field("Pin", pin);
    let bans = spec
        .bans
        .iter()
        .flatten()
        .map(|b| match &b.expires_at {
            Some(t) if t.0 <= now => format!("{} (expired {})", b.node, fmt_ts(t.0)),
            Some(t) => format!("{} (until {})", b.node, fmt_ts(t.0)),
            None => b.node.clone(),
        })
        .collect::<Vec<_>>();
    field(
        "Bans",
        if bans.is_empty() {
            NONE.into()
        } else {
            bans.join(", ")
        },
    );
    let holder = st.holder.as_ref().map_or_else(
        || NONE.into(),
        |h| {
            let parts: Vec<&str> = [
                h.instance_id.as_deref(),
                h.network_interface_id.as_deref(),
                h.private_ip_address.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect();
            let mut s = h.node.clone();
            if !parts.is_empty() {
                let _ = write!(s, " ({})", parts.join(", "));
            }
            if let Some(since) = &h.since {
                let _ = write!(s, " since {}", fmt_ts(since.0));
            }
            s
        },
    );
    field("Holder", holder);
    if let Some(l) = &st.lease {
        field(
            "Lease",
            format!("{} (transitions {})", l.name, l.transitions),
        );
    }
    let last = st.last_failover.as_ref().map_or_else(
        || NONE.into(),
        |r| {
            let mut s = format!(
                "{} -> {}, reason {}",
                r.from.as_deref().unwrap_or("?"),
                r.to,
                r.reason
            );
            if let Some(d) = &r.duration_seconds {
                let _ = write!(s, ", took {d}s");
            }
            let _ = write!(
                s,
                " (detected {}, completed {})",
                fmt_time(&r.detected_at),
                fmt_time(&r.completed_at)
            );
            s
        },
    );
    field("Last failover", last);
    if let Some(c) = &spec.cleanup {
        let state = if st.last_cleanup_request_id.as_deref() == Some(c.request_id.as_str()) {
            "handled"
        } else {
            "pending"
        };
        let scope = c.node.as_deref().unwrap_or("all nodes");
        field(
            "Cleanup",
            format!("request {} for {scope}: {state}", c.request_id),
        );
    }
    let generation = f.metadata.generation.unwrap_or(0);
    field(
        "Generation",
        match st.observed_generation {
            Some(o) => format!("{generation} (observed {o})"),
            None => format!("{generation} (not yet observed)"),
        },
    );

    out.push_str("\nConditions:\n");
    if st.conditions.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    human_duration(now.duration_since(c.last_transition_time.0)),
                    c.message.clone(),
                ]
            })
            .collect();
        indent(
            &mut out,
            &render_table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &rows),
        );
    }

    out.push_str("\nNode failures:\n");
    if st.nodes.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .nodes
            .iter()
            .map(|r| {
                let banned = match (&r.banned, &r.banned_until) {
                    (false, _) => "no".to_string(),
                    (true, Some(t)) => format!("until {}", fmt_ts(t.0)),
                    (true, None) => "yes".to_string(),
                };
                vec![
                    r.node.clone(),
                    r.failure_count.to_string(),
                    fmt_time(&r.last_failure),
                    r.last_failure_reason.clone().unwrap_or_else(|| NONE.into()),
                    banned,
                ]
            })
            .collect();
        indent(
            &mut out,
            &render_table(
                &["NODE", "FAILURES", "LAST-FAILURE", "REASON", "BANNED"],
                &rows,
            ),
        );
    }
    out
}

fn indent(out: &mut String, text: &str) {
    for l in text.lines() {
        let _ = writeln!(out, "  {l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn feip(spec: Value, status: Option<Value>) -> FloatingElasticIP {
        let mut v = json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": "web", "namespace": "prod"}, "spec": spec,
        });
        if let Some(s) = status {
            v["status"] = s;
        }
        serde_json::from_value(v).expect("feip")
    }

    fn spec(extra: Value) -> FloatingElasticIPSpec {
        let mut v = json!({
            "allocationId": "eipalloc-0123456789abcdef0",
            "candidates": [{"node": "a"}, {"node": "b"}, {"node": "c"}],
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::from_value(v).expect("spec")
    }

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("node")
    }

    #[test]
    fn cli_move_patch_pins_with_clear_when_done() {
        assert_eq!(
            move_patch("b"),
            json!({"pin": {"node": "b", "clearWhenDone": true}})
        );
    }

    #[test]
    fn cli_ban_patch_appends_replaces_and_unpins() {
        let t = ts("2030-01-01T00:00:00Z");
        let s = spec(json!({}));
        assert_eq!(ban_patch(&s, "b", None), json!({"bans": [{"node": "b"}]}));

        let s = spec(
            json!({"bans": [{"node": "a"}, {"node": "b", "expiresAt": "2029-01-01T00:00:00Z"}]}),
        );
        assert_eq!(
            ban_patch(&s, "b", Some(t)),
            json!({"bans": [{"node": "a"}, {"node": "b", "expiresAt": "2030-01-01T00:00:00Z"}]}),
            "replaced in place"
        );
        assert_eq!(
            ban_patch(&s, "c", None),
            json!({"bans": [{"node": "a"}, {"node": "b", "expiresAt": "2029-01-01T00:00:00Z"}, {"node": "c"}]})
        );

        let s = spec(json!({"pin": {"node": "c"}}));
        assert_eq!(
            ban_patch(&s, "c", None),
            json!({"bans": [{"node": "c"}], "pin": null}),
            "a ban on the pinned node removes the pin"
        );
        assert_eq!(
            ban_patch(&s, "a", None),
            json!({"bans": [{"node": "a"}]}),
            "other pins stay"
        );
    }

    #[test]
    fn cli_clear_patch_removes_all_or_one_node() {
        let s = spec(json!({"pin": {"node": "a"}, "bans": [{"node": "b"}, {"node": "c"}]}));
        assert_eq!(
            clear_patch(&s, None),
            Some(json!({"pin": null, "bans": null}))
        );
        assert_eq!(
            clear_patch(&s, Some("b")),
            Some(json!({"bans": [{"node": "c"}]}))
        );
        assert_eq!(clear_patch(&s, Some("a")), Some(json!({"pin": null})));
        assert_eq!(clear_patch(&s, Some("z")), None, "nothing to clear");
        assert_eq!(clear_patch(&spec(json!({})), None), None);
        let only = spec(json!({"bans": [{"node": "b"}]}));
        assert_eq!(clear_patch(&only, Some("b")), Some(json!({"bans": null})));
        assert_eq!(
            cleared_constraints(&s, None),
            ["pin on \"a\"", "ban on \"b\"", "ban on \"c\""]
        );
        assert_eq!(cleared_constraints(&s, Some("c")), ["ban on \"c\""]);
    }

    #[test]
    fn cli_cleanup_patch_and_request_ids() {
        assert_eq!(
            cleanup_patch("r1", Some("a")),
            json!({"cleanup": {"requestId": "r1", "node": "a"}})
        );
        assert_eq!(
            cleanup_patch("r2", None),
            json!({"cleanup": {"requestId": "r2", "node": null}}),
            "an earlier node is removed"
        );
        let now = ts("2030-01-01T00:00:00Z");
        let ids: std::collections::BTreeSet<String> =
            (0..100).map(|_| new_request_id(now)).collect();
        assert_eq!(ids.len(), 100, "unique within one second");
        assert!(ids.iter().all(|i| (1..=128).contains(&i.len())));
    }

    #[test]
    fn cli_lifetime_parsing_and_expiry() {
        assert_eq!(parse_lifetime("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_lifetime("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("-5m").is_err());
        assert!(parse_lifetime("an hour").is_err());
        let now = ts("2030-01-01T00:00:00.750Z");
        assert_eq!(
            expiry(now, Duration::from_secs(3600)).expect("expiry"),
            ts("2030-01-01T01:00:00Z")
        );
    }

    #[test]
    fn cli_candidate_checks() {
        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}, {"node": "b"}]}),
            None,
        );
        assert_eq!(check_candidate(&f, "a", None), Ok(()));
        let err = check_candidate(&f, "z", None).expect_err("not a candidate");
        assert_eq!(
            err.to_string(),
            "node \"z\" is not a candidate of floatingelasticip \"web\" (candidates: a, b)"
        );

        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "nodeSelector": {"matchLabels": {"role": "edge"}}}),
            None,
        );
        let edge = node("e1", json!({"role": "edge"}));
        let other = node("o1", json!({"role": "db"}));
        assert_eq!(check_candidate(&f, "e1", Some(&edge)), Ok(()));
        assert!(matches!(
            check_candidate(&f, "o1", Some(&other)),
            Err(CliError::SelectorMismatch { .. })
        ));
        assert_eq!(
            check_candidate(&f, "x", None),
            Err(CliError::NodeNotFound("x".into()))
        );

        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}], "bans": [{"node": "a"}]}),
            None,
        );
        assert_eq!(
            check_not_banned(&f, "a").map_err(|e| e.to_string()),
            Err(
                "node \"a\" is banned from floatingelasticip \"web\"; run `feip clear web a` first"
                    .into()
            )
        );
    }

    #[test]
    fn cli_error_messages_name_the_thing() {
        assert_eq!(
            CliError::NotFound {
                name: "x".into(),
                namespace: "y".into()
            }
            .to_string(),
            "floatingelasticip \"x\" not found in namespace \"y\""
        );
        assert_eq!(
            CliError::NodeNotFound("n".into()).to_string(),
            "node \"n\" not found"
        );
    }

    #[test]
    fn cli_table_is_aligned() {
        let t = render_table(&["A", "LONGER"], &[vec!["xxxx", "1"], vec!["y", "22"]]);
        assert_eq!(t, "A      LONGER\nxxxx   1\ny      22\n");
    }

    #[test]
    fn cli_status_row_and_bans() {
        let now = ts("2030-01-01T00:00:00Z");
        let f = feip(
            json!({
                "allocationId": "eipalloc-0123456789abcdef0",
                "candidates": [{"node": "a"}, {"node": "b"}, {"node": "c"}],
                "bans": [{"node": "c", "expiresAt": "2030-01-01T01:00:00Z"}, {"node": "d", "expiresAt": "2029-01-01T00:00:00Z"}, {"node": "e"}],
            }),
            Some(json!({
                "phase": "Active",
                "holder": {"node": "b"},
                "address": {"publicIp": "203.0.113.10"},
                "failoverCount": 2,
                "lastFailover": {"from": "a", "to": "b", "reason": "HolderDead", "durationSeconds": "1.234"},
                "nodes": [{"node": "a", "failureCount": 1, "banned": true}, {"node": "c", "failureCount": 1, "banned": true}],
            })),
        );
        assert_eq!(
            status_row(&f, now),
            [
                "prod",
                "web",
                "203.0.113.10",
                "b",
                "Active",
                "2",
                "a->b (HolderDead, 1.234s)",
                "c (60m), e, a (failed)"
            ]
        );
        let bare = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}]}),
            None,
        );
        assert_eq!(
            status_row(&bare, now),
            [
                "prod",
                "web",
                "eipalloc-0123456789abcdef0",
                "<none>",
                "<none>",
                "0",
                "<none>",
                "<none>"
            ]
        );
    }

    #[test]
    fn cli_describe_shows_conditions_and_failure_counts() {
        let now = ts("2030-01-01T00:10:00Z");
        let f = feip(
            json!({
                "allocationId": "eipalloc-0123456789abcdef0",
                "candidates": [{"node": "a", "priority": 10}, {"node": "b"}],
                "pin": {"node": "b", "clearWhenDone": true},
                "cleanup": {"requestId": "r1"},
            }),
            Some(json!({
                "phase": "Active",
                "holder": {"node": "a", "instanceId": "i-1", "networkInterfaceId": "eni-1"},
                "lastCleanupRequestId": "r1",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Active", "message": "on a", "lastTransitionTime": "2030-01-01T00:00:00Z"}],
                "nodes": [{"node": "b", "failureCount": 3, "lastFailure": "2030-01-01T00:05:00Z", "lastFailureReason": "AssociateFailed", "banned": true}],
            })),
        );
        let d = describe(&f, now);
        assert!(d.contains("Candidates:     a (priority 10), b"), "{d}");
        assert!(d.contains("Pin:            b (move in progress"), "{d}");
        assert!(d.contains("Holder:         a (i-1, eni-1)"), "{d}");
        assert!(d.contains("request r1 for all nodes: handled"), "{d}");
        assert!(d.contains("TYPE    STATUS   REASON   AGE   MESSAGE"), "{d}");
        assert!(d.contains("Ready   True     Active   10m   on a"), "{d}");
        assert!(
            d.contains("b      3          2030-01-01T00:05:00Z   AssociateFailed   yes"),
            "{d}"
        );
    }

    #[test]
    fn cli_human_durations() {
        let h = |s: i64| human_duration(SignedDuration::from_secs(s));
        assert_eq!(h(-3), "0s");
        assert_eq!(h(45), "45s");
        assert_eq!(h(200), "3m20s");
        assert_eq!(h(3600), "60m");
        assert_eq!(h(5 * 3600 + 7 * 60), "5h7m");
        assert_eq!(h(20 * 3600), "20h");
        assert_eq!(h(3 * 86400), "3d");
    }
}
