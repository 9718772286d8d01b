//! What members say to each other. The network carries these as opaque bytes; the size limit is
//! enforced before any parsing, and the version before the body is interpreted.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::event::{Event, SequencedEvent};
use crate::state::{ClusterState, NodeId};

/// The version this crate speaks. A node refuses any other, so mixed releases fail loudly.
pub const WIRE_VERSION: u64 = 1;
/// Default limit on one encoded message; a snapshot of a large cluster fits well within it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Most ordered entries in one `Ordered` or `Replay` message.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 256;

/// Sent by every member every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    pub name: String,
    pub addresses: Vec<String>,
    /// Changes when the node restarts (see `NodeEntry::incarnation`).
    pub incarnation: u64,
    /// Epoch of the sender's state.
    pub epoch: u64,
    /// Whom the sender believes to be coordinator (its own election result).
    pub coordinator: Option<NodeId>,
    /// The sender is coordinator and has finished catching up: it orders events now.
    pub acting: bool,
    pub last_seq: u64,
    pub state_hash: u64,
}

/// One ordered event with the hash of the state it applies to: a member applies it only onto
/// exactly that state, so an event can never land on a diverged history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderedEntry {
    pub prev_hash: u64,
    pub event: SequencedEvent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireMessage {
    Heartbeat(Heartbeat),
    /// A fact for the coordinator to order.
    Propose {
        event: Event,
    },
    /// Newly ordered events, broadcast by the coordinator.
    Ordered {
        entries: Vec<OrderedEntry>,
    },
    /// "Send me the log from `from_seq`; my state before it hashes to `have_hash`."
    CatchUp {
        from_seq: u64,
        have_hash: u64,
    },
    /// Answer to `CatchUp` when the log still holds the requested range.
    Replay {
        entries: Vec<OrderedEntry>,
    },
    /// Answer to `CatchUp` when replay is impossible (too old, or another history).
    Snapshot {
        state: ClusterState,
        hash: u64,
    },
    /// Answer of a non-coordinator to a `CatchUp` it cannot serve with a replay.
    Diverged {
        last_seq: u64,
    },
    /// Graceful departure.
    Leaving,
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u64,
    msg: &'a WireMessage,
}

#[derive(Deserialize)]
struct Envelope {
    v: u64,
    msg: WireMessage,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

impl WireMessage {
    /// Bytes to send; see [`encode_bounded`](Self::encode_bounded) to enforce a size.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_vec(&EnvelopeRef {
            v: WIRE_VERSION,
            msg: self,
        })
        .unwrap_or_default()
    }

    /// Bytes to send, or `TooLarge` when peers would refuse them.
    pub fn encode_bounded(&self, max: usize) -> Result<Vec<u8>, WireError> {
        let bytes = self.encode();
        if bytes.len() > max {
            return Err(WireError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        Ok(bytes)
    }

    /// Parses bytes from a peer with the default size limit.
    pub fn decode(bytes: &[u8]) -> Result<WireMessage, WireError> {
        Self::decode_bounded(bytes, DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// Parses bytes from a peer, refusing more than `max` bytes before looking at them.
    pub fn decode_bounded(bytes: &[u8], max: usize) -> Result<WireMessage, WireError> {
        if bytes.len() > max {
            return Err(WireError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        if bytes.is_empty() {
            return Err(WireError::Empty);
        }
        let probe: VersionProbe =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if probe.v != WIRE_VERSION {
            return Err(WireError::Version {
                got: probe.v,
                supported: WIRE_VERSION,
            });
        }
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        debug_assert_eq!(env.v, WIRE_VERSION);
        match &env.msg {
            WireMessage::Ordered { entries } | WireMessage::Replay { entries }
                if entries.len() > MAX_ENTRIES_PER_MESSAGE =>
            {
                Err(WireError::TooManyEntries {
                    n: entries.len(),
                    max: MAX_ENTRIES_PER_MESSAGE,
                })
            }
            _ => Ok(env.msg),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            WireMessage::Heartbeat(_) => "heartbeat",
            WireMessage::Propose { .. } => "propose",
            WireMessage::Ordered { .. } => "ordered",
            WireMessage::CatchUp { .. } => "catch_up",
            WireMessage::Replay { .. } => "replay",
            WireMessage::Snapshot { .. } => "snapshot",
            WireMessage::Diverged { .. } => "diverged",
            WireMessage::Leaving => "leaving",
        }
    }
}
