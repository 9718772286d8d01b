//! The planner: given measured devices and links, a model profile and a policy, decide which
//! device runs which layers, predict the speed, and explain every decision. Pure: no I/O.
//!
//! The search is exact: see `README.md` of this crate for the algorithm and why it finds the
//! optimum under the cost model of `../shared/fleets/README.md` ([`cost`]).

pub mod baseline;
pub mod cost;
pub mod error;
pub mod fleet;
pub mod model;
pub mod plan;
pub mod policy;
pub mod profiles;
pub mod search;
pub mod tensor_parallel;

pub use error::{FleetError, PlanError, PolicyError, ProfileError};
pub use fleet::{Backend, Device, Fleet, Link, Precision};
pub use model::ModelProfile;
pub use plan::{plan, Plan, PlannedStage, Unused};
pub use policy::{Objective, Policy};
