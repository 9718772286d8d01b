//! The pipeline's messages over the peer layer. Each node keeps one link to each peer it
//! sends to (opened on first use, reopened after a failure), so the messages of a sequence
//! arrive in the order they were sent; messages to itself skip the network.
//!
//! A link is a lane (a direct sealed socket, written by the sending stage's own thread and
//! read by a thread of the receiver's) where the peer takes one, else a data stream over the
//! libp2p connection. Every data stream starts with one frame naming its purpose, so pipeline
//! messages and model file transfers share the peer layer's data protocol.

use hearth_net::{DataStream, LaneCloser, LaneReceiver, LaneSender, NetHandle, PeerId};
use hearth_pipeline::{Message, Outbox, Owner, StageHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// First frame of a data stream that carries pipeline messages.
pub const PIPELINE_OPENING: &[u8] = b"hearth-pipeline/1";

/// Frames waiting for one peer's stream: a few decode steps of every sequence in flight.
const PEER_QUEUE: usize = 64;
/// A lane not set up by then is given up for a data stream.
const LANE_SETUP: Duration = Duration::from_secs(2);

/// How messages reach one peer.
enum Link {
    Lane(Box<LaneSender>),
    Stream(mpsc::Sender<Vec<u8>>),
}

/// The link to one peer, set up by the first sender that needs it; senders to the peer take
/// turns, which keeps each sequence's messages in order.
type LinkSlot = Arc<Mutex<Option<Link>>>;

#[derive(Debug, Default)]
pub struct TransportCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Frames that were not pipeline messages.
    pub malformed: AtomicU64,
    /// Messages for a stage this node does not run, or to a peer that could not be reached.
    pub undeliverable: AtomicU64,
}

pub struct Transport {
    me: String,
    net: NetHandle,
    runtime: tokio::runtime::Handle,
    stages: RwLock<HashMap<String, StageHandle>>,
    owner: OnceLock<Weak<Owner>>,
    peers: Mutex<HashMap<String, LinkSlot>>,
    /// The lane each peer sends on: a newer one from the same peer (it reconnected) ends the
    /// older, so a peer holds at most one reading thread here.
    lanes_in: Mutex<HashMap<PeerId, LaneCloser>>,
    pub counters: TransportCounters,
}

impl Transport {
    pub fn new(me: String, net: NetHandle, runtime: tokio::runtime::Handle) -> Arc<Transport> {
        Arc::new(Transport {
            me,
            net,
            runtime,
            stages: RwLock::new(HashMap::new()),
            owner: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            lanes_in: Mutex::new(HashMap::new()),
            counters: TransportCounters::default(),
        })
    }

    pub fn set_owner(&self, owner: &Arc<Owner>) {
        let _ = self.owner.set(Arc::downgrade(owner));
    }

    /// Routes messages for `instance` to a stage running here.
    pub fn add_stage(&self, instance: &str, handle: StageHandle) {
        if let Ok(mut s) = self.stages.write() {
            s.insert(instance.to_string(), handle);
        }
    }

    /// Stops routing to the stage; its thread ends once queued messages are done.
    pub fn remove_stage(&self, instance: &str) {
        if let Ok(mut s) = self.stages.write() {
            s.remove(instance);
        }
    }

    fn stage(&self, instance: &str) -> Option<StageHandle> {
        self.stages.read().ok()?.get(instance).cloned()
    }

    fn owner(&self) -> Option<Arc<Owner>> {
        self.owner.get().and_then(Weak::upgrade)
    }

    /// Where a message that arrived (or was sent to this node) goes: its owner's session, or
    /// a local stage. Returns the message back when no local stage runs its instance.
    fn route_local(&self, msg: Message) -> Result<Option<(StageHandle, Message)>, Message> {
        match &msg {
            Message::Token { .. } | Message::Failed { .. } => {
                if !self.owner().is_some_and(|o| o.deliver(msg)) {
                    // The session ended (client left, or it moved on): nothing waits for it.
                    self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None)
            }
            Message::Open { header, .. }
            | Message::Forward { header, .. }
            | Message::Close { header } => match self.stage(&header.instance) {
                Some(h) => Ok(Some((h, msg))),
                None => Err(msg),
            },
        }
    }

    /// A message for a stage this node does not run: its owner learns at once.
    fn refuse(&self, msg: &Message) -> Option<(String, Message)> {
        self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
        let header = msg.header()?;
        if matches!(msg, Message::Close { .. }) {
            return None;
        }
        Some((
            header.owner.clone(),
            Message::Failed {
                sequence: header.sequence,
                reason: format!("node {} runs no stage of {}", self.me, header.instance),
            },
        ))
    }

    fn slot(&self, peer: &str) -> Option<LinkSlot> {
        let mut peers = self.peers.lock().ok()?;
        Some(Arc::clone(peers.entry(peer.to_string()).or_default()))
    }

    /// A new link to `peer`: a lane when it takes one, else a data stream.
    fn connect(self: &Arc<Self>, peer: &str) -> Option<Link> {
        let id: PeerId = peer.parse().ok()?;
        let net = self.net.clone();
        let lane = self
            .runtime
            .block_on(async { tokio::time::timeout(LANE_SETUP, net.open_lane(id)).await });
        match lane {
            Ok(Ok(lane)) => {
                tracing::info!(%peer, "pipeline messages take a lane");
                return Some(Link::Lane(Box::new(lane)));
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "no lane; pipeline messages take the peer connection")
            }
            Err(_) => {
                tracing::info!(%peer, "lane setup timed out; pipeline messages take the peer connection")
            }
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let this = Arc::clone(self);
        self.runtime
            .spawn(async move { this.write_to(id, rx).await });
        Some(Link::Stream(tx))
    }

