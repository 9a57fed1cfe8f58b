//! `Session`: a client and a namespace, and the verbs that read and edit the cluster through
//! it. What to patch and what to print come from `edit` and `render` (no client there).

use std::ffi::OsString;
use std::fmt::Debug;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::edit::{
    CliError, ban_patch, check_candidate, check_not_banned, cleanup_patch, clear_patch,
    cleared_constraints, expiry, move_patch, new_request_id, node_warnings,
};
use super::render::{STATUS_HEADERS, describe, fmt_ts, render_table, status_row};
use crate::crd::{FloatingElasticIP, Management, STANDBY_LABEL, TargetState};

/// Field manager recorded for every change the CLI makes.
pub const FIELD_MANAGER: &str = "feip-cli";

/// How often an edit is attempted when concurrent writers keep changing the object.
const CONFLICT_RETRIES: usize = 10;

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

/// `feip standby` puts a node in standby, `feip unstandby` takes it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standby {
    Enter,
    Leave,
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
        let done = match state {
            TargetState::Stopped => "disabled",
            TargetState::Started => "enabled",
        };
        self.set_field(name, "targetState", state, done).await
    }

    /// `feip unmanage|manage NAME`.
    pub async fn set_management(&self, name: &str, mode: Management) -> anyhow::Result<Report> {
        let done = match mode {
            Management::ObserveOnly => "unmanaged",
            Management::Managed => "managed",
        };
        self.set_field(name, "management", mode, done).await
    }

    /// Sets one plain spec field and says so: `floatingelasticip "web" disabled (targetState:
    /// Stopped)`.
    async fn set_field(
        &self,
        name: &str,
        field: &str,
        value: impl Serialize + Debug,
        done: &str,
    ) -> anyhow::Result<Report> {
        self.patch_spec(name, json!({ field: &value })).await?;
        Ok(Report::line(format!(
            "floatingelasticip \"{name}\" {done} ({field}: {value:?})"
        )))
    }

    /// `feip standby|unstandby NODE`: sets or removes the standby label.
    pub async fn standby(&self, node: &str, change: Standby) -> anyhow::Result<Report> {
        let on = change == Standby::Enter;
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
