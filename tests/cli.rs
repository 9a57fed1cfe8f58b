//! The operator verbs (`feip status|move|ban|clear|cleanup|disable|enable|unmanage|manage|
//! standby|unstandby`) run as the built binary against the real apiserver, and as the kubectl
//! plugin through the real kubectl. Most tests need no controller: they check the objects the
//! verbs write. The last test runs the controller and moto to show the verbs move the address.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use feip::crd::{FloatingElasticIP, Management, STANDBY_LABEL, TargetState};
use feip::testenv::{
    AZ_A, AZ_C, ControlPlane, ControllerOptions, FaultProxy, Moto, NodeOptions, SimNode,
    TestController, wait_for,
};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const FEIP_BIN: &str = env!("CARGO_BIN_EXE_feip");

/// One test's namespace, client and admin kubeconfig.
struct Env {
    ns: String,
    client: Client,
    kubeconfig: PathBuf,
    api: Api<FloatingElasticIP>,
}

impl Env {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        feip::install_crypto_provider();
        let cp = ControlPlane::shared()?;
        let client = cp.client().await?;
        let ns = cp.namespace(prefix).await?;
        Ok(Self {
            api: Api::namespaced(client.clone(), &ns),
            ns,
            client,
            kubeconfig: cp.admin_kubeconfig().to_path_buf(),
        })
    }

    /// Runs `feip <args> --kubeconfig <admin>` (KUBECONFIG unset, so only the flag counts).
    async fn feip(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(tokio::process::Command::new(FEIP_BIN)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await?)
    }

    /// Runs a verb in this test's namespace and expects success; returns stdout.
    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = args.to_vec();
        all.extend(["-n", &self.ns]);
        let out = self.feip(&all).await?;
        anyhow::ensure!(
            out.status.success(),
            "feip {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs a verb in this test's namespace and expects failure; returns stderr.
    async fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = args.to_vec();
        all.extend(["-n", &self.ns]);
        let out = self.feip(&all).await?;
        anyhow::ensure!(
            !out.status.success(),
            "feip {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(1), "exit status of feip {args:?}");
        Ok(String::from_utf8(out.stderr)?)
    }

    /// A plain Node object named `<ns>-<suffix>`.
    async fn node(&self, suffix: &str, labels: serde_json::Value) -> anyhow::Result<String> {
        let name = format!("{}-{suffix}", self.ns);
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        Ok(name)
    }

    async fn create(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let obj: FloatingElasticIP = serde_json::from_value(json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        self.api.create(&PostParams::default(), &obj).await?;
        Ok(())
    }

    /// A FloatingElasticIP `web` whose candidates are fresh Nodes `<ns>-a`, `<ns>-b`,
    /// `<ns>-c`; returns the node names.
    async fn web(&self) -> anyhow::Result<Vec<String>> {
        let mut nodes = Vec::new();
        for s in ["a", "b", "c"] {
            nodes.push(self.node(s, json!({})).await?);
        }
        self.create(
            "web",
            json!({
                "allocationId": "eipalloc-0123456789abcdef0",
                "candidates": nodes.iter().map(|n| json!({"node": n})).collect::<Vec<_>>(),
            }),
        )
        .await?;
        Ok(nodes)
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await?;
        Ok(())
    }

    async fn patch_status(&self, name: &str, status: serde_json::Value) -> anyhow::Result<()> {
        self.api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn move_sets_a_self_clearing_pin() -> anyhow::Result<()> {
    let e = Env::new("cli-move").await?;
    let nodes = e.web().await?;
    let out = e.ok(&["move", "web", "--to", &nodes[1]]).await?;
    assert!(
        out.contains(&format!(
            "floatingelasticip \"web\" moving to node \"{}\"",
            nodes[1]
        )),
        "{out}"
    );
    let pin = e.api.get("web").await?.spec.pin.expect("pin set");
    assert_eq!(pin.node, nodes[1]);
    assert_eq!(pin.clear_when_done, Some(true));
    assert_eq!(pin.expires_at, None);

    // A second move replaces the pin.
    e.ok(&["move", "web", "--to", &nodes[2]]).await?;
    assert_eq!(
        e.api.get("web").await?.spec.pin.map(|p| p.node),
        Some(nodes[2].clone())
    );
    Ok(())
}

#[tokio::test]
async fn verbs_fail_clearly_for_unknown_objects_and_non_candidates() -> anyhow::Result<()> {
    let e = Env::new("cli-errors").await?;
    let nodes = e.web().await?;
    let outsider = e.node("outsider", json!({})).await?;
    let ns = e.ns.clone();
    let ghost = format!("{ns}-ghost");

    let not_found = format!("floatingelasticip \"nope\" not found in namespace \"{ns}\"");
    for args in [
        vec!["status", "nope"],
        vec!["move", "nope", "--to", &nodes[0]],
        vec!["ban", "nope", &nodes[0]],
        vec!["clear", "nope"],
        vec!["cleanup", "nope"],
        vec!["disable", "nope"],
        vec!["enable", "nope"],
        vec!["unmanage", "nope"],
        vec!["manage", "nope"],
    ] {
        let err = e.fails(&args).await?;
        assert!(err.contains(&not_found), "{args:?}: {err}");
    }

    let err = e.fails(&["move", "web", "--to", &ghost]).await?;
    assert!(
        err.contains(&format!("node \"{ghost}\" not found")),
        "{err}"
    );
    for args in [vec!["standby", ghost.as_str()], vec!["unstandby", &ghost]] {
        let err = e.fails(&args).await?;
        assert!(
            err.contains(&format!("node \"{ghost}\" not found")),
            "{args:?}: {err}"
        );
    }

    let not_candidate = format!(
        "node \"{outsider}\" is not a candidate of floatingelasticip \"web\" (candidates: {})",
        nodes.join(", ")
    );
    for args in [
        vec!["move", "web", "--to", &outsider],
        vec!["ban", "web", &outsider],
        vec!["cleanup", "web", &outsider],
    ] {
        let err = e.fails(&args).await?;
        assert!(err.contains(&not_candidate), "{args:?}: {err}");
    }

    // Moving onto a banned node is refused with the way out.
    e.ok(&["ban", "web", &nodes[1]]).await?;
    let err = e.fails(&["move", "web", "--to", &nodes[1]]).await?;
    assert!(
        err.contains(&format!(
            "node \"{}\" is banned from floatingelasticip \"web\"; run `feip clear web {}` first",
            nodes[1], nodes[1]
        )),
        "{err}"
    );

    // Bad arguments are usage errors (exit 2), before anything is sent.
    let out = e
        .feip(&["ban", "web", &nodes[0], "--lifetime", "soon", "-n", &ns])
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lifetime must be a positive"));

    // Nothing was changed by the failed verbs.
    let spec = e.api.get("web").await?.spec;
    assert_eq!(spec.pin, None);
    assert_eq!(
        spec.bans
            .unwrap_or_default()
            .iter()
            .map(|b| b.node.clone())
            .collect::<Vec<_>>(),
        [nodes[1].clone()]
    );
    assert_eq!(spec.cleanup, None);
    Ok(())
}

#[tokio::test]
async fn selector_candidates_are_checked_against_node_labels() -> anyhow::Result<()> {
    let e = Env::new("cli-selector").await?;
    let edge = e
        .node("edge", json!({"role": format!("edge-{}", e.ns)}))
        .await?;
    let db = e.node("db", json!({"role": "db"})).await?;
    e.create(
        "web",
        json!({
            "allocationId": "eipalloc-0123456789abcdef0",
            "nodeSelector": {"matchLabels": {"role": format!("edge-{}", e.ns)}},
        }),
    )
    .await?;
    e.ok(&["move", "web", "--to", &edge]).await?;
    assert_eq!(e.api.get("web").await?.spec.pin.map(|p| p.node), Some(edge));
    let err = e.fails(&["move", "web", "--to", &db]).await?;
    assert!(
        err.contains(&format!(
            "node \"{db}\" does not match the nodeSelector of floatingelasticip \"web\""
        )),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn ban_with_lifetime_sets_expiry_and_replaces_the_nodes_ban() -> anyhow::Result<()> {
    let e = Env::new("cli-ban").await?;
    let nodes = e.web().await?;
    let before = jiff::Timestamp::now();
    let out = e.ok(&["ban", "web", &nodes[1], "--lifetime", "1h"]).await?;
    let after = jiff::Timestamp::now();
    assert!(
        out.contains(&format!(
            "node \"{}\" banned from floatingelasticip \"web\" until ",
            nodes[1]
        )),
        "{out}"
    );
    let bans = e.api.get("web").await?.spec.bans.unwrap_or_default();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].node, nodes[1]);
    let expires = bans[0].expires_at.as_ref().expect("expiresAt").0;
    let hour = jiff::SignedDuration::from_secs(3600);
    assert!(
        expires >= (before + hour - jiff::SignedDuration::from_secs(1)) && expires <= after + hour,
        "expiresAt {expires} not about now+1h ({before}..{after})"
    );

    // Banning the same node again replaces its entry; another node is added.
    e.ok(&["ban", "web", &nodes[1]]).await?;
    e.ok(&["ban", "web", &nodes[2], "--lifetime", "90m"])
        .await?;
    let bans = e.api.get("web").await?.spec.bans.unwrap_or_default();
    assert_eq!(
        bans.iter()
            .map(|b| (b.node.clone(), b.expires_at.is_some()))
            .collect::<Vec<_>>(),
        [(nodes[1].clone(), false), (nodes[2].clone(), true)]
    );

    // A ban on the pinned node wins: the pin goes.
    e.ok(&["move", "web", "--to", &nodes[0]]).await?;
    let out = e.feip(&["ban", "web", &nodes[0], "-n", &e.ns]).await?;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "warning: the pin on node \"{}\" was removed",
            nodes[0]
        )),
        "{out:?}"
    );
    let spec = e.api.get("web").await?.spec;
    assert_eq!(spec.pin, None);
    assert_eq!(spec.bans.map(|b| b.len()), Some(3));
    Ok(())
}