    /// Sends to a peer over its link, setting one up (again, once) when there is none or it
    /// broke. Blocks while the peer is not taking messages: back-pressure.
    fn send_remote(self: &Arc<Self>, to: &str, bytes: Vec<u8>) -> bool {
        let Some(slot) = self.slot(to) else {
            return false;
        };
        let mut link = slot.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = bytes;
        for _ in 0..2 {
            if matches!(&*link, Some(Link::Stream(tx)) if tx.is_closed()) || link.is_none() {
                *link = self.connect(to);
            }
            match link.as_mut() {
                Some(Link::Lane(lane)) => match lane.send(&bytes) {
                    Ok(()) => {
                        self.counters.sent.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %to, error = %e, "pipeline lane broke");
                        *link = None;
                    }
                },
                Some(Link::Stream(tx)) => match tx.blocking_send(bytes) {
                    Ok(()) => return true,
                    Err(mpsc::error::SendError(back)) => {
                        bytes = back;
                        *link = None;
                    }
                },
                None => return false,
            }
        }
        false
    }

    async fn write_to(self: Arc<Self>, peer: PeerId, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut stream = match self.net.open_stream(peer).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot open a pipeline stream");
                return;
            }
        };
        if let Err(e) = stream.send(PIPELINE_OPENING).await {
            tracing::warn!(%peer, error = %e, "pipeline stream refused");
            return;
        }
        while let Some(bytes) = rx.recv().await {
            if let Err(e) = stream.send(&bytes).await {
                tracing::warn!(%peer, error = %e, "pipeline stream broke");
                self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message that arrived from `peer`, counted; `None` (counted as malformed) when it does
    /// not decode, and the link it came on is then closed by the caller.
    fn decode_received(&self, peer: &PeerId, bytes: &[u8]) -> Option<Message> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        match Message::decode(bytes) {
            Ok(msg) => Some(msg),
            Err(e) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "malformed pipeline message; closing its link");
                None
            }
        }
    }

    /// Reads pipeline messages from a stream a peer opened (after its opening frame).
    pub async fn read_from(self: Arc<Self>, mut stream: DataStream) {
        let peer = stream.peer();
        loop {
            let bytes = match stream.recv().await {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "pipeline stream ended");
                    return;
                }
            };
            let Some(msg) = self.decode_received(&peer, &bytes) else {
                return;
            };
            match self.route_local(msg) {
                Ok(None) => {}
                // Waiting here is the back-pressure: the peer's stream stalls with the stage.
                Ok(Some((stage, msg))) => {
                    if !stage.send(msg).await {
                        self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(msg) => {
                    if let Some((to, reply)) = self.refuse(&msg) {
                        let out = TransportOutbox(Arc::clone(&self));
                        tokio::task::spawn_blocking(move || out.send(&to, reply));
                    }
                }
            }
        }
    }

    /// Reads pipeline messages from a lane a peer opened, on a thread of its own: the thread
    /// hands each message straight to its stage.
    pub fn read_lane(self: &Arc<Self>, mut lane: LaneReceiver) {
        let this = Arc::clone(self);
        let peer = lane.peer();
        match lane.closer() {
            Ok(closer) => {
                let mut lanes = self.lanes_in.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(older) = lanes.insert(peer, closer) {
                    older.close();
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot keep a lane; closed");
                return;
            }
        }
        let spawned = std::thread::Builder::new()
            .name("hearth-lane".into())
            .spawn(move || {
                this.pump_lane(&mut lane);
                // Shut down, not only dropped: `lanes_in` holds a copy of the socket, and the
                // sender must see its writes fail rather than fill a buffer nobody reads.
                lane.shutdown();
            });
        if let Err(e) = spawned {
            tracing::warn!(%peer, error = %e, "cannot start a lane reader; lane closed");
            let lanes = self.lanes_in.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(closer) = lanes.get(&peer) {
                closer.close();
            }
        }
    }

    /// Hands every message on `lane` to its stage until the lane ends or carries something bad.
    fn pump_lane(self: &Arc<Self>, lane: &mut LaneReceiver) {
        let peer = lane.peer();
        loop {
            let bytes = match lane.recv() {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(hearth_net::FrameError::Io(e)) => {
                    tracing::debug!(%peer, error = %e, "pipeline lane ended");
                    return;
                }
                Err(e) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "bad frame on a pipeline lane; closing it");
                    return;
                }
            };
            let Some(msg) = self.decode_received(&peer, &bytes) else {
                return;
            };
            self.deliver_here(msg);
        }
    }

    /// Delivers a message meant for this node, from a thread that may block.
    fn deliver_here(self: &Arc<Self>, msg: Message) {
        match self.route_local(msg) {
            Ok(None) => {}
            Ok(Some((stage, msg))) => {
                if !stage.blocking_send(msg) {
                    self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(msg) => {
                if let Some((to, reply)) = self.refuse(&msg) {
                    // The owner is this node or another; either way not a loop: a failure is
                    // never refused again.
                    TransportOutbox(Arc::clone(self)).send(&to, reply);
                }
            }
        }
    }
}

/// The pipeline's view of the transport.
#[derive(Clone)]
pub struct TransportOutbox(pub Arc<Transport>);

impl Outbox for TransportOutbox {
    fn send(&self, to: &str, msg: Message) {
        let this = &self.0;
        if to == this.me {
            this.deliver_here(msg);
        } else if !this.send_remote(to, msg.encode()) {
            this.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
        }
    }
}
