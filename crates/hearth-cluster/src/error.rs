//! Typed errors. None of them is fatal to a node: each names what a peer or a caller got wrong
//! so that it can be counted and logged.

use thiserror::Error;

use crate::state::NodeId;

/// Why an ordered event cannot follow a state.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ApplyError {
    #[error("event {seq} is already applied (state is at {last})")]
    AlreadyApplied { seq: u64, last: u64 },
    #[error("gap in the log: expected event {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("event of epoch {epoch} is older than the current epoch {current}")]
    StaleEpoch { epoch: u64, current: u64 },
    #[error("event stamped in epoch {epoch} (current {current}) does not open the reign with coordinator_changed")]
    EpochWithoutCoordinator { epoch: u64, current: u64 },
    #[error("coordinator change announces epoch {announced}, stamped {stamped}, current {current}: it must equal the stamp and exceed the current epoch")]
    BadEpoch {
        stamped: u64,
        announced: u64,
        current: u64,
    },
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    #[error("node {node} has no device `{device}`")]
    UnknownDevice { node: NodeId, device: String },
    #[error("node {node} lists device `{device}` twice")]
    DuplicateDevice { node: NodeId, device: String },
    #[error("node {0} cannot measure a link to itself")]
    SelfLink(NodeId),
    #[error("instance `{0}` does not exist")]
    UnknownInstance(String),
    #[error("node {node} runs no stage of instance {instance}")]
    NotAStage { instance: String, node: NodeId },
    #[error("no wanted model named {0}")]
    UnknownModel(String),
    #[error("instance `{0}` already exists")]
    DuplicateInstance(String),
    #[error("instance `{0}` has no stages")]
    NoStages(String),
    #[error("instance `{instance}` has an empty stage [{first}, {end})")]
    EmptyStage {
        instance: String,
        first: u32,
        end: u32,
    },
    #[error("`{field}` must be finite and within [0, {max}], got {value}")]
    BadFigure {
        field: &'static str,
        value: f64,
        max: f64,
    },
    #[error("`{field}` is {len} bytes long (at most {max})")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("`{field}`: {n} entries (at most {max})")]
    TooMany {
        field: &'static str,
        n: usize,
        max: usize,
    },
}

/// Why bytes from a peer are not a message, or a message cannot be sent.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty message")]
    Empty,
    #[error("unsupported wire version {got} (this node speaks {supported})")]
    Version { got: u64, supported: u64 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message carries {n} entries (at most {max})")]
    TooManyEntries { n: usize, max: usize },
}

/// Why a local or forwarded proposal was not ordered.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ProposeError {
    #[error("`{kind}` events are produced by the coordinator, not proposed")]
    NotProposable { kind: &'static str },
    #[error("node {proposer} may not state `{kind}` facts about {subject}")]
    NotItsFact {
        proposer: NodeId,
        subject: NodeId,
        kind: &'static str,
    },
    #[error("only the coordinator decides `{kind}`")]
    CoordinatorOnly { kind: &'static str },
    #[error("the event does not apply to the current state: {0}")]
    Invalid(#[from] ApplyError),
    #[error("proposal queue is full ({max}); the oldest proposal was dropped")]
    QueueFull { max: usize },
}
