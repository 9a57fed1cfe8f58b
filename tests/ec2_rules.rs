//! The test EC2 behaves like AWS where moto does not: one test per rule of
//! `feip::testenv::aws_rules`, against the real moto behind a `FaultProxy`. Each test fails
//! when its rule is removed (moto alone answers otherwise).

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Filter;
use feip::testenv::{
    AZ_A, AddressTarget, DEFAULT_CONSISTENCY_LAG, ElasticIp, Fault, FaultProxy, FaultRule,
    Instance, Moto, ec2_client, wait_for,
};

/// A proxy without consistency lag, for the rules that are not about it.
async fn settled_proxy(moto: &Moto) -> anyhow::Result<FaultProxy> {
    let proxy = FaultProxy::start(moto.url()).await?;
    proxy.set_consistency_lag(Duration::ZERO);
    Ok(proxy)
}

async fn associate(
    ec2: &aws_sdk_ec2::Client,
    eip: &ElasticIp,
    inst: &Instance,
    private_ip: &str,
) -> Result<String, String> {
    ec2.associate_address()
        .allocation_id(&eip.allocation_id)
        .network_interface_id(&inst.network_interface_id)
        .private_ip_address(private_ip)
        .allow_reassociation(true)
        .send()
        .await
        .map(|o| o.association_id().unwrap_or_default().to_string())
        .map_err(|e| e.code().unwrap_or("no code").to_string())
}

/// (ENI, private IP, instance) of an address as DescribeAddresses through `ec2` reports it.
async fn reported(
    ec2: &aws_sdk_ec2::Client,
    eip: &ElasticIp,
) -> anyhow::Result<Option<(String, String, Option<String>)>> {
    let out = ec2
        .describe_addresses()
        .allocation_ids(&eip.allocation_id)
        .send()
        .await?;
    let a = out.addresses().first();
    let some = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    Ok(a.and_then(|a| {
        Some((
            some(a.network_interface_id())?,
            some(a.private_ip_address())?,
            some(a.instance_id()),
        ))
    }))
}

fn at(inst: &Instance, ip: &str) -> Option<AddressTarget> {
    Some(AddressTarget {
        network_interface_id: inst.network_interface_id.clone(),
        private_ip: ip.to_string(),
    })
}

#[tokio::test]
async fn a_second_address_on_a_private_ip_displaces_the_first() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance_with_secondaries(AZ_A, 1).await?;
    let (primary, secondary) = (&inst.private_ips[0], &inst.private_ips[1]);
    let (eip1, eip2, eip3) = (
        moto.allocate_address().await?,
        moto.allocate_address().await?,
        moto.allocate_address().await?,
    );
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    associate(&ec2, &eip1, &inst, primary)
        .await
        .map_err(anyhow::Error::msg)?;
    // Another private IP of the same interface is another place: nothing displaced.
    associate(&ec2, &eip3, &inst, secondary)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(proxy.displacements().is_empty());
    associate(&ec2, &eip2, &inst, primary)
        .await
        .map_err(anyhow::Error::msg)?;

    assert_eq!(moto.true_association(&eip1.allocation_id).await?, None);
    assert_eq!(moto.association(&eip1.allocation_id).await?, None);
    assert_eq!(reported(&ec2, &eip1).await?, None);
    assert_eq!(
        moto.true_association(&eip2.allocation_id).await?,
        at(&inst, primary)
    );
    assert_eq!(
        moto.true_association(&eip3.allocation_id).await?,
        at(&inst, secondary)
    );
    let d = proxy.displacements();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].displaced.as_str(), d[0].by.as_str()),
        (eip1.allocation_id.as_str(), eip2.allocation_id.as_str())
    );
    assert_eq!(
        (&d[0].network_interface_id, &d[0].private_ip),
        (&inst.network_interface_id, primary)
    );
    Ok(())
}

#[tokio::test]
async fn the_association_is_at_the_requested_private_ip() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance_with_secondaries(AZ_A, 2).await?;
    let eip = moto.allocate_address().await?;
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    let secondary = &inst.private_ips[2];
    associate(&ec2, &eip, &inst, secondary)
        .await
        .map_err(anyhow::Error::msg)?;
    // AWS reports the instance too, although the association was made by interface.
    assert_eq!(
        reported(&ec2, &eip).await?,
        Some((
            inst.network_interface_id.clone(),
            secondary.clone(),
            Some(inst.instance_id.clone())
        ))
    );
    assert_eq!(
        moto.true_association(&eip.allocation_id).await?,
        at(&inst, secondary)
    );
    Ok(())
}

#[tokio::test]
async fn a_private_ip_the_interface_does_not_have_is_refused() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance(AZ_A).await?;
    let other = moto.launch_instance(AZ_A).await?;
    let eip = moto.allocate_address().await?;
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    assert_eq!(
        associate(&ec2, &eip, &inst, &other.private_ip).await,
        Err("InvalidParameterValue".to_string())
    );
    assert_eq!(moto.association(&eip.allocation_id).await?, None);
    Ok(())
}

