//! Smoke tests proving the test environment is the real thing: a real kube-apiserver of the
//! pinned version with RBAC, the FloatingElasticIP CRD with its admission rules, the real
//! kubectl, moto behind the fault proxy, and simulated nodes with heartbeats.

use std::time::Duration;

use feip::crd::FloatingElasticIP;
use feip::testenv::{
    AZ_A, ControlPlane, Fault, FaultProxy, FaultRule, Moto, NodeOptions, SimNode, ec2_client,
    wait_for,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};

fn feip(name: &str, spec: serde_json::Value) -> FloatingElasticIP {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("test manifest deserialises")
}

#[tokio::test]
async fn apiserver_is_the_pinned_version_and_crd_is_established() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let client = cp.client().await?;
    let version = client.apiserver_version().await?;
    assert_eq!(
        version.git_version,
        cp.tools().kubernetes_version,
        "apiserver /version"
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client);
    let crd = crds.get("floatingelasticips.feip.io").await?;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["feip".to_string()]));
    Ok(())
}

#[tokio::test]
async fn valid_feip_is_created_and_read_back() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("valid").await?;
    let api: Api<FloatingElasticIP> = Api::namespaced(cp.client().await?, &ns);
    let spec = serde_json::json!({
        "allocationId": "eipalloc-0123456789abcdef0",
        "candidates": [{"node": "node-a", "priority": 100}, {"node": "node-b"}],
        "failback": {"policy": "Immediate", "holdDown": "30s"},
        "migrationThreshold": 3,
        "failureTimeout": "10m",
        "monitor": {"interval": "10s", "timeout": "5s"},
        "health": {"heartbeatTimeout": "40s", "probe": {"type": "HTTP", "port": 8080, "path": "/healthz", "period": "1s", "timeout": "500ms", "failureThreshold": 3}},
        "bans": [{"node": "node-c", "expiresAt": "2030-01-01T00:00:00Z"}],
    });
    let created = api
        .create(&PostParams::default(), &feip("web", spec.clone()))
        .await?;
    let read = api.get("web").await?;
    assert_eq!(read.spec, created.spec);
    assert_eq!(
        read.spec,
        feip("web", spec).spec,
        "what was read back is what was sent"
    );
    assert_eq!(read.spec.migration_threshold, Some(3));
    Ok(())
}

