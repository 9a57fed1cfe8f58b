//! Phase 3: adoption of the pre-associated addresses, created while the controller runs.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::Api;

use feip::crd::FloatingElasticIP;

use crate::NS;
use crate::args::Args;
use crate::counts::{Mark, ec2_counts, mutations};
use crate::report::Report;
use crate::step;
use crate::world::{Env, World, create_feip, feip_name, wait_all_active};

pub async fn adoption_phase(
    env: &Env,
    world: &World,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step(&format!(
        "adoption: creating {} pre-associated addresses while the controller runs",
        args.feips
    ));
    let api: Api<FloatingElasticIP> = Api::namespaced(env.client.clone(), NS);
    let mark = Mark::now(env);
    let log_from = mark.log;
    let t = Instant::now();
    let created: Vec<anyhow::Result<()>> = futures::stream::iter(world.feips.iter().enumerate())
        .map(|(i, (alloc, p, s))| {
            let api = api.clone();
            let spec = serde_json::json!({
                "allocationId": alloc,
                "candidates": [{"node": world.nodes[*p].sim.name}, {"node": world.nodes[*s].sim.name}],
            });
            async move { create_feip(&api, &feip_name(i), spec).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let create_secs = t.elapsed().as_secs_f64();
    wait_all_active(env, args.feips + 2, Duration::from_secs(900)).await?;
    let adopt_secs = t.elapsed().as_secs_f64();
    let records = env.proxy.requests_since(log_from);
    let (calls, throttled) = ec2_counts(&records);
    println!(
        "    created in {create_secs:.1}s, all Active after {adopt_secs:.1}s; EC2 mutations {}, throttled {throttled}, calls {calls:?}",
        mutations(&records)
    );
    report.adoption.insert("create seconds".into(), create_secs);
    report
        .adoption
        .insert("all active seconds".into(), adopt_secs);
    report
        .adoption
        .insert("ec2 mutations".into(), mutations(&records) as f64);
    report
        .adoption
        .insert("ec2 throttled".into(), throttled as f64);
    // Every address is already at its own private IP on its first candidate: nothing moves.
    report.scenarios.push(mark.scenario(env, "adoption", 0));
    Ok(())
}
