//! Model files between hearth peers.
//!
//! A node that has a file serves it with [`serve`] from a [`ModelStore`]; a node that lacks it
//! asks a peer for the [`Manifest`] ([`request_manifest`]) and runs a [`Fetch`]: chunks are
//! requested in a pipelined window, checked against the manifest's per-chunk SHA-256 as they
//! arrive, written at their offsets into `<dest>.part` and recorded in a marker, so an
//! interrupted fetch resumes and a corrupted chunk is fetched again (from the next source when
//! there are several). A fetch may ask for byte ranges only; [`fetch_layers`] uses that to fetch
//! just the tensors a shard of a GGUF model reads.
//!
//! The protocol runs over any [`FrameChannel`]: hearth-net's `DataStream`, or the in-process
//! [`memory_pair`]. Wire format and limits: `README.md`.

mod channel;
mod handler;
mod layers;
pub mod manifest;
pub mod protocol;
mod store;

pub use channel::{memory_pair, ChannelError, FrameChannel, MemoryChannel, Source};
pub use handler::{
    request_manifest, serve, Fetch, FetchConfig, FetchError, FetchEvent, FetchReport, Progress,
    ServeError, ServeStats, SourceError,
};
pub use layers::{fetch_header, fetch_layers, shard_ranges, LayerError, LayerFetch};
pub use manifest::{Digest, Manifest, ManifestError, Origin, DEFAULT_CHUNK_SIZE};
pub use protocol::{ErrorCode, ModelRef, ProtocolError};
pub use store::{
    is_complete, local_copy, marker_path, part_path, present_chunks, ChunkSet, LocalCopy,
    ModelStore, StoreError,
};

/// Suggested content of the opening frame a node sends on a data stream it hands to this
/// protocol, when data streams carry more than one protocol. The protocol itself never reads
/// or sends it.
pub const STREAM_TAG: &[u8] = b"/hearth/transfer/1";