#[tokio::test]
async fn concurrent_bans_are_not_lost() -> anyhow::Result<()> {
    let e = Env::new("cli-race").await?;
    let mut nodes = Vec::new();
    for i in 0..6 {
        nodes.push(e.node(&format!("n{i}"), json!({})).await?);
    }
    e.create(
        "web",
        json!({
            "allocationId": "eipalloc-0123456789abcdef0",
            "candidates": nodes.iter().map(|n| json!({"node": n})).collect::<Vec<_>>(),
        }),
    )
    .await?;
    // Each ban rewrites the whole list from what it read; the resourceVersion precondition
    // turns a lost update into a conflict and a retry.
    let results = futures::future::join_all(
        nodes
            .iter()
            .map(|n| async { e.ok(&["ban", "web", n]).await }),
    )
    .await;
    for r in results {
        r?;
    }
    let mut banned: Vec<String> = e
        .api
        .get("web")
        .await?
        .spec
        .bans
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.node)
        .collect();
    banned.sort();
    assert_eq!(banned, nodes);
    Ok(())
}

#[tokio::test]
async fn clear_removes_the_pin_and_bans_of_one_node_or_all() -> anyhow::Result<()> {
    let e = Env::new("cli-clear").await?;
    let nodes = e.web().await?;
    e.patch_spec(
        "web",
        json!({
            "pin": {"node": nodes[0], "clearWhenDone": true},
            "bans": [{"node": nodes[1]}, {"node": nodes[2], "expiresAt": "2030-01-01T00:00:00Z"}],
        }),
    )
    .await?;

    let out = e.ok(&["clear", "web", &nodes[2]]).await?;
    assert!(
        out.contains(&format!("cleared ban on \"{}\"", nodes[2])),
        "{out}"
    );
    let spec = e.api.get("web").await?.spec;
    assert_eq!(spec.pin.map(|p| p.node), Some(nodes[0].clone()));
    assert_eq!(
        spec.bans
            .unwrap_or_default()
            .into_iter()
            .map(|b| b.node)
            .collect::<Vec<_>>(),
        [nodes[1].clone()]
    );

    let out = e.ok(&["clear", "web"]).await?;
    assert!(
        out.contains(&format!(
            "cleared pin on \"{}\", ban on \"{}\"",
            nodes[0], nodes[1]
        )),
        "{out}"
    );
    let spec = e.api.get("web").await?.spec;
    assert_eq!(spec.pin, None);
    assert_eq!(spec.bans, None);

    let out = e.ok(&["clear", "web"]).await?;
    assert!(out.contains("nothing to clear"), "{out}");
    Ok(())
}