#[tokio::test]
async fn by_instance_id_the_address_goes_to_the_primary_interface_and_ip() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance_with_secondaries(AZ_A, 1).await?;
    let (eip1, eip2) = (
        moto.allocate_address().await?,
        moto.allocate_address().await?,
    );
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    associate(&ec2, &eip1, &inst, &inst.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    ec2.associate_address()
        .allocation_id(&eip2.allocation_id)
        .instance_id(&inst.instance_id)
        .allow_reassociation(true)
        .send()
        .await?;
    assert_eq!(
        moto.true_association(&eip2.allocation_id).await?,
        at(&inst, &inst.private_ip)
    );
    // "If you associate an Elastic IP address with an instance that has an existing Elastic IP
    // address, the existing address is disassociated."
    assert_eq!(moto.association(&eip1.allocation_id).await?, None);
    assert_eq!(proxy.displacements().len(), 1);
    Ok(())
}

#[tokio::test]
async fn without_allow_reassociation_an_associated_address_is_refused() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let (a, b) = (
        moto.launch_instance(AZ_A).await?,
        moto.launch_instance(AZ_A).await?,
    );
    let eip = moto.allocate_address().await?;
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    associate(&ec2, &eip, &a, &a.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    // moto refuses this by interface already, but not by instance id.
    let by_interface = ec2
        .associate_address()
        .allocation_id(&eip.allocation_id)
        .network_interface_id(&b.network_interface_id)
        .allow_reassociation(false)
        .send()
        .await
        .expect_err("an associated address needs AllowReassociation");
    assert_eq!(by_interface.code(), Some("Resource.AlreadyAssociated"));
    let by_instance = ec2
        .associate_address()
        .allocation_id(&eip.allocation_id)
        .instance_id(&b.instance_id)
        .send()
        .await
        .expect_err("an associated address needs AllowReassociation");
    assert_eq!(by_instance.code(), Some("Resource.AlreadyAssociated"));
    assert_eq!(
        moto.association(&eip.allocation_id).await?.as_deref(),
        Some(a.network_interface_id.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn describe_instances_lists_the_secondary_private_ips() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance_with_secondaries(AZ_A, 3).await?;
    assert_eq!(inst.private_ips.len(), 4);
    assert_eq!(inst.private_ips[0], inst.private_ip);
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;
    let out = ec2
        .describe_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await?;
    let eni = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.network_interfaces())
        .find(|n| n.network_interface_id() == Some(inst.network_interface_id.as_str()))
        .ok_or_else(|| anyhow::anyhow!("no primary interface"))?;
    let mut listed: Vec<String> = eni
        .private_ip_addresses()
        .iter()
        .filter_map(|p| p.private_ip_address().map(str::to_string))
        .collect();
    let mut want = inst.private_ips.clone();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    Ok(())
}

#[tokio::test]
async fn describe_addresses_lags_behind_mutations() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let (a, b) = (
        moto.launch_instance(AZ_A).await?,
        moto.launch_instance(AZ_A).await?,
    );
    let (eip1, eip2) = (
        moto.allocate_address().await?,
        moto.allocate_address().await?,
    );
    let proxy = FaultProxy::start(moto.url()).await?;
    let ec2 = ec2_client(&proxy.url()).await;
    assert!(DEFAULT_CONSISTENCY_LAG >= Duration::from_millis(100));
    // Long enough that nothing below can outlive it on a loaded machine.
    proxy.set_consistency_lag(Duration::from_secs(120));

    associate(&ec2, &eip1, &a, &a.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(reported(&ec2, &eip1).await?, None, "still the old state");
    assert_eq!(
        moto.true_association(&eip1.allocation_id).await?,
        at(&a, &a.private_ip)
    );

    // A displacement lags too: eip1 still reads as associated to a after eip2 took its place.
    proxy.set_consistency_lag(Duration::ZERO);
    associate(&ec2, &eip1, &b, &b.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    proxy.set_consistency_lag(Duration::from_secs(120));
    associate(&ec2, &eip2, &b, &b.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(moto.association(&eip1.allocation_id).await?, None);
    assert_eq!(
        reported(&ec2, &eip1).await?.map(|r| r.0),
        Some(b.network_interface_id.clone())
    );

    // With a short lag the new state shows after it.
    proxy.set_consistency_lag(Duration::from_millis(300));
    associate(&ec2, &eip1, &a, &a.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    wait_for("the association to settle", Duration::from_secs(10), || {
        let ec2 = ec2.clone();
        let eip1 = eip1.clone();
        let want = a.network_interface_id.clone();
        async move { Ok((reported(&ec2, &eip1).await?.map(|r| r.0) == Some(want)).then_some(())) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn more_than_200_filter_values_are_refused() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let eip = moto.allocate_address().await?;
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;
    let values = |n: usize| {
        let mut v: Vec<String> = (0..n - 1).map(|i| format!("eipalloc-none{i}")).collect();
        v.push(eip.allocation_id.clone());
        v
    };
    let filter = |n: usize| {
        Filter::builder()
            .name("allocation-id")
            .set_values(Some(values(n)))
            .build()
    };

    let ok = ec2.describe_addresses().filters(filter(200)).send().await?;
    assert_eq!(ok.addresses().len(), 1);
    let err = ec2
        .describe_addresses()
        .filters(filter(201))
        .send()
        .await
        .expect_err("201 filter values");
    assert_eq!(err.code(), Some("FilterLimitExceeded"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    Ok(())
}

#[tokio::test]
async fn associating_to_a_stopped_instance_is_refused() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance(AZ_A).await?;
    let eip = moto.allocate_address().await?;
    moto.stop_instance(&inst.instance_id).await?;
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    assert_eq!(
        associate(&ec2, &eip, &inst, &inst.private_ip).await,
        Err("IncorrectInstanceState".to_string())
    );
    let by_instance = ec2
        .associate_address()
        .allocation_id(&eip.allocation_id)
        .instance_id(&inst.instance_id)
        .allow_reassociation(true)
        .send()
        .await
        .expect_err("a stopped instance");
    assert_eq!(by_instance.code(), Some("IncorrectInstanceState"));
    assert_eq!(moto.association(&eip.allocation_id).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_denied_action_is_unauthorized_until_allowed() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance(AZ_A).await?;
    let eip = moto.allocate_address().await?;
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;

    proxy.deny("AssociateAddress");
    assert_eq!(
        associate(&ec2, &eip, &inst, &inst.private_ip).await,
        Err("UnauthorizedOperation".to_string())
    );
    assert_eq!(moto.association(&eip.allocation_id).await?, None);
    let statuses: Vec<u16> = proxy
        .requests()
        .iter()
        .filter(|r| r.action == "AssociateAddress")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![403]);
    // Other actions are not affected.
    ec2.describe_addresses()
        .allocation_ids(&eip.allocation_id)
        .send()
        .await?;

    proxy.allow("AssociateAddress");
    associate(&ec2, &eip, &inst, &inst.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        moto.association(&eip.allocation_id).await?.as_deref(),
        Some(inst.network_interface_id.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn a_faulted_associate_never_reaches_the_rules_or_moto() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance(AZ_A).await?;
    let (eip1, eip2) = (
        moto.allocate_address().await?,
        moto.allocate_address().await?,
    );
    let proxy = settled_proxy(moto).await?;
    let ec2 = ec2_client(&proxy.url()).await;
    associate(&ec2, &eip1, &inst, &inst.private_ip)
        .await
        .map_err(anyhow::Error::msg)?;

    proxy.inject(FaultRule::times(
        "AssociateAddress",
        1,
        Fault::Definite("InvalidParameterValue".into()),
    ));
    assert!(
        associate(&ec2, &eip2, &inst, &inst.private_ip)
            .await
            .is_err()
    );
    assert!(proxy.displacements().is_empty());
    assert_eq!(moto.association(&eip2.allocation_id).await?, None);
    assert_eq!(
        moto.true_association(&eip1.allocation_id).await?,
        at(&inst, &inst.private_ip)
    );
    Ok(())
}

/// A request that reached EC2 is carried out and answered even when its client gave up
/// waiting: AWS does not cancel a call because the caller's connection closed. A sender whose
/// attempt timed out does not know the outcome, and the change happens anyway; the request
/// log says when EC2 answered it, so tests can tell when it could no longer land.
#[tokio::test]
async fn a_request_is_carried_out_after_its_client_gave_up() -> anyhow::Result<()> {
    let moto = Moto::shared()?;
    let inst = moto.launch_instance(AZ_A).await?;
    let eip = moto.allocate_address().await?;
    let proxy = settled_proxy(moto).await?;
    proxy.inject(FaultRule::always(
        "AssociateAddress",
        Fault::Latency(Duration::from_millis(300)),
    ));
    let ec2 = ec2_client(&proxy.url()).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        associate(&ec2, &eip, &inst, &inst.private_ip),
    )
    .await;
    assert!(gave_up.is_err(), "the client gives up before EC2 has it");

    let answered = wait_for(
        "the abandoned associate answered",
        Duration::from_secs(10),
        || async {
            Ok(proxy
                .requests()
                .into_iter()
                .find(|r| r.action == "AssociateAddress" && r.answered_at.is_some()))
        },
    )
    .await?;
    assert_eq!(answered.status, 200, "{answered:?}");
    assert!(answered.forwarded_at.is_some(), "{answered:?}");
    assert_eq!(
        moto.true_association(&eip.allocation_id).await?,
        at(&inst, &inst.private_ip)
    );
    Ok(())
}
