//! hearth's peer layer: discovery (mDNS and listed peers), admission by cluster key,
//! encrypted transport (QUIC/TLS 1.3, TCP/Noise/Yamux), gossip, direct messages, data streams
//! and link measurement. Start a node with [`start`]; talk to it through [`NetHandle`]; read
//! what happens from the [`NetEvent`] receiver.

pub mod admission;
mod behaviour;
mod config;
mod counters;
mod error;
pub mod frame;
mod key;
mod lane;
mod node;
pub mod probe;
mod stream;

use std::sync::Arc;

use futures::AsyncWriteExt;
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

pub use config::{Limits, LinkProbeConfig, NetConfig, MAX_NAME_LEN};
pub use counters::Counters;
pub use error::{FrameError, NetError};
pub use key::{load_or_create_identity, ClusterKey};
pub use lane::{LaneCloser, LaneReceiver, LaneSender};
pub use node::start;
pub use stream::{DataStream, DATA_PROTOCOL};

use counters::bump;
use node::{Command, Shared};

/// What the network layer reports. Delivered on a bounded channel; when the caller falls
/// behind, events are dropped and counted in [`Counters::dropped_events`].
#[derive(Debug)]
pub enum NetEvent {
    /// The node listens on a new address.
    Listening { addr: Multiaddr },
    /// A peer passed admission. Sent again when a known PeerId comes back as a new process
    /// (restart): the new entry replaces the old one.
    PeerAdmitted {
        peer: PeerId,
        name: String,
        addrs: Vec<Multiaddr>,
    },
    /// The last connection to an admitted peer closed.
    PeerLost { peer: PeerId },
    /// A gossip (`direct == false`) or direct message from an admitted peer.
    Message {
        from: PeerId,
        bytes: Vec<u8>,
        direct: bool,
    },
    /// An admitted peer opened a data stream to us.
    Stream { peer: PeerId, stream: DataStream },
    /// An admitted peer opened a lane to us ([`NetHandle::open_lane`]).
    Lane {
        peer: PeerId,
        lane: Box<LaneReceiver>,
    },
    /// A peer was disconnected for failing admission (wrong key, timeout, other cluster).
    Refused {
        peer: PeerId,
        addr: Option<Multiaddr>,
        reason: String,
    },
    /// Periodic link figures for one admitted peer. Throughput and loss are `None` until the
    /// first transfer / loss round has completed.
    LinkMeasured {
        peer: PeerId,
        rtt_p50_ms: f64,
        rtt_p95_ms: f64,
        throughput_mbps: Option<f64>,
        loss: Option<f64>,
    },
}

/// Control of a running node. Cheap to clone; the node stops on [`NetHandle::shutdown`].
#[derive(Clone)]
pub struct NetHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cmd: mpsc::Sender<Command>,
    pub(crate) control: libp2p_stream::Control,
}

impl NetHandle {
    pub fn local_id(&self) -> PeerId {
        self.shared.local
    }

    /// Public id of the cluster this node belongs to (a hash of the key).
    pub fn cluster_id(&self) -> String {
        self.shared.cluster_id.clone()
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared
            .listen
            .read()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// UDP port of the loss-probe echo (members send it authenticated datagrams).
    pub fn probe_port(&self) -> Option<u16> {
        self.shared.probe_port
    }

    /// TCP port lanes are taken on; `None` when lanes are off.
    pub fn lane_port(&self) -> Option<u16> {
        self.shared.lanes.port()
    }

    /// Currently admitted peers and their names.
    pub fn peers(&self) -> Vec<(PeerId, String)> {
        self.shared
            .admitted
            .read()
            .map(|a| a.iter().map(|(p, e)| (*p, e.name.clone())).collect())
            .unwrap_or_default()
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.shared.is_admitted(peer)
    }

    /// Publishes to every admitted member over gossip (signed by this node).
    pub async fn broadcast(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        let limit = self.shared.limits.max_gossip_bytes;
        if bytes.len() > limit {
            return Err(NetError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Broadcast(bytes, tx))
            .await
            .map_err(|_| NetError::Shutdown)?;
        rx.await.map_err(|_| NetError::Shutdown)?
    }

    /// Keeps a connection to the peer at `addr` (which should end in `/p2p/<id>`): dialled with
    /// backoff now and after every loss, like a `--peer`. For addresses learnt from members.
    pub async fn add_peer(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.cmd
            .send(Command::AddPeer(addr))
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Sends one small message directly to an admitted peer over its own short-lived stream.
    pub async fn send(&self, to: PeerId, bytes: Vec<u8>) -> Result<(), NetError> {
        let limit = self.shared.limits.max_message_bytes;
        if bytes.len() > limit {
            return Err(NetError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        if !self.shared.is_admitted(&to) {
            return Err(NetError::NotAdmitted(to));
        }
        let err = |e: String| NetError::Stream {
            peer: to,
            reason: e,
        };
        let mut s = self
            .control
            .clone()
            .open_stream(to, node::MSG_PROTOCOL)
            .await
            .map_err(|e| err(e.to_string()))?;
        frame::write_frame(&mut s, &bytes).await?;
        s.close().await.map_err(|e| err(e.to_string()))?;
        bump(&self.shared.counters.direct_out);
        Ok(())
    }

    /// Opens a framed data stream to an admitted peer, which receives it as
    /// [`NetEvent::Stream`].
    pub async fn open_stream(&self, to: PeerId) -> Result<DataStream, NetError> {
        if !self.shared.is_admitted(&to) {
            return Err(NetError::NotAdmitted(to));
        }
        let s = self
            .control
            .clone()
            .open_stream(to, DATA_PROTOCOL)
            .await
            .map_err(|e| NetError::Stream {
                peer: to,
                reason: e.to_string(),
            })?;
        Ok(DataStream::new(to, s, self.shared.limits.max_frame_bytes))
    }

    /// Opens a lane to an admitted peer: a direct, sealed TCP connection for frames whose
    /// latency matters more than their size. The peer receives it as [`NetEvent::Lane`]. Fails
    /// when the peer takes no lanes or cannot be reached directly; callers fall back to
    /// [`NetHandle::open_stream`].
    pub async fn open_lane(&self, to: PeerId) -> Result<LaneSender, NetError> {
        if !self.shared.lanes.enabled() {
            return Err(NetError::Stream {
                peer: to,
                reason: "lanes are off on this node".into(),
            });
        }
        let ip = self
            .shared
            .admitted
            .read()
            .ok()
            .and_then(|a| a.get(&to).map(|e| e.ip))
            .ok_or(NetError::NotAdmitted(to))?
            .ok_or_else(|| NetError::Stream {
                peer: to,
                reason: "no IP address is known for the peer".into(),
            })?;
        let s = self
            .control
            .clone()
            .open_stream(to, lane::LANE_PROTOCOL)
            .await
            .map_err(|e| NetError::Stream {
                peer: to,
                reason: e.to_string(),
            })?;
        lane::open(to, ip, s, self.shared.limits.max_frame_bytes).await
    }

    /// Stops the node: closes every connection and ends its tasks.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