#[tokio::test]
async fn cleanup_sets_a_new_request_id_each_time_and_waits_for_it() -> anyhow::Result<()> {
    let e = Env::new("cli-cleanup").await?;
    let nodes = e.web().await?;
    e.ok(&["cleanup", "web", &nodes[0]]).await?;
    let first = e.api.get("web").await?.spec.cleanup.expect("cleanup");
    assert_eq!(first.node.as_deref(), Some(nodes[0].as_str()));
    e.ok(&["cleanup", "web"]).await?;
    let second = e.api.get("web").await?.spec.cleanup.expect("cleanup");
    assert_ne!(second.request_id, first.request_id);
    assert_eq!(second.node, None, "a cleanup of all nodes drops the node");

    // A node only known from the status (no longer a candidate) can be cleaned up too.
    e.patch_status(
        "web",
        json!({"nodes": [{"node": "gone-node", "failureCount": 2, "banned": true}]}),
    )
    .await?;
    e.ok(&["cleanup", "web", "gone-node"]).await?;

    // --wait: without a controller it times out ...
    let err = e
        .fails(&["cleanup", "web", "--wait", "--timeout", "1s"])
        .await?;
    assert!(err.contains("not handled within"), "{err}");

    // ... and returns once the status records the request (played controller here).
    let mut cmd = tokio::process::Command::new(FEIP_BIN);
    cmd.args(["cleanup", "web", "--wait", "-n", &e.ns, "--kubeconfig"])
        .arg(&e.kubeconfig)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let previous = e.api.get("web").await?.spec.cleanup.map(|c| c.request_id);
    let id = wait_for("a new cleanup request", WAIT, || async {
        let id = e.api.get("web").await?.spec.cleanup.map(|c| c.request_id);
        Ok(id.filter(|id| Some(id) != previous.as_ref()))
    })
    .await?;
    e.patch_status("web", json!({"lastCleanupRequestId": id}))
        .await?;
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("reset (request {id})")),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test]
async fn disable_enable_unmanage_manage_set_the_spec() -> anyhow::Result<()> {
    let e = Env::new("cli-modes").await?;
    e.web().await?;
    let spec = || async { anyhow::Ok(e.api.get("web").await?.spec) };

    let out = e.ok(&["disable", "web"]).await?;
    assert!(out.contains("disabled"), "{out}");
    assert_eq!(spec().await?.target_state, Some(TargetState::Stopped));
    e.ok(&["enable", "web"]).await?;
    assert_eq!(spec().await?.target_state, Some(TargetState::Started));

    let out = e.ok(&["unmanage", "web"]).await?;
    assert!(out.contains("unmanaged"), "{out}");
    assert_eq!(spec().await?.management, Some(Management::ObserveOnly));
    e.ok(&["manage", "web"]).await?;
    let s = spec().await?;
    assert_eq!(s.management, Some(Management::Managed));
    assert_eq!(s.target_state, Some(TargetState::Started), "independent");
    Ok(())
}

