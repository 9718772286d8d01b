//! The cluster state machine of hearth: typed events, a pure `apply`, and the protocol by
//! which members elect a coordinator, order one log, catch up and heal partitions.
//!
//! Sans-IO: nothing here opens a socket, starts a thread or reads a clock. The network crate
//! feeds a [`Member`] with peer events, message bytes and timer ticks (with the time), and sends
//! what it returns. See `README.md` of this crate for the rules.

pub mod election;
pub mod error;
pub mod event;
pub mod log;
pub mod member;
pub mod state;
pub mod wire;

pub use error::{ApplyError, ProposeError, WireError};
pub use event::{apply, apply_in_place, Event, LinkMeasurement, SequencedEvent};
pub use member::{Config, Counters, Input, Member, Output, Role};
pub use state::{
    ClusterState, DeviceSummary, DeviceTelemetry, Instance, InstanceStatus, LinkStats, NodeEntry,
    NodeId, Stage, StageStatus, WantedModel,
};
pub use wire::{Heartbeat, OrderedEntry, WireMessage, WIRE_VERSION};
