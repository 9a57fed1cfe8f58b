//! Tenancy against the real parts: tenants are namespace-scoped ServiceAccounts (a Role in
//! their own namespace, as a real tenant would have) creating FloatingElasticIPs with their
//! own tokens; the cluster admin decides with FloatingElasticIPGrants what each may claim.
//! Every hijack of finding H1 (docs/security.md, "H1 scenarios") is attempted by tenant b and
//! refused with `Degraded=NotPermitted`, with the victim's address untouched in EC2, no holder
//! Lease written and no probe sent. (The Lease guard of the chart, which stops a tenant from
//! forging a holder Lease, is proven by tests/e2e.rs.)

use std::time::Duration;

use feip::crd::{FloatingElasticIP, Phase};
use feip::grant::FloatingElasticIPGrant;
use feip::testenv::control_plane::client_from_kubeconfig;
use feip::testenv::scenario::{
    Scenario, active_on, condition, create_in, degraded_reason, forwarded_associations, wait_ready,
    wait_status_in,
};
use feip::testenv::{AZ_A, AZ_C, ElasticIp, TestController, ec2_client, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// The tag a team's Elastic IPs carry (the AWS account admin's word on whose address it is).
const TENANT_TAG: &str = "feip.io/tenant";

/// One tenant: its namespace, a client with its ServiceAccount's token, its grant's tag value
/// and node pool.
struct Tenant {
    ns: String,
    api: Api<FloatingElasticIP>,
    /// Unique per test: grants are cluster-scoped and the control plane is shared.
    tag: String,
}

/// Two tenants a and b on one cluster: nodes 0, 1 are a's pool, nodes 2, 3 are b's; each has
/// a grant for its namespace, its tagged addresses and its pool; one replica watches both.
struct World {
    s: Scenario,
    a: Tenant,
    b: Tenant,
    /// a's address (tagged for a) and b's (tagged for b).
    eip_a: ElasticIp,
    eip_b: ElasticIp,
}

impl World {
    async fn new(name: &str) -> anyhow::Result<World> {
        let mut s = Scenario::new(name, &[]).await?;
        let pool = |p: String| {
            move |o: &mut feip::testenv::NodeOptions| {
                o.labels.push(("pool".into(), p));
            }
        };
        let (pool_a, pool_b) = (format!("{}-a", s.ns), format!("{}-b", s.ns));
        for (az, p) in [
            (AZ_A, &pool_a),
            (AZ_C, &pool_a),
            (AZ_A, &pool_b),
            (AZ_C, &pool_b),
        ] {
            s.add_node(az, pool(p.clone())).await?;
        }
        let a = tenant(&s, "ten-a", &pool_a).await?;
        let b = tenant(&s, "ten-b", &pool_b).await?;
        let eip_a = s.eip.clone();
        tag(&s, &eip_a, &a.tag).await?;
        let eip_b = s.moto.allocate_address().await?;
        tag(&s, &eip_b, &b.tag).await?;
        for t in [&a, &b] {
            grant(
                &s.client,
                &t.tag,
                serde_json::json!({
                    "namespaces": {"names": [t.ns]},
                    "addresses": {"tags": {TENANT_TAG: t.tag}},
                    "nodes": {"selector": {"matchLabels": {"pool": t.tag}}},
                }),
            )
            .await?;
        }
        let mut opts = s.options("replica-0");
        opts.namespaces = vec![a.ns.clone(), b.ns.clone()];
        let c = TestController::start(s.client.clone(), &s.proxy.url(), opts).await?;
        wait_ready(&c, s.wait).await?;
        s.controllers.push(c);
        Ok(World {
            s,
            a,
            b,
            eip_a,
            eip_b,
        })
    }

    /// A spec for `eip` over nodes `nodes`, with the scenario's fast timings.
    fn spec(
        &self,
        eip: &ElasticIp,
        nodes: &[usize],
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let mut spec = self.s.spec(extra);
        spec["allocationId"] = eip.allocation_id.clone().into();
        spec["candidates"] = nodes
            .iter()
            .map(|&i| serde_json::json!({"node": self.s.node(i)}))
            .collect();
        spec
    }

    /// Waits until `name` of tenant `t` reports `Degraded=NotPermitted` with a message
    /// containing every one of `says`, and checks the rest of what a refused claim shows.
    async fn refused(&self, t: &Tenant, name: &str, says: &[&str]) -> anyhow::Result<()> {
        // The first verdict may be "waiting for its EC2 tags" (the address not read yet).
        let says_all = |st: &feip::crd::FloatingElasticIPStatus| {
            let msg = condition(st, "Degraded").map_or("", |c| c.message.as_str());
            says.iter().all(|w| msg.contains(w))
        };
        let what = format!("NotPermitted saying {says:?}");
        let st = wait_status_in(&t.api, name, &what, self.s.wait, |st| {
            degraded_reason(st) == Some("NotPermitted") && says_all(st)
        })
        .await?;
        assert_eq!(st.phase, Some(Phase::Error), "{name}: {st:?}");
        assert!(st.holder.is_none(), "{name} names a holder: {st:?}");
        assert!(
            st.address.is_none(),
            "{name}: a refused claim learns nothing about the address: {st:?}"
        );
        let ready = condition(&st, "Ready").map(|c| (c.status.clone(), c.reason.clone()));
        assert_eq!(ready, Some(("False".into(), "Error".into())), "{name}");
        Ok(())
    }

    /// No holder Lease for `name` in `t`'s namespace.
    async fn no_lease(&self, t: &Tenant, name: &str) -> anyhow::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.s.client.clone(), &t.ns);
        assert!(
            leases.get_opt(&format!("feip-{name}")).await?.is_none(),
            "a refused claim {name} wrote a holder Lease"
        );
        Ok(())
    }
}