#[tokio::test]
async fn standby_labels_and_unstandby_unlabels_the_node() -> anyhow::Result<()> {
    let e = Env::new("cli-standby").await?;
    let node = e.node("a", json!({"keep": "me"})).await?;
    let nodes: Api<Node> = Api::all(e.client.clone());
    let out = e.ok(&["standby", &node]).await?;
    assert!(out.contains("in standby"), "{out}");
    let labels = nodes.get(&node).await?.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(STANDBY_LABEL).map(String::as_str), Some("true"));
    assert_eq!(labels.get("keep").map(String::as_str), Some("me"));

    e.ok(&["unstandby", &node]).await?;
    let labels = nodes.get(&node).await?.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(STANDBY_LABEL), None);
    assert_eq!(labels.get("keep").map(String::as_str), Some("me"));
    // Idempotent.
    e.ok(&["unstandby", &node]).await?;
    Ok(())
}

/// A status as the controller would write it.
fn sample_status(from: &str, to: &str, banned: &str) -> serde_json::Value {
    json!({
        "phase": "Active",
        "holder": {"node": to, "instanceId": "i-0abc", "networkInterfaceId": "eni-0abc", "privateIpAddress": "10.0.1.20"},
        "address": {"allocationId": "eipalloc-0123456789abcdef0", "publicIp": "203.0.113.10", "associationId": "eipassoc-1"},
        "lease": {"name": "feip-web", "transitions": 3},
        "failoverCount": 2,
        "lastFailover": {"from": from, "to": to, "reason": "HolderDead", "durationSeconds": "1.234",
            "detectedAt": "2030-01-01T00:00:00Z", "completedAt": "2030-01-01T00:00:01Z"},
        "nodes": [{"node": banned, "failureCount": 1, "lastFailure": "2030-01-01T00:00:00Z",
            "lastFailureReason": "AssociateFailed", "banned": true}],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Active", "message": format!("associated with {to}"), "lastTransitionTime": "2030-01-01T00:00:01Z"},
            {"type": "HolderHealthy", "status": "True", "reason": "Healthy", "message": "all signals healthy", "lastTransitionTime": "2030-01-01T00:00:01Z"},
        ],
        "observedGeneration": 1,
    })
}

