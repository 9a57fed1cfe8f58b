//! Small builders of FloatingElasticIP, Node, Lease and decision values for the tables.
