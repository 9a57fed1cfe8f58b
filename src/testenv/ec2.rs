//! EC2 for tests: a real moto server (shared per test binary) with a seeded world: one VPC,
//! one subnet in each of two availability zones, and helpers that launch instances and
//! allocate Elastic IPs for each test.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_ec2::types::{Filter, InstanceType};

use super::process::{ManagedProcess, free_port, wait_for};
use super::tools::tools;

/// The region the test world lives in (the reference scenario's).
pub const REGION: &str = "ap-northeast-1";
/// The two availability zones of the reference scenario.
pub const AZ_A: &str = "ap-northeast-1a";
pub const AZ_C: &str = "ap-northeast-1c";

/// A running moto server with a seeded VPC.
pub struct Moto {
    url: String,
    world: World,
    _process: ManagedProcess,
    _dir: tempfile::TempDir,
}

/// Ids of the seeded network.
#[derive(Clone, Debug)]
pub struct World {
    pub vpc_id: String,
    pub subnet_a: String,
    pub subnet_c: String,
    /// Large subnets (a /18 in each zone) for instances that carry many private IPs.
    pub subnet_a_large: Subnet,
    pub subnet_c_large: Subnet,
    pub image_id: String,
}

/// A subnet and its range.
#[derive(Clone, Debug)]
pub struct Subnet {
    pub id: String,
    pub first: std::net::Ipv4Addr,
    pub last: std::net::Ipv4Addr,
}

/// Secondary private IPs handed out so far, per subnet (one moto per test process). moto
/// picks secondary IPs at random without checking the other interfaces of the subnet, so two
/// interfaces could share one, which AWS never allows: tests choose them instead, from the
/// top of the subnet down (moto gives primary IPs from the bottom up).
static SECONDARIES_TAKEN: std::sync::Mutex<BTreeMap<String, u32>> =
    std::sync::Mutex::new(BTreeMap::new());

/// `n` secondary IPs of `subnet` no interface has yet.
fn next_secondaries(subnet: &Subnet, n: u32) -> anyhow::Result<Vec<String>> {
    let mut taken = SECONDARIES_TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let used = taken.entry(subnet.id.clone()).or_insert(0);
    // The last address is the broadcast address; the bottom quarter is left to primaries.
    let top = u32::from(subnet.last) - 1 - *used;
    let floor = u32::from(subnet.first) + (u32::from(subnet.last) - u32::from(subnet.first)) / 4;
    let bottom = top
        .checked_sub(n.saturating_sub(1))
        .filter(|b| *b > floor)
        .with_context(|| format!("subnet {} has no {n} more secondary IPs", subnet.id))?;
    *used += n;
    Ok((bottom..=top)
        .rev()
        .map(|ip| std::net::Ipv4Addr::from(ip).to_string())
        .collect())
}

/// One launched instance and its primary network interface.
#[derive(Clone, Debug)]
pub struct Instance {
    pub instance_id: String,
    pub az: String,
    pub network_interface_id: String,
    /// The interface's primary private IP.
    pub private_ip: String,
    /// Every private IP of the interface, the primary first.
    pub private_ips: Vec<String>,
}

/// Where an address truly is: (interface, private IP), as AWS would report it once settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressTarget {
    pub network_interface_id: String,
    pub private_ip: String,
}

/// One allocated Elastic IP.
#[derive(Clone, Debug)]
pub struct ElasticIp {
    pub allocation_id: String,
    pub public_ip: String,
}

static SHARED: OnceLock<Result<Moto, String>> = OnceLock::new();

