//! Bad input, end to end: invalid manifests are rejected at admission by the real
//! kube-apiserver with a specific message each; specs that only runtime can judge (an address
//! the account does not own, nodes that cannot be resolved to an instance of this region and
//! network) get a specific condition while every other address keeps working.

use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use feip::crd::{FloatingElasticIP, Phase};
use feip::testenv::scenario::{Scenario, active_on, condition, degraded_reason, holder};
use feip::testenv::{AZ_A, AZ_C, ControlPlane, NodeOptions, SimNode, ec2_client, wait_for};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};

fn raw(name: &str, spec: serde_json::Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
        "metadata": {"name": name}, "spec": spec,
    }))?)
}

#[tokio::test]
async fn admission_rejects_each_invalid_manifest_with_a_specific_message() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("bad-admission").await?;
    let ar = kube::api::ApiResource::erase::<FloatingElasticIP>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client().await?, &ns, &ar);
    let alloc = "eipalloc-0123456789abcdef0";
    let cands = serde_json::json!([{"node": "node-a"}, {"node": "node-b"}]);
    // A valid spec with `extra` merged in.
    let with = |extra: serde_json::Value| {
        let mut spec = serde_json::json!({"allocationId": alloc, "candidates": cands});
        feip::testenv::scenario::merge(&mut spec, extra);
        spec
    };
    let many: Vec<serde_json::Value> = (0..65)
        .map(|i| serde_json::json!({"node": format!("node-{i}")}))
        .collect();
    // (what, spec, expected message fragment)
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        // The address.
        (
            "both address fields",
            with(serde_json::json!({"publicIp": "203.0.113.10"})),
            "exactly one of spec.allocationId or spec.publicIp must be set",
        ),
        (
            "no address",
            serde_json::json!({"candidates": cands}),
            "exactly one of spec.allocationId or spec.publicIp must be set",
        ),
        (
            "malformed allocation id",
            with(serde_json::json!({"allocationId": "alloc-42"})),
            "spec.allocationId in body should match",
        ),
        (
            "allocation id too long",
            with(serde_json::json!({"allocationId": "eipalloc-0123456789abcdef01"})),
            "spec.allocationId in body should match",
        ),
        (
            "public IP out of range",
            serde_json::json!({"publicIp": "300.1.2.3", "candidates": cands}),
            "spec.publicIp must be an IPv4 address",
        ),
        (
            "IPv6 public IP",
            serde_json::json!({"publicIp": "2001:db8::1", "candidates": cands}),
            "spec.publicIp must be an IPv4 address",
        ),
        (
            "public IP too long",
            serde_json::json!({"publicIp": "203.000.113.0010", "candidates": cands}),
            "spec.publicIp: Too long",
        ),
        (
            "private public IP",
            serde_json::json!({"publicIp": "10.1.2.3", "candidates": cands}),
            "spec.publicIp 10.1.2.3 is not a public address",
        ),
        (
            "private public IP (172.16/12)",
            serde_json::json!({"publicIp": "172.31.0.9", "candidates": cands}),
            "spec.publicIp 172.31.0.9 is not a public address",
        ),
        (
            "shared address space public IP",
            serde_json::json!({"publicIp": "100.64.0.1", "candidates": cands}),
            "spec.publicIp 100.64.0.1 is not a public address",
        ),
        (
            "unspecified public IP",
            serde_json::json!({"publicIp": "0.0.0.0", "candidates": cands}),
            "spec.publicIp 0.0.0.0 is not a public address",
        ),
        (
            "loopback public IP",
            serde_json::json!({"publicIp": "127.0.0.1", "candidates": cands}),
            "spec.publicIp 127.0.0.1 is not a public address",
        ),
        // Candidates.
        (
            "no candidate source",
            serde_json::json!({"allocationId": alloc}),
            "exactly one candidate source must be set",
        ),
        (
            "empty candidates",
            with(serde_json::json!({"candidates": []})),
            "exactly one candidate source must be set",
        ),
        (
            "both candidate sources",
            with(serde_json::json!({"nodeSelector": {"matchLabels": {"role": "edge"}}})),
            "exactly one candidate source must be set",
        ),
        (
            "duplicate candidate",
            with(serde_json::json!({"candidates": [{"node": "node-a"}, {"node": "node-a"}]})),
            "Duplicate value",
        ),
        (
            "node name not a DNS name",
            with(serde_json::json!({"candidates": [{"node": "Node_A"}]})),
            "spec.candidates[0].node in body should match",
        ),
        (
            "empty node name",
            with(serde_json::json!({"candidates": [{"node": ""}]})),
            "spec.candidates[0].node in body should be at least 1 chars long",
        ),
        (
            "too many candidates",
            with(serde_json::json!({"candidates": many})),
            "spec.candidates: Too many",
        ),
        (
            "priority out of range",
            with(serde_json::json!({"candidates": [{"node": "node-a", "priority": 5000}]})),
            "spec.candidates[0].priority in body should be less than or equal to 1000",
        ),
        (
            "private IP not IPv4",
            with(
                serde_json::json!({"candidates": [{"node": "node-a", "privateIpAddress": "10.0.0.999"}]}),
            ),
            "privateIpAddress must be an IPv4 address",
        ),
        (
            "device index out of range",
            with(serde_json::json!({"networkInterface": {"deviceIndex": 32}})),
            "spec.networkInterface.deviceIndex in body should be less than or equal to 31",
        ),
        // Thresholds and durations.
        (
            "zero migration threshold",
            with(serde_json::json!({"migrationThreshold": 0})),
            "spec.migrationThreshold in body should be greater than or equal to 1",
        ),
        (
            "huge migration threshold",
            with(serde_json::json!({"migrationThreshold": 1001})),
            "spec.migrationThreshold in body should be less than or equal to 1000",
        ),
        (
            "unparseable duration",
            with(serde_json::json!({"failureTimeout": "ten minutes"})),
            "spec.failureTimeout in body should match",
        ),
        (
            "negative duration",
            with(serde_json::json!({"failureTimeout": "-5s"})),
            "spec.failureTimeout in body should match",
        ),
        (
            "duration beyond what a duration can hold",
            with(serde_json::json!({"failureTimeout": "99999999999999h"})),
            "spec.failureTimeout: Invalid value: \"string\": type conversion error from 'string' to 'google.protobuf.Duration' evaluating rule: spec.failureTimeout must be between 0s and 8760h",
        ),
        (
            "duration beyond what a duration can hold (monitor)",
            with(serde_json::json!({"monitor": {"interval": "9999999999999999s"}})),
            "spec.monitor.interval: Invalid value: \"string\": type conversion error from 'string' to 'google.protobuf.Duration' evaluating rule: monitor.interval must be between 1s and 1h",
        ),
        (
            "failure timeout above a year",
            with(serde_json::json!({"failureTimeout": "9000h"})),
            "spec.failureTimeout must be between 0s and 8760h",
        ),
        (
            "monitor interval too short",
            with(serde_json::json!({"monitor": {"interval": "0s"}})),
            "monitor.interval must be between 1s and 1h",
        ),
        (
            "monitor interval too long",
            with(serde_json::json!({"monitor": {"interval": "2h"}})),
            "monitor.interval must be between 1s and 1h",
        ),
        (
            "monitor timeout too short",
            with(serde_json::json!({"monitor": {"timeout": "50ms"}})),
            "monitor.timeout must be between 100ms and 60s",
        ),
        (
            "monitor timeout above interval",
            with(serde_json::json!({"monitor": {"interval": "2s", "timeout": "5s"}})),
            "monitor.timeout (5s) must not exceed monitor.interval (2s)",
        ),
        (
            "lone monitor timeout above the default interval",
            with(serde_json::json!({"monitor": {"timeout": "30s"}})),
            "monitor.timeout (30s) must not exceed monitor.interval (10s, the default)",
        ),
        (
            "heartbeat timeout too short",
            with(serde_json::json!({"health": {"heartbeatTimeout": "500ms"}})),
            "health.heartbeatTimeout must be between 1s and 1h",
        ),
        // Probes.
        (
            "unknown probe type",
            with(serde_json::json!({"health": {"probe": {"type": "ICMP"}}})),
            "Unsupported value: \"ICMP\"",
        ),
        (
            "probe path on TCP",
            with(serde_json::json!({"health": {"probe": {"type": "TCP", "path": "/x"}}})),
            "probe.path is only valid with type HTTP",
        ),
        (
            "probe path not absolute",
            with(serde_json::json!({"health": {"probe": {"type": "HTTP", "path": "healthz"}}})),
            "spec.health.probe.path in body should match",
        ),
        (
            "probe None with a port",
            with(serde_json::json!({"health": {"probe": {"type": "None", "port": 80}}})),
            "a probe of type None takes no port or path",
        ),
        (
            "probe port out of range",
            with(serde_json::json!({"health": {"probe": {"port": 70000}}})),
            "spec.health.probe.port in body should be less than or equal to 65535",
        ),
        (
            "probe period too short",
            with(serde_json::json!({"health": {"probe": {"period": "50ms"}}})),
            "probe.period must be between 100ms and 5m",
        ),
        (
            "probe timeout above period",
            with(serde_json::json!({"health": {"probe": {"period": "1s", "timeout": "2s"}}})),
            "probe.timeout (2s) must not exceed probe.period (1s)",
        ),
        (
            "lone probe timeout above the default period",
            with(serde_json::json!({"health": {"probe": {"timeout": "3s"}}})),
            "probe.timeout (3s) must not exceed probe.period (1s, the default)",
        ),
        (
            "zero probe failure threshold",
            with(serde_json::json!({"health": {"probe": {"failureThreshold": 0}}})),
            "spec.health.probe.failureThreshold in body should be greater than or equal to 1",
        ),
        // Policies and operations.
        (
            "unknown failback policy",
            with(serde_json::json!({"failback": {"policy": "Sometimes"}})),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "hold-down without Immediate",
            with(serde_json::json!({"failback": {"policy": "Never", "holdDown": "30s"}})),
            "failback.holdDown is only meaningful with policy Immediate",
        ),
        (
            "hold-down above a day",
            with(serde_json::json!({"failback": {"policy": "Immediate", "holdDown": "48h"}})),
            "failback.holdDown must be between 0s and 24h",
        ),
        (
            "unknown target state",
            with(serde_json::json!({"targetState": "Paused"})),
            "Unsupported value: \"Paused\"",
        ),
        (
            "unknown management",
            with(serde_json::json!({"management": "Off"})),
            "Unsupported value: \"Off\"",
        ),
        (
            "unknown release policy",
            with(serde_json::json!({"releasePolicy": "Delete"})),
            "Unsupported value: \"Delete\"",
        ),
        (
            "unknown associate-failure policy",
            with(serde_json::json!({"onAssociateFailure": "Retry"})),
            "Unsupported value: \"Retry\"",
        ),
        (
            "takeover not a boolean",
            with(serde_json::json!({"allowTakeover": "yes"})),
            "spec.allowTakeover in body must be of type boolean",
        ),
        (
            "pin outside candidates",
            with(serde_json::json!({"pin": {"node": "node-z"}})),
            "spec.pin.node must be one of spec.candidates",
        ),
        (
            "pinned and banned",
            with(serde_json::json!({"pin": {"node": "node-a"}, "bans": [{"node": "node-a"}]})),
            "spec.pin.node node-a is also in spec.bans: a node cannot be pinned and banned at the same time",
        ),
        (
            "pinned node not a DNS name",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchLabels": {"a": "b"}}, "pin": {"node": "Node_A"}}),
            "spec.pin.node in body should match",
        ),
        (
            "banned node not a DNS name",
            with(serde_json::json!({"bans": [{"node": "node a"}]})),
            "spec.bans[0].node in body should match",
        ),
        (
            "cleanup node not a DNS name",
            with(serde_json::json!({"cleanup": {"requestId": "r1", "node": "NODE-A"}})),
            "spec.cleanup.node in body should match",
        ),
        (
            "unknown node selector operator",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchExpressions": [{"key": "role", "operator": "Like", "values": ["edge"]}]}}),
            "operator must be In, NotIn, Exists or DoesNotExist",
        ),
        (
            "node selector In without values",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchExpressions": [{"key": "role", "operator": "In"}]}}),
            "In and NotIn need values",
        ),
        (
            "node selector Exists with values",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchExpressions": [{"key": "role", "operator": "Exists", "values": ["x"]}]}}),
            "Exists and DoesNotExist take none",
        ),
        (
            "node selector label key not a label key",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchLabels": {"role": "edge", "bad key!": "x"}}}),
            "spec.nodeSelector.matchLabels: bad key! is not a valid label key",
        ),
        (
            "node selector label key name too long",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchLabels": {"x".repeat(64): "x"}}}),
            "is not a valid label key",
        ),
        (
            "node selector label value not a label value",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchLabels": {"role": "edge node"}}}),
            "spec.nodeSelector.matchLabels.role in body should match",
        ),
        (
            "node selector expression key not a label key",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchExpressions": [{"key": "-role", "operator": "Exists"}]}}),
            "spec.nodeSelector.matchExpressions[0].key in body should match",
        ),
        (
            "node selector expression value not a label value",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["edge", "a/b"]}]}}),
            "spec.nodeSelector.matchExpressions[0].values[1] in body should match",
        ),
        (
            "pin expiry not a time",
            with(serde_json::json!({"pin": {"node": "node-a", "expiresAt": "tomorrow"}})),
            "spec.pin.expiresAt in body must be of type date-time",
        ),
        (
            "duplicate ban",
            with(serde_json::json!({"bans": [{"node": "node-c"}, {"node": "node-c"}]})),
            "Duplicate value",
        ),
        (
            "empty cleanup request id",
            with(serde_json::json!({"cleanup": {"requestId": ""}})),
            "spec.cleanup.requestId in body should be at least 1 chars long",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut wrong = Vec::new();
    for (i, (what, spec, want)) in cases.iter().enumerate() {
        match api
            .create(
                &PostParams::default(),
                &raw(&format!("bad-{i}"), spec.clone())?,
            )
            .await
        {
            Ok(_) => wrong.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(want) => {}
            Err(kube::Error::Api(s)) => {
                wrong.push(format!("{what}: {} {:?} lacks {want:?}", s.code, s.message))
            }
            Err(e) => wrong.push(format!("{what}: {e}")),
        }
    }
    // The name is a label value on the holder Lease.
    let long = "x".repeat(64);
    match api
        .create(
            &PostParams::default(),
            &raw(
                &long,
                serde_json::json!({"allocationId": alloc, "candidates": cands}),
            )?,
        )
        .await
    {
        Err(kube::Error::Api(s))
            if s.message
                .contains("metadata.name must be at most 63 characters") => {}
        other => wrong.push(format!("64-character name: {other:?}")),
    }
    // Controls: the rules above reject only what they name; well-formed neighbours pass.
    let good: Vec<(&str, serde_json::Value)> = vec![
        (
            "every selector operator",
            serde_json::json!({"allocationId": alloc, "nodeSelector": {"matchExpressions": [
                {"key": "role", "operator": "In", "values": ["edge"]},
                {"key": "zone", "operator": "NotIn", "values": ["x"]},
                {"key": "feip", "operator": "Exists"},
                {"key": "drain", "operator": "DoesNotExist"},
            ]}}),
        ),
        (
            "prefixed label keys, an empty label value, a public address",
            serde_json::json!({"publicIp": "203.0.113.10", "nodeSelector": {
                "matchLabels": {"topology.kubernetes.io/zone": "eu-west-1a", "node-role.kubernetes.io/edge": ""},
                "matchExpressions": [{"key": "feip.io/pool", "operator": "In", "values": ["a", "b_2.x"]}],
            }}),
        ),
        (
            "a lone monitor timeout within the default interval, a lone probe timeout within the default period",
            with(
                serde_json::json!({"monitor": {"timeout": "10s"}, "health": {"probe": {"timeout": "500ms"}}}),
            ),
        ),
        (
            "dotted node names in pin, ban and cleanup",
            with(serde_json::json!({
                "candidates": [{"node": "ip-10-0-1-5.ec2.internal"}, {"node": "node-b"}],
                "pin": {"node": "ip-10-0-1-5.ec2.internal"},
                "bans": [{"node": "node-b"}],
                "cleanup": {"requestId": "r1", "node": "node-b"},
            })),
        ),
    ];
    for (i, (what, spec)) in good.iter().enumerate() {
        if let Err(e) = api
            .create(
                &PostParams::default(),
                &raw(&format!("good-{i}"), spec.clone())?,
            )
            .await
        {
            wrong.push(format!("{what}: rejected: {e}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len() + 1,
        wrong.join("\n")
    );

    // The address of an existing object cannot be changed (neither swapped nor switched kind).
    api.create(
        &PostParams::default(),
        &raw(
            "immutable",
            serde_json::json!({"allocationId": alloc, "candidates": cands}),
        )?,
    )
    .await?;
    for patch in [
        serde_json::json!({"spec": {"allocationId": "eipalloc-0000000000000000f"}}),
        serde_json::json!({"spec": {"allocationId": null, "publicIp": "203.0.113.10"}}),
    ] {
        let err = api
            .patch(
                "immutable",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch.clone()),
            )
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("the Elastic IP of a FloatingElasticIP is immutable"),
            "{patch}: {err:?}"
        );
    }

    // A misspelt field: kubectl (strict field validation by default) rejects it by name; a
    // client that does not ask for strict validation has it dropped silently (structural
    // schema pruning), so the setting it meant to change keeps its default.
    let manifest = cp.dir().join(format!("{ns}-typo.yaml"));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: feip.io/v1alpha1\nkind: FloatingElasticIP\nmetadata:\n  name: typo\nspec:\n  allocationId: {alloc}\n  candidates: [{{node: node-a}}]\n  migrationTreshold: 3\n"
        ),
    )?;
    let err = cp
        .kubectl(&["create", "-n", &ns, "-f", &manifest.display().to_string()])
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("unknown field \"spec.migrationTreshold\""),
        "kubectl: {err:?}"
    );
    let lax = api
        .create(
            &PostParams::default(),
            &raw(
                "typo",
                serde_json::json!({"allocationId": alloc, "candidates": cands, "migrationTreshold": 3}),
            )?,
        )
        .await?;
    assert!(
        lax.data["spec"].get("migrationTreshold").is_none(),
        "pruned: {:?}",
        lax.data
    );
    println!(
        "admission: {} invalid manifests rejected with their messages, address immutable, typos rejected by kubectl",
        cases.len() + 1
    );
    Ok(())
}

