//! Table tests of the controller's pure steps, written against the behaviour before the
//! controller was restructured: they prove each restructuring step changes nothing.

mod apply;
mod conditions;
mod fixtures;
mod holder_lease;
mod observe;
mod status;
mod triggers;