/// Splits a table into rows of cells (cells are separated by at least two spaces).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn status_prints_the_table_and_details() -> anyhow::Result<()> {
    let e = Env::new("cli-status").await?;
    let out = e.ok(&["status"]).await?;
    assert!(
        out.contains(&format!(
            "No floatingelasticips found in namespace \"{}\"",
            e.ns
        )),
        "{out}"
    );

    let nodes = e.web().await?;
    e.create(
        "api",
        json!({"publicIp": "198.51.100.7", "candidates": [{"node": nodes[0]}]}),
    )
    .await?;
    e.patch_status("web", sample_status(&nodes[0], &nodes[1], &nodes[2]))
        .await?;
    e.patch_spec("web", json!({"bans": [{"node": nodes[0]}]}))
        .await?;

    let out = e.ok(&["status"]).await?;
    let rows = table(&out);
    assert_eq!(
        rows[0],
        [
            "NAMESPACE",
            "NAME",
            "ADDRESS",
            "HOLDER",
            "STATUS",
            "FAILOVERS",
            "LAST-FAILOVER",
            "BANS"
        ],
        "{out}"
    );
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(
        rows[1],
        [
            e.ns.as_str(),
            "api",
            "198.51.100.7",
            "<none>",
            "<none>",
            "0",
            "<none>",
            "<none>"
        ],
        "{out}"
    );
    assert_eq!(
        rows[2],
        [
            e.ns.clone(),
            "web".into(),
            "203.0.113.10".into(),
            nodes[1].clone(),
            "Active".into(),
            "2".into(),
            format!("{}->{} (HolderDead, 1.234s)", nodes[0], nodes[1]),
            format!("{}, {} (failed)", nodes[0], nodes[2]),
        ],
        "{out}"
    );
    // Columns line up: every cell of a column starts where its header starts.
    let lines: Vec<&str> = out.lines().collect();
    for header in ["ADDRESS", "LAST-FAILOVER"] {
        let col = lines[0].find(header).expect("header");
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.as_bytes()[col - 1] == b' ' && l.as_bytes()[col] != b' '),
            "{header} misaligned:\n{out}"
        );
    }

    println!("{out}");

    // One object: the row, then conditions and per-node failure counts.
    let out = e.ok(&["status", "web"]).await?;
    println!("{out}");
    assert_eq!(table(&out).len(), 2, "{out}");
    assert!(
        out.contains("Elastic IP:     eipalloc-0123456789abcdef0 (association eipassoc-1)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Holder:         {} (i-0abc, eni-0abc, 10.0.1.20)",
            nodes[1]
        )),
        "{out}"
    );
    assert!(
        out.contains("Lease:          feip-web (transitions 3)"),
        "{out}"
    );
    let section = |name: &str| -> Vec<Vec<String>> {
        let start = out.find(name).expect("section") + name.len();
        table(out[start..].trim_start_matches('\n'))
    };
    let conditions = section("Conditions:\n");
    assert_eq!(
        conditions[0],
        ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
        "{out}"
    );
    assert_eq!(conditions[1][..3], ["Ready", "True", "Active"], "{out}");
    assert_eq!(
        conditions[1][4],
        format!("associated with {}", nodes[1]),
        "{out}"
    );
    assert_eq!(conditions[2][0], "HolderHealthy", "{out}");
    let failures = section("Node failures:\n");
    assert_eq!(
        failures[0],
        ["NODE", "FAILURES", "LAST-FAILURE", "REASON", "BANNED"],
        "{out}"
    );
    assert_eq!(
        failures[1],
        [
            nodes[2].as_str(),
            "1",
            "2030-01-01T00:00:00Z",
            "AssociateFailed",
            "yes"
        ],
        "{out}"
    );

    // All namespaces: this namespace's objects are among them.
    let out = e.feip(&["status", "-A"]).await?;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    let ours: Vec<_> = table(&stdout)
        .into_iter()
        .filter(|r| r[0] == e.ns)
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(ours, ["api", "web"], "{stdout}");
    Ok(())
}

