//! Integration tests of the cluster state machine: `apply` on plain data, the member protocol
//! in a deterministic simulated network (formation, crashes, coordinator failover, partitions,
//! restarts), properties over many seeds, and hostile wire bytes.

mod apply;
mod faults;
mod properties;
mod replay;
mod sim;
mod wire;