/// A tenant namespace with a ServiceAccount that may do anything with FloatingElasticIPs and
/// Leases in it (and nothing elsewhere), and a client using its token.
async fn tenant(s: &Scenario, prefix: &str, tag: &str) -> anyhow::Result<Tenant> {
    let ns = s.cp.tenant_namespace(prefix, &[("team", tag)]).await?;
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "tenant"}}))?;
    sas.create(&pp, &sa).await?;
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tenant"},
        "rules": [
            {"apiGroups": ["feip.io"], "resources": ["floatingelasticips"], "verbs": ["*"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
        ],
    }))?;
    Api::<Role>::namespaced(s.client.clone(), &ns)
        .create(&pp, &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}],
    }))?;
    Api::<RoleBinding>::namespaced(s.client.clone(), &ns)
        .create(&pp, &binding)
        .await?;
    let req: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )?;
    let token = sas
        .create_token_request("tenant", &pp, &req)
        .await?
        .status
        .and_then(|s| s.token)
        .unwrap_or_default();
    anyhow::ensure!(!token.is_empty(), "no token for {ns}/tenant");
    let client =
        client_from_kubeconfig(&s.cp.token_kubeconfig(&format!("{ns}-tenant"), &token)?).await?;
    // RBAC as a real tenant has it: its own namespace only.
    let elsewhere: Api<FloatingElasticIP> = Api::namespaced(client.clone(), &s.ns);
    assert!(
        elsewhere.list(&Default::default()).await.is_err(),
        "the tenant's token reaches another namespace"
    );
    Ok(Tenant {
        api: Api::namespaced(client, &ns),
        ns,
        tag: tag.into(),
    })
}

async fn tag(s: &Scenario, eip: &ElasticIp, value: &str) -> anyhow::Result<()> {
    ec2_client(s.moto.url())
        .await
        .create_tags()
        .resources(&eip.allocation_id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(TENANT_TAG)
                .value(value)
                .build(),
        )
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("CreateTags: {e:?}"))?;
    Ok(())
}

async fn grant(client: &Client, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    let g: FloatingElasticIPGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIPGrant",
        "metadata": {"name": name}, "spec": spec,
    }))?;
    Api::<FloatingElasticIPGrant>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("tenancy-test").force(),
            &Patch::Apply(&g),
        )
        .await?;
    Ok(())
}

async fn associate_directly(s: &Scenario, eip: &ElasticIp, eni: &str) -> anyhow::Result<()> {
    ec2_client(s.moto.url())
        .await
        .associate_address()
        .allocation_id(&eip.allocation_id)
        .network_interface_id(eni)
        .allow_reassociation(true)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("AssociateAddress: {e:?}"))?;
    Ok(())
}

