//! Several network namespaces on one machine, joined by a bridge, with shaped links; and a
//! userspace delay relay. Built for multi-node tests of hearth on a kernel without `netem`:
//! bandwidth comes from `tc htb`, loss and partitions from nftables (`numgen random`), and
//! delay from [`relay::Relay`], which forwards TCP or UDP with a fixed one-way delay.
//!
//! Everything a [`Lab`] creates is removed when it is dropped (also while unwinding from a
//! panic), and leftovers of a killed run with the same prefix are removed by the next
//! [`Lab::new`].

mod cmd;
mod error;
mod lab;
pub mod relay;
pub mod shaping;

pub use error::{LabError, RelayError};
pub use lab::Lab;
pub use relay::{Relay, RelayStats};