#[tokio::test]
async fn invalid_specs_are_rejected_at_admission_with_clear_messages() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("invalid").await?;
    // Raw objects: most of these could not even be built as typed FloatingElasticIPs.
    let ar = kube::api::ApiResource::erase::<FloatingElasticIP>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client().await?, &ns, &ar);
    let raw = |name: String, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("raw object")
    };
    let cands = serde_json::json!([{"node": "node-a"}, {"node": "node-b"}]);
    let alloc = "eipalloc-0123456789abcdef0";
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "both addresses",
            serde_json::json!({"allocationId": alloc, "publicIp": "203.0.113.10", "candidates": cands}),
            "exactly one of spec.allocationId or spec.publicIp must be set",
        ),
        (
            "no address",
            serde_json::json!({"candidates": cands}),
            "exactly one of spec.allocationId or spec.publicIp must be set",
        ),
        (
            "no candidate source",
            serde_json::json!({"allocationId": alloc}),
            "exactly one candidate source must be set",
        ),
        (
            "empty candidates",
            serde_json::json!({"allocationId": alloc, "candidates": []}),
            "exactly one candidate source must be set",
        ),
        (
            "both candidate sources",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "nodeSelector": {"matchLabels": {"role": "edge"}}}),
            "exactly one candidate source must be set",
        ),
        (
            "zero threshold",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "migrationThreshold": 0}),
            "should be greater than or equal to 1",
        ),
        (
            "unparseable duration",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "failureTimeout": "ten minutes"}),
            "spec.failureTimeout in body should match",
        ),
        (
            "monitor interval too short",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "monitor": {"interval": "0s"}}),
            "monitor.interval must be between 1s and 1h",
        ),
        (
            "monitor timeout above interval",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "monitor": {"interval": "2s", "timeout": "5s"}}),
            "monitor.timeout (5s) must not exceed monitor.interval (2s)",
        ),
        (
            "bad allocation id",
            serde_json::json!({"allocationId": "alloc-42", "candidates": cands}),
            "spec.allocationId in body should match",
        ),
        (
            "bad public ip",
            serde_json::json!({"publicIp": "300.1.2.3", "candidates": cands}),
            "spec.publicIp must be an IPv4 address",
        ),
        (
            "duplicate candidate",
            serde_json::json!({"allocationId": alloc, "candidates": [{"node": "node-a"}, {"node": "node-a"}]}),
            "Duplicate value",
        ),
        (
            "hold-down without failback",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "failback": {"policy": "Never", "holdDown": "30s"}}),
            "failback.holdDown is only meaningful with policy Immediate",
        ),
        (
            "unknown failback policy",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "failback": {"policy": "Sometimes"}}),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "probe path on TCP",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "health": {"probe": {"type": "TCP", "path": "/x"}}}),
            "probe.path is only valid with type HTTP",
        ),
        (
            "probe port out of range",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "health": {"probe": {"port": 70000}}}),
            "should be less than or equal to 65535",
        ),
        (
            "pin outside candidates",
            serde_json::json!({"allocationId": alloc, "candidates": cands, "pin": {"node": "node-z"}}),
            "spec.pin.node must be one of spec.candidates",
        ),
        (
            "bad node name",
            serde_json::json!({"allocationId": alloc, "candidates": [{"node": "Node_A"}]}),
            "should match",
        ),
    ];
    for (i, (what, spec, want)) in cases.iter().enumerate() {
        let err = api
            .create(
                &PostParams::default(),
                &raw(format!("bad-{i}"), spec.clone()),
            )
            .await
            .expect_err(&format!("{what}: the apiserver accepted an invalid spec"));
        let kube::Error::Api(status) = &err else {
            panic!("{what}: unexpected error {err:?}")
        };
        assert_eq!(status.code, 422, "{what}: {status:?}");
        assert!(
            status.message.contains(want),
            "{what}: message {:?} lacks {want:?}",
            status.message
        );
    }

    // The Elastic IP of an existing object cannot be changed.
    api.create(
        &PostParams::default(),
        &raw(
            "immutable".into(),
            serde_json::json!({"allocationId": alloc, "candidates": cands}),
        ),
    )
    .await?;
    let err = api
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"allocationId": "eipalloc-0000000000000000f"}}),
            ),
        )
        .await
        .expect_err("changing the address must be rejected");
    assert!(
        format!("{err}").contains("the Elastic IP of a FloatingElasticIP is immutable"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_get_prints_the_printer_columns() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("kubectl").await?;
    let api: Api<FloatingElasticIP> = Api::namespaced(cp.client().await?, &ns);
    api.create(
        &PostParams::default(),
        &feip(
            "web",
            serde_json::json!({"publicIp": "203.0.113.10", "candidates": [{"node": "node-a"}]}),
        ),
    )
    .await?;
    let status = serde_json::json!({"status": {"phase": "Active", "holder": {"node": "node-a"},
        "address": {"publicIp": "203.0.113.10"}, "failoverCount": 2}});
    api.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await?;

    for resource in ["floatingelasticips", "feip"] {
        let out = cp.kubectl(&["get", resource, "-n", &ns]).await?;
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "ADDRESS", "HOLDER", "STATUS", "FAILOVERS", "AGE"],
            "{out}"
        );
        let row: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            &row[..5],
            ["web", "203.0.113.10", "node-a", "Active", "2"],
            "{out}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rbac_is_enforced() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let allowed_ns = cp.namespace("rbac-allowed").await?;
    let other_ns = cp.namespace("rbac-other").await?;
    let admin = cp.client().await?;
    let user = feip::testenv::control_plane::client_from_kubeconfig(
        &cp.user_kubeconfig("feip-smoke-nobody", &[])?,
    )
    .await?;

    let denied = Api::<FloatingElasticIP>::namespaced(user.clone(), &allowed_ns)
        .list(&ListParams::default())
        .await
        .expect_err("a user without any binding must be denied");
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "{denied:?}"
    );

    // Grant read access in one namespace only.
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "feip-reader"},
        "rules": [{"apiGroups": ["feip.io"], "resources": ["floatingelasticips"], "verbs": ["get", "list"]}],
    }))?;
    Api::<Role>::namespaced(admin.clone(), &allowed_ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "feip-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "feip-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "feip-smoke-nobody"}],
    }))?;
    Api::<RoleBinding>::namespaced(admin, &allowed_ns)
        .create(&PostParams::default(), &binding)
        .await?;

    let api = Api::<FloatingElasticIP>::namespaced(user.clone(), &allowed_ns);
    wait_for(
        "the RoleBinding to take effect",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            async move { Ok(api.list(&ListParams::default()).await.ok().map(|_| ())) }
        },
    )
    .await?;
    let still_denied = Api::<FloatingElasticIP>::namespaced(user.clone(), &other_ns)
        .list(&ListParams::default())
        .await
        .expect_err("the binding must not reach other namespaces");
    assert!(
        matches!(&still_denied, kube::Error::Api(s) if s.code == 403),
        "{still_denied:?}"
    );
    let write_denied = api
        .create(
            &PostParams::default(),
            &feip(
                "nope",
                serde_json::json!({"publicIp": "203.0.113.11", "candidates": [{"node": "a"}]}),
            ),
        )
        .await
        .expect_err("read-only role must not create");
    assert!(
        matches!(&write_denied, kube::Error::Api(s) if s.code == 403),
        "{write_denied:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ec2_through_the_fault_proxy_sees_throttling_then_success() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let eip = moto.allocate_address().await?;
    let proxy = FaultProxy::start(moto.url()).await?;
    proxy.inject(FaultRule::times("DescribeAddresses", 2, Fault::Throttle));
    let ec2 = ec2_client(&proxy.url()).await;

    let out = ec2
        .describe_addresses()
        .allocation_ids(&eip.allocation_id)
        .send()
        .await?;
    assert_eq!(
        out.addresses().first().and_then(|a| a.public_ip()),
        Some(eip.public_ip.as_str())
    );

    let log: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.action == "DescribeAddresses")
        .collect();
    assert_eq!(
        log.len(),
        3,
        "two throttled attempts, then the SDK's retry succeeds: {log:?}"
    );
    assert_eq!(log[0].fault, Some(Fault::Throttle));
    assert_eq!(log[1].fault, Some(Fault::Throttle));
    assert_eq!((log[0].status, log[2].status), (503, 200));
    assert_eq!(log[2].fault, None);

    // A storm longer than the SDK's retries surfaces as a throttling error with EC2's code.
    proxy.inject(FaultRule::always("DescribeAddresses", Fault::Throttle));
    let err = ec2
        .describe_addresses()
        .allocation_ids(&eip.allocation_id)
        .send()
        .await
        .expect_err("a throttling storm must fail");
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_stopped_node_stops_renewing_its_heartbeat() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let moto = Moto::shared()?;
    let client = cp.client().await?;
    let instance = moto.launch_instance(AZ_A).await?;
    let mut opts = NodeOptions::new(
        &format!("smoke-hb-{}", std::process::id()),
        AZ_A,
        &instance.instance_id,
    );
    opts.heartbeat_interval = Duration::from_millis(200);
    let node = SimNode::start(client.clone(), opts).await?;

    let node_obj = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get(&node.name)
        .await?;
    assert_eq!(
        node_obj.spec.and_then(|s| s.provider_id),
        Some(format!("aws:///{AZ_A}/{}", instance.instance_id))
    );

    let first = node.heartbeat_renew_time().await?;
    wait_for("the heartbeat to renew", Duration::from_secs(10), || {
        let first = first.clone();
        let node = &node;
        async move { Ok((node.heartbeat_renew_time().await? != first).then_some(())) }
    })
    .await?;

    node.stop();
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let stopped = leases.get(&node.name).await?;
    let rv = stopped
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    // Watch 15 heartbeat intervals: a single renewal would show up as a MODIFIED event.
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={}", node.name))
        .timeout(3);
    let events: Vec<WatchEvent<Lease>> = leases.watch(&wp, &rv).await?.try_collect().await?;
    let modified = events
        .iter()
        .filter(|e| matches!(e, WatchEvent::Modified(_)))
        .count();
    assert_eq!(
        modified, 0,
        "a stopped node renewed its heartbeat: {events:?}"
    );

    node.resume().await?;
    let after = leases
        .get(&node.name)
        .await?
        .spec
        .and_then(|s| s.renew_time);
    let mut stream = leases
        .watch(
            &WatchParams::default()
                .fields(&format!("metadata.name={}", node.name))
                .timeout(10),
            &rv,
        )
        .await?
        .boxed();
    let mut renewed = false;
    while let Some(ev) = stream.try_next().await? {
        if let WatchEvent::Modified(l) = ev
            && l.spec.and_then(|s| s.renew_time)
                != stopped.spec.as_ref().and_then(|s| s.renew_time.clone())
        {
            renewed = true;
            break;
        }
    }
    assert!(
        renewed || after != stopped.spec.and_then(|s| s.renew_time),
        "a resumed node must renew again"
    );
    Ok(())
}