#[tokio::test]
async fn namespace_and_context_come_from_the_kubeconfig() -> anyhow::Result<()> {
    let e = Env::new("cli-kubeconfig").await?;
    e.web().await?;
    // The admin kubeconfig plus a context "ours" whose namespace is this test's.
    let mut cfg: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&e.kubeconfig)?)?;
    let contexts = cfg["contexts"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow::anyhow!("no contexts"))?;
    contexts.push(serde_yaml::from_str(&format!(
        "{{name: ours, context: {{cluster: feip, user: feip, namespace: {}}}}}",
        e.ns
    ))?);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&cfg)?)?;
    let run = |args: &[&str], env: bool| {
        let mut cmd = tokio::process::Command::new(FEIP_BIN);
        cmd.args(args).kill_on_drop(true);
        if env {
            // KUBECONFIG may be a list; empty entries are ignored.
            let list = std::env::join_paths([std::path::Path::new(""), &path]).unwrap_or_default();
            cmd.env("KUBECONFIG", list);
        } else {
            cmd.env_remove("KUBECONFIG").arg("--kubeconfig").arg(&path);
        }
        async move { anyhow::Ok(cmd.output().await?) }
    };

    // The current context has no namespace: "default", where there is nothing.
    let out = run(&["status"], false).await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("namespace \"default\""),
        "{out:?}"
    );
    // --context picks the context and its namespace; -n still wins over it.
    for env in [false, true] {
        let out = run(&["status", "--context", "ours"], env).await?;
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(table(&stdout)[1][..2], [e.ns.as_str(), "web"], "{stdout}");
    }
    let out = run(&["status", "--context", "ours", "-n", "default"], false).await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("namespace \"default\""),
        "{out:?}"
    );
    let out = run(&["status", "--context", "nosuch"], false).await?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_runs_the_binary_as_the_feip_plugin() -> anyhow::Result<()> {
    let e = Env::new("cli-plugin").await?;
    let nodes = e.web().await?;
    e.patch_status("web", sample_status(&nodes[0], &nodes[1], &nodes[2]))
        .await?;
    let bin = tempfile::tempdir()?;
    std::os::unix::fs::symlink(FEIP_BIN, bin.path().join("kubectl-feip"))?;
    let path = std::env::join_paths(std::iter::once(bin.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let kubectl = &ControlPlane::shared()?.tools().kubectl;
    let run = |args: Vec<String>, kubeconfig_env: bool| {
        let mut cmd = tokio::process::Command::new(kubectl);
        cmd.args(&args).env("PATH", &path).kill_on_drop(true);
        if kubeconfig_env {
            cmd.env("KUBECONFIG", &e.kubeconfig);
        } else {
            cmd.env_remove("KUBECONFIG");
        }
        async move { anyhow::Ok(cmd.output().await?) }
    };

    let out = run(vec!["plugin".into(), "list".into()], false).await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kubectl-feip"),
        "{out:?}"
    );

    // kubectl passes everything after the plugin name through (it refuses flags before it),
    // so the kubeconfig comes from KUBECONFIG or a flag after the verb.
    let by_env = run(
        vec!["feip".into(), "status".into(), "-n".into(), e.ns.clone()],
        true,
    )
    .await?;
    let by_flag = run(
        vec![
            "feip".into(),
            "status".into(),
            "-n".into(),
            e.ns.clone(),
            format!("--kubeconfig={}", e.kubeconfig.display()),
        ],
        false,
    )
    .await?;
    for out in [&by_env, &by_flag] {
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rows = table(&stdout);
        assert_eq!(rows[0][0], "NAMESPACE", "{stdout}");
        assert_eq!(
            rows[1][..5],
            [e.ns.as_str(), "web", "203.0.113.10", &nodes[1], "Active"]
        );
    }
    assert_eq!(by_env.stdout, by_flag.stdout);

    // Verbs that write work the same way, and usage names the plugin.
    let out = run(
        vec![
            "feip".into(),
            "move".into(),
            "web".into(),
            "--to".into(),
            nodes[2].clone(),
            "-n".into(),
            e.ns.clone(),
        ],
        true,
    )
    .await?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        e.api.get("web").await?.spec.pin.map(|p| p.node),
        Some(nodes[2].clone())
    );
    let out = run(vec!["feip".into(), "move".into(), "--help".into()], true).await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Usage: kubectl feip move"),
        "{out:?}"
    );
    let out = run(
        vec![
            "feip".into(),
            "status".into(),
            "nope".into(),
            "-n".into(),
            e.ns.clone(),
        ],
        true,
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "floatingelasticip \"nope\" not found in namespace \"{}\"",
            e.ns
        )),
        "{out:?}"
    );
    Ok(())
}

