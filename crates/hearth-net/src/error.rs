use std::path::PathBuf;

use libp2p::PeerId;

/// Errors returned by the public API. Nothing a peer sends ends up here as a panic: bad input
/// from the network is dropped and counted (see [`crate::Counters`]).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is malformed: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("cluster key is not valid: {0}")]
    BadClusterKey(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("peer {0} is not admitted")]
    NotAdmitted(PeerId),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("broadcast failed: {0}")]
    Broadcast(String),
    #[error("stream to {peer} failed: {reason}")]
    Stream { peer: PeerId, reason: String },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the node has shut down")]
    Shutdown,
}

/// Errors while reading or writing a length-prefixed frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
}