impl Moto {
    /// One moto per test binary; tests use distinct instances and addresses.
    pub fn shared() -> anyhow::Result<&'static Moto> {
        SHARED
            .get_or_init(|| {
                std::thread::spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(Moto::start())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("moto start panicked"))
                .and_then(|r| r)
                .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("moto failed to start: {e}"))
    }

    /// Starts a private moto server and seeds the world.
    pub async fn start() -> anyhow::Result<Moto> {
        let tools = tools()?;
        let dir = super::control_plane::tempdir_on_tmpfs()?;
        let port = free_port()?;
        let process = ManagedProcess::start(
            "moto_server",
            &tools.moto_server,
            vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            dir.path().join("moto.log"),
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let probe = format!("127.0.0.1:{port}");
        wait_for("moto to listen", Duration::from_secs(60), || {
            let probe = probe.clone();
            async move {
                Ok(tokio::net::TcpStream::connect(&probe)
                    .await
                    .ok()
                    .map(|_| ()))
            }
        })
        .await
        .with_context(|| format!("moto log: {}", process.log_tail(20)))?;
        let client = ec2_client(&url).await;
        let world = seed(&client).await.context("seeding the moto world")?;
        Ok(Moto {
            url,
            world,
            _process: process,
            _dir: dir,
        })
    }

    /// moto's own URL (tests normally go through a `FaultProxy` in front of it).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// Launches one instance in `az` (AZ_A or AZ_C) and returns its primary ENI.
    pub async fn launch_instance(&self, az: &str) -> anyhow::Result<Instance> {
        self.launch_instance_with_ip(az, None).await
    }

    async fn launch_in(
        &self,
        az: &str,
        subnet: &str,
        private_ip: Option<&str>,
    ) -> anyhow::Result<Instance> {
        let client = ec2_client(&self.url).await;
        let out = client
            .run_instances()
            .image_id(&self.world.image_id)
            .instance_type(InstanceType::T3Micro)
            .subnet_id(subnet)
            .set_private_ip_address(private_ip.map(str::to_string))
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("RunInstances: {e:?}"))?;
        let inst = out
            .instances()
            .first()
            .context("RunInstances returned no instance")?;
        let eni = inst
            .network_interfaces()
            .iter()
            .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            .or_else(|| inst.network_interfaces().first())
            .context("instance has no network interface")?;
        let private_ip = eni.private_ip_address().unwrap_or_default().to_string();
        Ok(Instance {
            instance_id: inst.instance_id().unwrap_or_default().to_string(),
            az: az.to_string(),
            network_interface_id: eni.network_interface_id().unwrap_or_default().to_string(),
            private_ips: vec![private_ip.clone()],
            private_ip,
        })
    }

    /// Launches one instance in `az` with a chosen primary private IP (e.g. the reference
    /// scenario's 10.0.0.20 / 10.0.1.20).
    pub async fn launch_instance_with_ip(
        &self,
        az: &str,
        private_ip: Option<&str>,
    ) -> anyhow::Result<Instance> {
        let subnet = if az == AZ_C {
            &self.world.subnet_c
        } else {
            &self.world.subnet_a
        };
        self.launch_in(az, subnet, private_ip).await
    }

    /// Launches one instance in `az` whose primary interface carries `secondaries` secondary
    /// private IPs besides its primary one. moto 5.2 ignores `SecondaryPrivateIpAddressCount`
    /// in RunInstances, so they are assigned after launch (AssignPrivateIpAddresses, which
    /// moto honours; DescribeInstances and DescribeNetworkInterfaces then list them).
    pub async fn launch_instance_with_secondaries(
        &self,
        az: &str,
        secondaries: i32,
    ) -> anyhow::Result<Instance> {
        if secondaries == 0 {
            return self.launch_instance(az).await;
        }
        let subnet = if az == AZ_C {
            &self.world.subnet_c_large
        } else {
            &self.world.subnet_a_large
        };
        let mut instance = self.launch_in(az, &subnet.id, None).await?;
        let ips = next_secondaries(subnet, u32::try_from(secondaries)?)?;
        let client = ec2_client(&self.url).await;
        client
            .assign_private_ip_addresses()
            .network_interface_id(&instance.network_interface_id)
            .set_private_ip_addresses(Some(ips))
            .send()
            .await
            .map_err(e("AssignPrivateIpAddresses"))?;
        let out = client
            .describe_network_interfaces()
            .network_interface_ids(&instance.network_interface_id)
            .send()
            .await
            .map_err(e("DescribeNetworkInterfaces"))?;
        let eni = out
            .network_interfaces()
            .first()
            .context("DescribeNetworkInterfaces returned no interface")?;
        let mut ips: Vec<(bool, String)> = eni
            .private_ip_addresses()
            .iter()
            .filter_map(|p| {
                Some((
                    p.primary() != Some(true),
                    p.private_ip_address()?.to_string(),
                ))
            })
            .collect();
        ips.sort_by_key(|(secondary, _)| *secondary); // stable: the primary first
        instance.private_ips = ips.into_iter().map(|(_, ip)| ip).collect();
        let want = usize::try_from(secondaries).unwrap_or(0) + 1;
        anyhow::ensure!(
            instance.private_ips.len() == want,
            "{} has {} private IPs, wanted {want}",
            instance.network_interface_id,
            instance.private_ips.len()
        );
        Ok(instance)
    }

    /// Creates a network interface in the subnet of `instance`'s primary one and attaches it
    /// at `device_index`. Returns its id.
    pub async fn attach_interface(
        &self,
        instance: &Instance,
        device_index: i32,
    ) -> anyhow::Result<String> {
        let client = ec2_client(&self.url).await;
        let primary = client
            .describe_network_interfaces()
            .network_interface_ids(&instance.network_interface_id)
            .send()
            .await
            .map_err(e("DescribeNetworkInterfaces"))?;
        let subnet = primary
            .network_interfaces()
            .first()
            .and_then(|n| n.subnet_id())
            .context("the primary interface has no subnet")?
            .to_string();
        let created = client
            .create_network_interface()
            .subnet_id(subnet)
            .send()
            .await
            .map_err(e("CreateNetworkInterface"))?;
        let eni = created
            .network_interface()
            .and_then(|n| n.network_interface_id())
            .context("CreateNetworkInterface returned no id")?
            .to_string();
        client
            .attach_network_interface()
            .network_interface_id(&eni)
            .instance_id(&instance.instance_id)
            .device_index(device_index)
            .send()
            .await
            .map_err(e("AttachNetworkInterface"))?;
        Ok(eni)
    }

    /// Stops an instance (moto reports it `stopped` at once).
    pub async fn stop_instance(&self, instance_id: &str) -> anyhow::Result<()> {
        ec2_client(&self.url)
            .await
            .stop_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(e("StopInstances"))?;
        Ok(())
    }

    /// Allocates a VPC Elastic IP with a public address, as AWS gives. moto would pick a
    /// random `127.x.y.z`, a loopback address no Elastic IP has (and that `spec.publicIp`
    /// refuses at admission), so the address is chosen here: `52.16.0.1` on, unique within this
    /// moto (one per test process).
    pub async fn allocate_address(&self) -> anyhow::Result<ElasticIp> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let public_ip = format!("52.{}.{}.{}", 16 + (n >> 16), (n >> 8) & 255, n & 255);
        let client = ec2_client(&self.url).await;
        let out = client
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .address(public_ip)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("AllocateAddress: {e:?}"))?;
        Ok(ElasticIp {
            allocation_id: out.allocation_id().unwrap_or_default().to_string(),
            public_ip: out.public_ip().unwrap_or_default().to_string(),
        })
    }

    /// The network interface the address is associated with, as AWS would report it once
    /// settled (no consistency lag). Straight from moto: the AWS rules of the fault proxy keep
    /// moto's interface true (a displaced address is disassociated in moto too); only the
    /// private IP needs their model, see `true_association`.
    pub async fn association(&self, allocation_id: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .true_association(allocation_id)
            .await?
            .map(|t| t.network_interface_id))
    }

    /// The (interface, private IP) the address is truly associated with, settled: moto's
    /// interface, and the private IP from the fault proxies' AWS model when they made the
    /// association (moto itself puts every association on the interface's primary IP).
    pub async fn true_association(
        &self,
        allocation_id: &str,
    ) -> anyhow::Result<Option<AddressTarget>> {
        let client = ec2_client(&self.url).await;
        let out = client
            .describe_addresses()
            .allocation_ids(allocation_id)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("DescribeAddresses: {e:?}"))?;
        let Some(address) = out.addresses().first() else {
            return Ok(None);
        };
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        let (Some(association_id), Some(eni)) = (
            non_empty(address.association_id()),
            non_empty(address.network_interface_id()),
        ) else {
            return Ok(None);
        };
        let private_ip =
            super::aws_rules::modelled_association(&self.url, allocation_id, &association_id)
                .map(|a| a.private_ip)
                .or_else(|| non_empty(address.private_ip_address()))
                .unwrap_or_default();
        Ok(Some(AddressTarget {
            network_interface_id: eni,
            private_ip,
        }))
    }
}

