//! The real-parts test environment shared by integration tests, benchmarks and the demo:
//! a kube-apiserver + etcd control plane, moto behind a fault-injecting proxy, and simulated
//! nodes. Built only with the `testenv` feature; none of it ships in the controller image.

pub mod aws_rules;
pub mod bin_support;
pub mod control_plane;
pub mod controller;
pub mod ec2;
pub mod fault_proxy;
pub mod node_sim;
pub mod process;
pub mod scenario;
pub mod tcp_proxy;
pub mod tools;

pub use aws_rules::{Association, DEFAULT_CONSISTENCY_LAG, Displacement};
pub use control_plane::ControlPlane;
pub use controller::{ControllerOptions, TestController};
pub use ec2::{AZ_A, AZ_C, AddressTarget, ElasticIp, Instance, Moto, REGION, Subnet, ec2_client};
pub use fault_proxy::{Fault, FaultProxy, FaultRule, RequestRecord};
pub use node_sim::{NodeOptions, SimNode};
pub use process::wait_for;
pub use tcp_proxy::TcpProxy;
pub use tools::{Tools, tools};
