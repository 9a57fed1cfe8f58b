//! Table tests of the controller's pure steps, written against the behaviour before the
//! controller was restructured: they prove each restructuring step changes nothing.

mod apply;
mod candidates;
mod fixtures;
mod holder_lease;
mod observe;
mod plan;
mod status;
mod triggers;
