//! Table tests of the controller's pure steps. The characterization tables (status,
//! observe, holder_lease, triggers, apply) were written against the behaviour before the
//! controller was restructured and pass unchanged after it; candidates, plan and conditions
//! cover the steps the restructuring made pure.

mod apply;
mod candidates;
mod conditions;
mod events;
mod fixtures;
mod holder_lease;
mod observe;
mod plan;
mod slots;
mod status;
mod triggers;