/// H1 scenarios 1, 2, 3 and 5 and the probe limits (L4), each attempted by tenant b, with
/// each tenant's own claim working beside them as the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_claim_what_it_was_not_granted() -> anyhow::Result<()> {
    let w = World::new("tenancy-h1").await?;
    let s = &w.s;
    // Addresses nobody granted: one reserved (unassociated), one on a cluster node of pool a
    // set up outside feip (Terraform), one on an instance outside the cluster. (The one on a
    // node is on node 1, not on node 0's private IP that a's own claim takes: feip does not
    // see an address it does not manage on a candidate's private IP, docs/security.md gaps.)
    let reserved = s.moto.allocate_address().await?;
    let on_node = s.moto.allocate_address().await?;
    associate_directly(s, &on_node, s.eni(1)).await?;
    let foreign = s.moto.launch_instance(AZ_A).await?;
    let elsewhere = s.moto.allocate_address().await?;
    associate_directly(s, &elsewhere, &foreign.network_interface_id).await?;
    // A port on node 2 (b's pool) that b's grant does not allow probing: it must see no
    // connection.
    let listener = tokio::net::TcpListener::bind((s.nodes[2].ip, 0)).await?;
    let scanned_port = listener.local_addr()?.port();

    // Controls: each tenant's own claim is permitted and active.
    create_in(
        &w.a.api,
        "mine",
        w.spec(&w.eip_a, &[0, 1], serde_json::json!({})),
    )
    .await?;
    create_in(
        &w.b.api,
        "mine",
        w.spec(&w.eip_b, &[2, 3], serde_json::json!({})),
    )
    .await?;
    for (t, node) in [(&w.a, 0), (&w.b, 2)] {
        wait_status_in(&t.api, "mine", "own claim active", s.wait, |st| {
            active_on(st, s.node(node)) && degraded_reason(st).is_none()
        })
        .await?;
    }

    // 1. An unassociated address, by allocation id.
    create_in(
        &w.b.api,
        "reserved",
        w.spec(&reserved, &[2, 3], serde_json::json!({})),
    )
    .await?;
    // 2. An address on a cluster node of pool a, by public IP: listing that node would adopt
    //    it, the pin would move it to b's node.
    let mut adopt = w.spec(
        &on_node,
        &[1, 2],
        serde_json::json!({"pin": {"node": s.node(2)}}),
    );
    adopt.as_object_mut().map(|o| o.remove("allocationId"));
    adopt["publicIp"] = on_node.public_ip.clone().into();
    create_in(&w.b.api, "adopt", adopt).await?;
    // 3. Takeover of an address on an instance outside the cluster.
    create_in(
        &w.b.api,
        "takeover",
        w.spec(
            &elsewhere,
            &[2, 3],
            serde_json::json!({"allowTakeover": true}),
        ),
    )
    .await?;
    // 3b. Takeover on its own granted address is refused too: the grant does not allow it.
    create_in(
        &w.b.api,
        "own-takeover",
        w.spec(&w.eip_b, &[3], serde_json::json!({"allowTakeover": true})),
    )
    .await?;
    // 5. Its own address on another tenant's nodes.
    create_in(
        &w.b.api,
        "pull",
        w.spec(&w.eip_b, &[0, 1], serde_json::json!({})),
    )
    .await?;
    // L4. A probe of a port the grant does not allow, on its own node and address.
    let probe = serde_json::json!({"health": {"probe": {"type": "TCP", "port": scanned_port, "period": "100ms", "timeout": "50ms"}}});
    let b_second = s.moto.allocate_address().await?;
    tag(s, &b_second, &w.b.tag).await?;
    create_in(&w.b.api, "scan", w.spec(&b_second, &[2], probe)).await?;

    let not_granted = format!("no FloatingElasticIPGrant gives namespace {}", w.b.ns);
    w.refused(&w.b, "reserved", &[&not_granted, &reserved.allocation_id])
        .await?;
    w.refused(&w.b, "adopt", &[&not_granted, &on_node.public_ip])
        .await?;
    w.refused(&w.b, "takeover", &[&not_granted]).await?;
    w.refused(&w.b, "own-takeover", &["spec.allowTakeover is not allowed"])
        .await?;
    w.refused(
        &w.b,
        "pull",
        &[&format!(
            "candidate node(s) {}, {} not granted",
            s.node(0),
            s.node(1)
        )],
    )
    .await?;
    w.refused(
        &w.b,
        "scan",
        &[
            &format!("probe port {scanned_port} is not allowed"),
            "probe period 100ms is below the allowed minimum 1s",
        ],
    )
    .await?;

    // Several monitor passes later nothing was touched.
    s.wait_monitor_passes(4).await?;
    for name in [
        "reserved",
        "adopt",
        "takeover",
        "own-takeover",
        "pull",
        "scan",
    ] {
        w.no_lease(&w.b, name).await?;
    }
    for (eip, want) in [
        (&reserved, None),
        (&on_node, Some(s.eni(1))),
        (&elsewhere, Some(foreign.network_interface_id.as_str())),
    ] {
        assert!(
            forwarded_associations(&s.proxy, &eip.allocation_id).is_empty(),
            "{} was associated for a refused claim",
            eip.public_ip
        );
        assert_eq!(
            s.moto.association(&eip.allocation_id).await?.as_deref(),
            want,
            "{}",
            eip.public_ip
        );
    }
    assert_eq!(
        forwarded_associations(&s.proxy, &w.eip_b.allocation_id),
        vec![s.eni(2).to_string()],
        "b's own address moved for a refused claim"
    );
    assert_eq!(s.proxy.count("DisassociateAddress"), 0);
    let accepted = tokio::time::timeout(Duration::from_millis(1), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the controller probed port {scanned_port} for a refused claim"
    );

    // Deleting a refused claim releases nothing.
    w.b.api.delete("adopt", &DeleteParams::default()).await?;
    wait_for("adopt deleted", s.wait, || async {
        Ok(w.b.api.get_opt("adopt").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(s.proxy.count("DisassociateAddress"), 0);
    assert_eq!(
        s.moto.association(&on_node.allocation_id).await?.as_deref(),
        Some(s.eni(1))
    );

    // The admin grants b the port: the claim is permitted on the next look, and probed.
    grant(
        &s.client,
        &w.b.tag,
        serde_json::json!({
            "namespaces": {"names": [w.b.ns]},
            "addresses": {"tags": {TENANT_TAG: w.b.tag}},
            "nodes": {"selector": {"matchLabels": {"pool": w.b.tag}}},
            "probes": {"ports": [scanned_port], "minPeriod": "100ms"},
        }),
    )
    .await?;
    tokio::time::timeout(s.wait, listener.accept())
        .await
        .map_err(|_| anyhow::anyhow!("a granted probe port was never probed"))??;
    wait_status_in(
        &w.b.api,
        "scan",
        "scan permitted and active",
        s.wait,
        |st| active_on(st, s.node(2)) && degraded_reason(st).is_none(),
    )
    .await?;
    Ok(())
}

/// H1 scenario 4: squatting. Tenant b claims a's address before a does, and again while a's
/// object is recreated (GitOps replace): the grant, not the creation time, decides the owner,
/// so a's newer object manages the address and b's never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatting_never_wins_another_tenants_address() -> anyhow::Result<()> {
    let w = World::new("tenancy-squat").await?;
    let s = &w.s;
    // b's squat comes first and names b's own nodes.
    create_in(
        &w.b.api,
        "squat",
        w.spec(&w.eip_a, &[2, 3], serde_json::json!({})),
    )
    .await?;
    w.refused(
        &w.b,
        "squat",
        &[&format!(
            "no FloatingElasticIPGrant gives namespace {}",
            w.b.ns
        )],
    )
    .await?;
    // a's claim, newer, owns the address.
    create_in(
        &w.a.api,
        "web",
        w.spec(&w.eip_a, &[0, 1], serde_json::json!({})),
    )
    .await?;
    wait_status_in(&w.a.api, "web", "a's claim active", s.wait, |st| {
        active_on(st, s.node(0)) && degraded_reason(st).is_none()
    })
    .await?;
    // a's object is replaced: deleted (releasing the address) and created again.
    w.a.api.delete("web", &DeleteParams::default()).await?;
    wait_for("web deleted", s.wait, || async {
        Ok(w.a.api.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;
    s.wait_monitor_passes(3).await?;
    w.refused(&w.b, "squat", &[]).await?;
    create_in(
        &w.a.api,
        "web",
        w.spec(&w.eip_a, &[1, 0], serde_json::json!({})),
    )
    .await?;
    wait_status_in(&w.a.api, "web", "a's new claim active", s.wait, |st| {
        active_on(st, s.node(1)) && degraded_reason(st).is_none()
    })
    .await?;
    s.wait_monitor_passes(3).await?;
    w.refused(&w.b, "squat", &[]).await?;
    w.no_lease(&w.b, "squat").await?;
    let targets = forwarded_associations(&s.proxy, &w.eip_a.allocation_id);
    assert!(
        targets.iter().all(|eni| eni == s.eni(0) || eni == s.eni(1)),
        "a's address went to b's nodes: {targets:?}"
    );
    Ok(())
}

/// A grant is checked at admission: each malformed grant is refused with a message naming
/// the field, and well-formed ones are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grants_are_refused_at_admission_naming_the_field() -> anyhow::Result<()> {
    let cp = feip::testenv::ControlPlane::shared()?;
    let client = cp.client().await?;
    let api: Api<FloatingElasticIPGrant> = Api::all(client);
    let base = serde_json::json!({
        "namespaces": {"names": ["team-a"]},
        "addresses": {"tags": {TENANT_TAG: "team-a"}},
        "nodes": {"all": true},
    });
    let with = |field: &str, value: serde_json::Value| {
        let mut spec = base.clone();
        spec[field] = value;
        spec
    };
    let create = |name: String, spec: serde_json::Value| {
        let api = api.clone();
        async move {
            let g: FloatingElasticIPGrant = serde_json::from_value(serde_json::json!({
                "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIPGrant",
                "metadata": {"name": name}, "spec": spec,
            }))?;
            let r = api.create(&PostParams::default(), &g).await;
            if r.is_ok() {
                api.delete(&name, &DeleteParams::default()).await?;
            }
            anyhow::Ok(r.err().map(|e| e.to_string()))
        }
    };
    let n = std::process::id();
    let cases = [
        (
            with("namespaces", serde_json::json!({})),
            "spec.namespaces: set all: true, or names and/or selector",
        ),
        (
            with(
                "namespaces",
                serde_json::json!({"all": true, "names": ["x"]}),
            ),
            "spec.namespaces: set all: true, or names and/or selector",
        ),
        (
            with("namespaces", serde_json::json!({"names": []})),
            "spec.namespaces",
        ),
        (
            with(
                "namespaces",
                serde_json::json!({"names": ["Not_A_Namespace"]}),
            ),
            "spec.namespaces.names[0]",
        ),
        (
            with("addresses", serde_json::json!({})),
            "spec.addresses: set all: true, or allocationIds, publicIps and/or tags",
        ),
        (
            with(
                "addresses",
                serde_json::json!({"all": true, "tags": {"a": "b"}}),
            ),
            "spec.addresses",
        ),
        (
            with("addresses", serde_json::json!({"allocationIds": ["eip-1"]})),
            "spec.addresses.allocationIds[0]",
        ),
        (
            with("addresses", serde_json::json!({"publicIps": ["300.1.1.1"]})),
            "spec.addresses.publicIps[0]",
        ),
        (
            with("nodes", serde_json::json!({})),
            "spec.nodes: set all: true, or names and/or selector",
        ),
        (
            with(
                "probes",
                serde_json::json!({"anyPort": true, "ports": [8080]}),
            ),
            "spec.probes: set anyPort: true or ports, not both",
        ),
        (
            with("probes", serde_json::json!({"ports": [70000]})),
            "spec.probes.ports[0]",
        ),
        (
            with("probes", serde_json::json!({"minPeriod": "10ms"})),
            "spec.probes.minPeriod must be between 100ms and 5m",
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let got = create(format!("bad-{n}-{i}"), spec.clone()).await?;
        let got = got.ok_or_else(|| anyhow::anyhow!("case {i} accepted: {spec}"))?;
        assert!(got.contains(want), "case {i}: {want:?} not in {got:?}");
    }
    for (i, spec) in [
        base.clone(),
        serde_json::json!({"namespaces": {"all": true}, "addresses": {"all": true}, "nodes": {"all": true},
            "allowTakeover": true, "probes": {"anyPort": true, "minPeriod": "100ms"}}),
        serde_json::json!({"namespaces": {"selector": {"matchLabels": {"team": "a"}}, "names": ["b"]},
            "addresses": {"allocationIds": ["eipalloc-0123456789abcdef0"], "publicIps": ["52.16.0.1"]},
            "nodes": {"names": ["ip-10-0-0-1.ec2.internal"], "selector": {"matchLabels": {"pool": "a"}}},
            "probes": {"ports": [8080, 9100], "minPeriod": "5m"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let got = create(format!("good-{n}-{i}"), spec.clone()).await?;
        assert!(got.is_none(), "control {i} refused: {got:?}");
    }
    Ok(())
}
