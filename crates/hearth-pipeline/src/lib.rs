//! Pipeline execution across nodes: an instance's layers are split into stages, each on its own
//! node; hidden states flow stage to stage, the last stage samples, and the sequence's owner
//! (the node whose API took the request) feeds each token back to the first stage.
//!
//! - [`protocol`]: the wire messages, decoded without trust.
//! - [`handler`]: a stage: a thread owning a shard, fed by a bounded queue.
//! - [`session`]: the owner's side of one sequence.
//! - [`generate`]: a whole generation, resumed on a new placement when its stages go away.
//!
//! The transport is an [`Outbox`]: the node sends over its peer layer's data streams, tests
//! over channels.

pub mod error;
pub mod generate;
pub mod handler;
pub mod protocol;
pub mod session;

pub use error::{ProtocolError, SessionError};
pub use generate::{generate, Ending, GenerateError, Outcome, Patience, Request, Routes};
pub use handler::{spawn, Outbox, StageConfig, StageHandle, StageWorker};
pub use protocol::{ActDtype, Header, Hidden, Message, SequenceKey};
pub use session::{Owner, Route, Session, Wait};