/// An EC2 client with static test credentials for `endpoint`.
pub async fn ec2_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let creds =
        aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "feip-testenv");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

fn e<E: std::fmt::Debug>(op: &'static str) -> impl FnOnce(E) -> anyhow::Error {
    move |err| anyhow::anyhow!("{op}: {err:?}")
}

async fn seed(client: &aws_sdk_ec2::Client) -> anyhow::Result<World> {
    let vpc = client
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .map_err(e("CreateVpc"))?;
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .context("no vpc id")?
        .to_string();
    let mut subnets = Vec::new();
    for (az, cidr) in [(AZ_A, "10.0.0.0/24"), (AZ_C, "10.0.1.0/24")] {
        let s = client
            .create_subnet()
            .vpc_id(&vpc_id)
            .availability_zone(az)
            .cidr_block(cidr)
            .send()
            .await
            .map_err(e("CreateSubnet"))?;
        subnets.push(
            s.subnet()
                .and_then(|s| s.subnet_id())
                .context("no subnet id")?
                .to_string(),
        );
    }
    let images = client
        .describe_images()
        .filters(
            Filter::builder()
                .name("architecture")
                .values("x86_64")
                .build(),
        )
        .send()
        .await
        .map_err(e("DescribeImages"))?;
    let image_id = images
        .images()
        .iter()
        .filter_map(|i| i.image_id())
        .next()
        .context("moto offers no image")?
        .to_string();
    let mut large = Vec::new();
    for (az, first, last) in [
        (AZ_A, "10.0.64.0", "10.0.127.255"),
        (AZ_C, "10.0.128.0", "10.0.191.255"),
    ] {
        let s = client
            .create_subnet()
            .vpc_id(&vpc_id)
            .availability_zone(az)
            .cidr_block(format!("{first}/18"))
            .send()
            .await
            .map_err(e("CreateSubnet"))?;
        large.push(Subnet {
            id: s
                .subnet()
                .and_then(|s| s.subnet_id())
                .context("no subnet id")?
                .to_string(),
            first: first.parse()?,
            last: last.parse()?,
        });
    }
    let subnet_c_large = large.pop().context("large subnet c")?;
    let subnet_a_large = large.pop().context("large subnet a")?;
    let subnet_c = subnets.pop().context("subnet c")?;
    let subnet_a = subnets.pop().context("subnet a")?;
    Ok(World {
        vpc_id,
        subnet_a,
        subnet_c,
        subnet_a_large,
        subnet_c_large,
        image_id,
    })
}
