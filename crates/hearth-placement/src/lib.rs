//! The planner: given measured devices and links, a model profile and a policy, decide which
//! device runs which layers, predict the speed, and explain every decision. Pure: no I/O.

pub mod model;

pub use model::ModelProfile;
