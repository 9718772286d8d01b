//! Typed errors of the pipeline: what a malformed message is, and why a sequence stopped.

use thiserror::Error;

/// Why bytes are not a pipeline message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("pipeline message version {0} is not supported (this node speaks {v})", v = crate::protocol::VERSION)]
    Version(u8),
    #[error("unknown pipeline message tag {0}")]
    UnknownTag(u8),
    #[error("unknown hidden-state dtype {0}")]
    UnknownDtype(u8),
    #[error("pipeline message truncated")]
    Truncated,
    #[error("{n} {what} in one pipeline message (at most {max})")]
    TooMany {
        what: &'static str,
        n: usize,
        max: usize,
    },
    #[error("pipeline message text is not UTF-8")]
    Utf8,
    #[error("invalid pipeline message: {0}")]
    Invalid(&'static str),
    #[error("{0} bytes after the end of a pipeline message")]
    Trailing(usize),
}

/// Why a sequence did not produce its next token.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("a stage failed: {0}")]
    StageFailed(String),
    #[error("no token within {0:?}")]
    TimedOut(std::time::Duration),
    /// The caller's check said the placement is gone (a stage's node left).
    #[error("the instance serving this sequence is gone")]
    InstanceGone,
}