/// With the controller and moto: move, standby, cleanup --wait, disable and enable through the
/// binary change where the address really is.
#[tokio::test]
async fn verbs_drive_the_real_controller() -> anyhow::Result<()> {
    let e = Env::new("cli-e2e").await?;
    let moto = Moto::shared()?;
    let proxy = FaultProxy::start(moto.url()).await?;
    let mut sims = Vec::new();
    let mut enis = Vec::new();
    for (i, az) in [AZ_A, AZ_C].into_iter().enumerate() {
        let instance = moto.launch_instance(az).await?;
        let mut opts = NodeOptions::new(&format!("{}-n{i}", e.ns), az, &instance.instance_id);
        opts.heartbeat_interval = Duration::from_millis(300);
        sims.push(SimNode::start(e.client.clone(), opts).await?);
        enis.push(instance.network_interface_id);
    }
    let eip = moto.allocate_address().await?;
    let mut controller = TestController::start(
        e.client.clone(),
        &proxy.url(),
        ControllerOptions::new("cli-e2e", &e.ns),
    )
    .await?;
    e.create(
        "web",
        json!({
            "allocationId": eip.allocation_id,
            "candidates": sims.iter().map(|n| json!({"node": n.name})).collect::<Vec<_>>(),
            "monitor": {"interval": "1s", "timeout": "800ms"},
            "health": {"heartbeatTimeout": "2s", "probe": {"type": "None"}},
        }),
    )
    .await?;
    let on = |eni: Option<String>| {
        let alloc = eip.allocation_id.clone();
        async move {
            wait_for(&format!("the address on {eni:?}"), WAIT, || {
                let (alloc, eni) = (alloc.clone(), eni.clone());
                async move { Ok((moto.association(&alloc).await? == eni).then_some(())) }
            })
            .await
        }
    };
    on(Some(enis[0].clone())).await?;

    // move: the address lands on n1 and the controller clears the pin.
    e.ok(&["move", "web", "--to", &sims[1].name]).await?;
    on(Some(enis[1].clone())).await?;
    wait_for("the pin to clear itself", WAIT, || async {
        Ok(e.api.get("web").await?.spec.pin.is_none().then_some(()))
    })
    .await?;
    let holder_active = |node: String| {
        let e = &e;
        async move {
            wait_for(&format!("Active on {node}"), WAIT, || {
                let node = node.clone();
                async move {
                    let st = e.api.get("web").await?.status.unwrap_or_default();
                    Ok((st.holder.map(|h| h.node) == Some(node)
                        && st.phase == Some(feip::crd::Phase::Active))
                    .then_some(()))
                }
            })
            .await
        }
    };
    holder_active(sims[1].name.clone()).await?;
    let out = e.ok(&["status", "web"]).await?;
    assert_eq!(
        table(&out)[1][2..5],
        [eip.public_ip.as_str(), sims[1].name.as_str(), "Active"],
        "{out}"
    );

    // standby: the holder is left gracefully.
    e.ok(&["standby", &sims[1].name]).await?;
    on(Some(enis[0].clone())).await?;
    e.ok(&["unstandby", &sims[1].name]).await?;

    // cleanup --wait returns once the controller has handled the request.
    let out = e
        .ok(&["cleanup", "web", "--wait", "--timeout", "30s"])
        .await?;
    assert!(out.contains("failure counts of all nodes reset"), "{out}");

    // disable releases the address; enable takes it back.
    e.ok(&["disable", "web"]).await?;
    on(None).await?;
    e.ok(&["enable", "web"]).await?;
    wait_for("the address associated again", WAIT, || async {
        Ok(moto.association(&eip.allocation_id).await?.map(|_| ()))
    })
    .await?;
    controller.shutdown().await;
    Ok(())
}
