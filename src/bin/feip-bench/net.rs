//! The benchmark's network: two subnets of its own (a /20 per availability zone, in the seeded
//! VPC) and instances whose primary interface carries as many private IPs as the node may
//! need (one per address that lists it: AWS carries one Elastic IP per private IP).
//!
//! The seeded /24 subnets are too small for ~2,000 private IPs, and moto picks the private
//! IPs of `SecondaryPrivateIpAddressCount` at random in the subnet without checking other
//! interfaces (so they collide at this size, and feip keys its slots by private IP): the
//! secondary IPs are therefore chosen here, distinct, from the upper part of each subnet
//! (moto hands out primaries from the bottom), and assigned by name.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use aws_sdk_ec2::types::InstanceType;

use feip::testenv::{AZ_A, AZ_C};

use crate::world::Env;

/// (availability zone, subnet CIDR, first secondary IP, last secondary IP).
const SUBNETS: [(&str, &str, Ipv4Addr, Ipv4Addr); 2] = [
    (
        AZ_A,
        "10.0.16.0/20",
        Ipv4Addr::new(10, 0, 20, 0),
        Ipv4Addr::new(10, 0, 31, 254),
    ),
    (
        AZ_C,
        "10.0.32.0/20",
        Ipv4Addr::new(10, 0, 36, 0),
        Ipv4Addr::new(10, 0, 47, 254),
    ),
];

pub struct BenchNet {
    /// Subnet id per entry of `SUBNETS`.
    subnets: Vec<String>,
}

/// One launched instance: its primary interface and every private IP on it, primary first.
pub struct Launched {
    pub instance_id: String,
    pub network_interface_id: String,
    pub private_ips: Vec<String>,
}

impl BenchNet {
    /// Creates the two subnets in the seeded VPC (directly in moto: setup).
    pub async fn create(env: &Env) -> anyhow::Result<Self> {
        let mut subnets = Vec::new();
        for (az, cidr, _, _) in SUBNETS {
            let out = env
                .ec2
                .create_subnet()
                .vpc_id(&env.moto.world().vpc_id)
                .availability_zone(az)
                .cidr_block(cidr)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("CreateSubnet {cidr}: {e:?}"))?;
            subnets.push(
                out.subnet()
                    .and_then(|s| s.subnet_id())
                    .context("CreateSubnet returned no id")?
                    .to_string(),
            );
        }
        Ok(Self { subnets })
    }

    fn index(az: &str) -> usize {
        usize::from(az == AZ_C)
    }

    /// The secondary private IPs of each node, given its zone and how many private IPs it
    /// needs in all (the primary is one of them): distinct across the whole world.
    pub fn plan(
        &self,
        nodes: impl Iterator<Item = (&'static str, usize)>,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let mut next: Vec<u32> = SUBNETS.iter().map(|s| u32::from(s.2)).collect();
        let mut out = Vec::new();
        for (az, ips) in nodes {
            let i = Self::index(az);
            let n = u32::try_from(ips.saturating_sub(1))?;
            let last = u32::from(SUBNETS[i].3);
            anyhow::ensure!(
                next[i] + n <= last + 1,
                "subnet {} has no room for {n} more secondary private IPs",
                SUBNETS[i].1
            );
            out.push(
                (next[i]..next[i] + n)
                    .map(|ip| Ipv4Addr::from(ip).to_string())
                    .collect(),
            );
            next[i] += n;
        }
        Ok(out)
    }

    /// Launches one instance in `az` and assigns `secondaries` to its primary interface
    /// (moto honours AssignPrivateIpAddresses by name; DescribeInstances then lists them).
    pub async fn launch(
        &self,
        env: &Env,
        az: &str,
        secondaries: Vec<String>,
    ) -> anyhow::Result<Launched> {
        let out = env
            .ec2
            .run_instances()
            .image_id(&env.moto.world().image_id)
            .instance_type(InstanceType::T3Micro)
            .subnet_id(&self.subnets[Self::index(az)])
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
        let eni_id = eni.network_interface_id().unwrap_or_default().to_string();
        let primary = eni.private_ip_address().unwrap_or_default().to_string();
        if !secondaries.is_empty() {
            env.ec2
                .assign_private_ip_addresses()
                .network_interface_id(&eni_id)
                .set_private_ip_addresses(Some(secondaries.clone()))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("AssignPrivateIpAddresses: {e:?}"))?;
        }
        let mut private_ips = vec![primary];
        private_ips.extend(secondaries);
        let described = env
            .ec2
            .describe_network_interfaces()
            .network_interface_ids(&eni_id)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("DescribeNetworkInterfaces: {e:?}"))?;
        let mut got: Vec<String> = described
            .network_interfaces()
            .first()
            .context("DescribeNetworkInterfaces returned no interface")?
            .private_ip_addresses()
            .iter()
            .filter_map(|p| p.private_ip_address().map(str::to_string))
            .collect();
        let mut want = private_ips.clone();
        got.sort();
        want.sort();
        anyhow::ensure!(
            got == want,
            "{eni_id}: moto lists private IPs {got:?}, wanted {want:?}"
        );
        Ok(Launched {
            instance_id: inst.instance_id().unwrap_or_default().to_string(),
            network_interface_id: eni_id,
            private_ips,
        })
    }
}