/// Creates a Node object as a kubelet would register it, minus what `tweak` removes.
async fn raw_node(
    client: &kube::Client,
    name: &str,
    provider_id: Option<&str>,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut spec = serde_json::json!({});
    if let Some(p) = provider_id {
        spec["providerID"] = p.into();
    }
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "spec": spec,
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_invalid_specs_get_specific_reasons_while_other_addresses_keep_working()
-> anyhow::Result<()> {
    let mut s = Scenario::new("bad-runtime", &[AZ_A, AZ_C]).await?;
    let ns = s.ns.clone();
    // Nodes that cannot hold an address of this account, region and network.
    let no_provider = format!("{ns}-noprovider");
    raw_node(&s.client, &no_provider, None).await?;
    let not_aws = format!("{ns}-gce");
    raw_node(
        &s.client,
        &not_aws,
        Some("gce://project/europe-west1-b/vm-1"),
    )
    .await?;
    let other_region = format!("{ns}-eu");
    raw_node(
        &s.client,
        &other_region,
        Some("aws:///eu-west-1a/i-0123456789abcdef0"),
    )
    .await?;
    let ghost = format!("{ns}-ghost");
    raw_node(
        &s.client,
        &ghost,
        Some("aws:///ap-northeast-1a/i-0fedcba9876543210"),
    )
    .await?;
    let missing = format!("{ns}-missing");
    // A healthy node whose instance lives in another VPC of the same region.
    let ec2 = ec2_client(s.moto.url()).await;
    let vpc = ec2.create_vpc().cidr_block("10.1.0.0/16").send().await?;
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or_else(|| anyhow::anyhow!("no vpc id"))?
        .to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .availability_zone(AZ_A)
        .cidr_block("10.1.0.0/24")
        .send()
        .await?;
    let subnet_id = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .ok_or_else(|| anyhow::anyhow!("no subnet id"))?
        .to_string();
    let launched = ec2
        .run_instances()
        .image_id(&s.moto.world().image_id)
        .instance_type(InstanceType::T3Micro)
        .subnet_id(&subnet_id)
        .min_count(1)
        .max_count(1)
        .send()
        .await?;
    let foreign_instance = launched
        .instances()
        .first()
        .ok_or_else(|| anyhow::anyhow!("no instance"))?;
    let foreign_eni = foreign_instance
        .network_interfaces()
        .first()
        .and_then(|n| n.network_interface_id())
        .unwrap_or_default()
        .to_string();
    let mut opts = NodeOptions::new(
        &format!("{ns}-othervpc"),
        AZ_A,
        foreign_instance.instance_id().unwrap_or_default(),
    );
    opts.heartbeat_interval = Duration::from_millis(300);
    let other_vpc = SimNode::start(s.client.clone(), opts).await?;
    s.run().await?;

    // The address that must keep working.
    s.create("good", s.spec(serde_json::json!({}))).await?;
    s.wait_status("good", "good active on 0", |st| active_on(st, s.node(0)))
        .await?;

    let base = |candidates: serde_json::Value, address: serde_json::Value| {
        let mut spec = serde_json::json!({
            "candidates": candidates,
            "monitor": {"interval": "1s", "timeout": "800ms"},
            "health": {"heartbeatTimeout": "2s", "probe": {"type": "None"}},
        });
        feip::testenv::scenario::merge(&mut spec, address);
        spec
    };
    let both = serde_json::json!([{"node": s.node(0)}, {"node": s.node(1)}]);
    let mut addresses = Vec::new();
    let fresh = || async {
        let e = s.moto.allocate_address().await?;
        anyhow::Ok(serde_json::json!({"allocationId": e.allocation_id}))
    };
    // (name, spec, Degraded reason, message fragment, phase)
    let mut cases: Vec<(&str, serde_json::Value, &str, String, Phase)> = vec![
        (
            "unknown-allocation",
            base(
                both.clone(),
                serde_json::json!({"allocationId": "eipalloc-00000000deadbeef0"}),
            ),
            "AddressNotFound",
            "eipalloc-00000000deadbeef0 does not exist in this account and region".into(),
            Phase::Error,
        ),
        (
            "unowned-ip",
            base(
                both.clone(),
                serde_json::json!({"publicIp": "198.51.100.77"}),
            ),
            "AddressNotFound",
            "198.51.100.77 is not an Elastic IP of this account in this region".into(),
            Phase::Error,
        ),
    ];
    for (name, node, fragment) in [
        (
            "missing-node",
            &missing,
            format!("node {missing} not found"),
        ),
        (
            "no-provider-id",
            &no_provider,
            "node has no spec.providerID".to_string(),
        ),
        ("not-aws", &not_aws, "is not an AWS instance".to_string()),
        (
            "other-region",
            &other_region,
            "is in eu-west-1a, outside this controller's region ap-northeast-1".to_string(),
        ),
        (
            "unknown-instance",
            &ghost,
            "instance i-0fedcba9876543210 not found in EC2".to_string(),
        ),
    ] {
        let address = fresh().await?;
        addresses.push(
            address["allocationId"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        cases.push((
            name,
            base(serde_json::json!([{"node": node}]), address),
            "NoEligibleCandidate",
            fragment,
            Phase::Failing,
        ));
    }
    for (name, spec, _, _, _) in &cases {
        s.create(name, spec.clone()).await?;
    }
    // Partly broken: the other-VPC node is listed first (preferred) but the other candidates
    // share another VPC, so it must never get the address; a misspelt node is listed too. The
    // address is placed on node 0 and the broken candidates are reported.
    let partial = fresh().await?;
    let partial_alloc = partial["allocationId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    s.create(
        "partly-broken",
        base(
            serde_json::json!([{"node": other_vpc.name}, {"node": missing}, {"node": s.node(0)}, {"node": s.node(1)}]),
            partial,
        ),
    )
    .await?;

    let mut report = Vec::new();
    for (name, _, reason, fragment, phase) in &cases {
        let st = s
            .wait_status(name, &format!("{name}: Degraded={reason}"), |st| {
                degraded_reason(st) == Some(*reason)
            })
            .await?;
        let c = condition(&st, "Degraded")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            c.contains(fragment.as_str()),
            "{name}: {c:?} lacks {fragment:?}"
        );
        assert_eq!(st.phase, Some(*phase), "{name}: {st:?}");
        assert!(holder(&st).is_none(), "{name} has a holder: {st:?}");
        assert_eq!(
            condition(&st, "Ready").map(|c| c.status.as_str()),
            Some("False"),
            "{name}"
        );
        report.push(format!("{name}: {reason}: {c}"));
    }
    let st = s
        .wait_status(
            "partly-broken",
            "placed on node 0, broken candidates reported",
            |st| active_on(st, s.node(0)) && degraded_reason(st) == Some("CandidateUnresolvable"),
        )
        .await?;
    let c = condition(&st, "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        c.contains(&other_vpc.name) && c.contains(&vpc_id) && c.contains(&missing),
        "{c:?}"
    );
    report.push(format!("partly-broken: CandidateUnresolvable: {c}"));

    // The good address still fails over while all of the above stay broken.
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    s.wait_status("good", "good failed over", |st| {
        active_on(st, s.node(1)) && st.failover_count == 1
    })
    .await?;

    // Nothing was ever sent to EC2 for the broken ones, and the other VPC never got an address.
    let requests = s.proxy.requests();
    let associated: Vec<_> = requests
        .iter()
        .filter(|r| r.action == "AssociateAddress")
        .collect();
    for r in &associated {
        let alloc = r.params.get("AllocationId").cloned().unwrap_or_default();
        assert!(
            alloc == s.eip.allocation_id || alloc == partial_alloc,
            "associated a broken spec's address: {r:?}"
        );
        assert_ne!(
            r.params.get("NetworkInterfaceId").map(String::as_str),
            Some(foreign_eni.as_str()),
            "moved an address into another VPC"
        );
    }
    for a in &addresses {
        assert_eq!(s.moto.association(a).await?, None);
    }

    // Deleting a broken spec completes (its finalizer does not wedge on what it cannot do).
    for name in ["unknown-allocation", "missing-node"] {
        s.api.delete(name, &DeleteParams::default()).await?;
    }
    wait_for("broken specs deleted", s.wait, || async {
        let a = s.api.get_opt("unknown-allocation").await?;
        let b = s.api.get_opt("missing-node").await?;
        Ok((a.is_none() && b.is_none()).then_some(()))
    })
    .await?;
    for line in report {
        println!("{line}");
    }
    drop(other_vpc);
    Ok(())
}

/// An explicit `null` on an optional enum field (templates and some tools write every field)
/// means "unset" for `kubectl create` / `kubectl apply` (the apiserver prunes it, the default
/// applies). Server-side apply keeps nulls, so there it is refused, naming the field and its
/// values. Before, both refused it with a message listing `null` among the supported values.
#[tokio::test]
async fn explicit_null_on_enum_fields_means_the_default() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("bad-null").await?;
    let ar = kube::api::ApiResource::erase::<FloatingElasticIP>(&());
    let client = cp.client().await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let fields = [
        "management",
        "targetState",
        "releasePolicy",
        "onAssociateFailure",
    ];
    let mut spec = serde_json::json!({
        "allocationId": "eipalloc-0123456789abcdef0",
        "candidates": [{"node": "node-a"}],
    });
    for f in fields {
        spec[f] = serde_json::Value::Null;
    }
    let mut wrong = Vec::new();
    if let Err(e) = api
        .create(&PostParams::default(), &raw("created", spec.clone())?)
        .await
    {
        wrong.push(format!("create: {e}"));
    }
    let applied = serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
        "metadata": {"name": "applied"}, "spec": spec,
    });
    // Server-side apply does not prune nulls before validation, so there the value is an
    // error; the message names each field and the values it takes, and no longer lists `null`
    // among them.
    match api
        .patch(
            "applied",
            &kube::api::PatchParams::apply("feip-test").force(),
            &kube::api::Patch::Apply(&applied),
        )
        .await
    {
        Ok(_) => wrong.push("server-side apply: accepted a null".into()),
        Err(kube::Error::Api(s)) => {
            for (field, values) in [
                ("management", "\"Managed\", \"ObserveOnly\""),
                ("targetState", "\"Started\", \"Stopped\""),
                ("releasePolicy", "\"Disassociate\", \"Retain\""),
                ("onAssociateFailure", "\"TryNext\", \"Stop\""),
            ] {
                let named = format!("spec.{field} in body must be of type string");
                let supported = format!("supported values: {values}");
                if !s.message.contains(&named) || !s.message.contains(&supported) {
                    wrong.push(format!(
                        "server-side apply: {field} not named with {values}: {}",
                        s.message
                    ));
                }
            }
            if s.message.contains(", null") {
                wrong.push(format!(
                    "server-side apply: null listed as supported: {}",
                    s.message
                ));
            }
        }
        Err(e) => wrong.push(format!("server-side apply: {e}")),
    }
    // kubectl itself, as a user would run it.
    let manifest = serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
        "metadata": {"name": "kubectl", "namespace": ns}, "spec": spec,
    });
    let file = cp.dir().join(format!("{ns}-null-enums.json"));
    std::fs::write(&file, manifest.to_string())?;
    let path = file.to_string_lossy().into_owned();
    if let Err(e) = cp.kubectl(&["create", "-f", &path]).await {
        wrong.push(format!("kubectl create: {e}"));
    }
    let typed: Api<FloatingElasticIP> = Api::namespaced(client, &ns);
    for name in ["created", "kubectl"] {
        let Ok(stored) = typed.get(name).await else {
            continue;
        };
        let s = &stored.spec;
        let set = [
            s.management.is_some(),
            s.target_state.is_some(),
            s.release_policy.is_some(),
            s.on_associate_failure.is_some(),
        ];
        if set.iter().any(|x| *x) {
            wrong.push(format!("{name}: stored with a value: {s:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}
