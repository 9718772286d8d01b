use std::io;
use std::net::SocketAddr;

/// What went wrong while building, shaping or tearing down a [`crate::Lab`].
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A tool (`ip`, `tc`, `nft`) ran and failed; its command line and stderr are kept so a
    /// failing test says exactly what the kernel refused.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A tool could not be started at all (not installed, not on `PATH`).
    #[error("could not run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    /// This machine cannot run labs; the reason is meant to be printed by a skipping test.
    #[error("network labs are not available here: {0}")]
    Unavailable(String),
    /// The prefix would make interface names longer than the kernel's 15 characters, or
    /// contains characters that are not safe in interface and nftables names.
    #[error(
        "invalid lab prefix {0:?}: use 1 to 10 characters of [a-z0-9-], starting with a letter"
    )]
    InvalidPrefix(String),
    /// Namespaces are numbered `1..=n`, with at most 250 so addresses fit one /24.
    #[error("namespace count {0} is outside 1..=250")]
    InvalidCount(usize),
    #[error("node {index} is not in this lab (nodes are 1..={n})")]
    NoSuchNode { index: usize, n: usize },
    #[error("a link needs two different nodes, got {0} twice")]
    SameNode(usize),
    #[error("drop percentage {0} is above 100")]
    InvalidPercent(u8),
    #[error("rate must be at least 1 Mbit/s")]
    InvalidRate,
    #[error("node {0} is in both sides of the partition")]
    BothSides(usize),
    /// Another live process owns a lab with this prefix; removing its namespaces would break
    /// its test, so `new` refuses instead.
    #[error("lab prefix {prefix:?} is in use by live process {pid}")]
    InUse { prefix: String, pid: u32 },
    /// Every candidate `10.x.0.0/24` is already routed on this machine.
    #[error("no free 10.x.0.0/24 subnet for the lab bridge")]
    NoFreeSubnet,
    /// Entering a namespace from a thread failed.
    #[error("could not enter namespace {ns}: {source}")]
    Setns { ns: String, source: io::Error },
    #[error("could not start a thread: {0}")]
    Thread(io::Error),
}

/// What went wrong while starting a [`crate::Relay`].
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("could not bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("relay socket setup failed: {0}")]
    Io(#[from] io::Error),
}
