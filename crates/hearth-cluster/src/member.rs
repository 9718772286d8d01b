//! One node's side of the cluster protocol, as a sans-IO state machine: the network and a timer
//! feed [`Input`]s with the current time, and the machine answers with [`Output`]s to send.
//!
//! Roles (see the crate README for the diagram):
//! - `Starting`: listens for a grace period so that a node joining a formed cluster does not
//!   first crown itself.
//! - `Follower`: someone else is the smallest live id; apply what it orders, catch up on gaps.
//! - `Candidate`: this node is the smallest live id; fetch the events any live peer has that it
//!   lacks, so the log continues without gaps, then take over.
//! - `Coordinator`: order events, admit live peers, time out silent members.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::election::Peers;
use crate::error::{ProposeError, WireError};
use crate::event::{apply_in_place, Event, SequencedEvent};
use crate::log::{ReplayAnswer, ReplayLog};
use crate::state::{ClusterState, DeviceSummary, NodeId};
use crate::wire::{
    Heartbeat, OrderedEntry, WireMessage, DEFAULT_MAX_MESSAGE_BYTES, MAX_ENTRIES_PER_MESSAGE,
};

/// Settings of one member. Times are in milliseconds of whatever clock the caller passes.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    pub name: String,
    pub addresses: Vec<String>,
    /// New at every start of the node (start time, random number): tells a restart apart.
    pub incarnation: u64,
    pub heartbeat_ms: u64,
    /// Silence after which a peer no longer counts for the election, and after which the
    /// coordinator removes it from the state.
    pub timeout_ms: u64,
    /// How long a starting node only listens before it may elect itself.
    pub startup_grace_ms: u64,
    /// How long a candidate waits for catch-up answers before it takes over with what it has.
    pub catch_up_patience_ms: u64,
    /// Events kept for replay to peers that fell behind.
    pub replay_capacity: usize,
    /// Proposals held while no coordinator is acting.
    pub proposal_queue: usize,
    pub max_message_bytes: usize,
    pub max_peers: usize,
    /// Outputs one `handle` call may return.
    pub max_outputs: usize,
}

impl Config {
    pub fn new(id: NodeId, name: impl Into<String>, incarnation: u64) -> Self {
        Config {
            id,
            name: name.into(),
            addresses: Vec::new(),
            incarnation,
            heartbeat_ms: 500,
            timeout_ms: 3000,
            startup_grace_ms: 1000,
            catch_up_patience_ms: 1500,
            replay_capacity: 1024,
            proposal_queue: 256,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_peers: 256,
            max_outputs: 1024,
        }
    }
}

/// What the network or the local node tells the member.
#[derive(Debug, Clone)]
pub enum Input {
    /// The network connected to an admitted peer.
    PeerUp {
        id: NodeId,
        name: String,
        addresses: Vec<String>,
    },
    /// The network lost its connection to a peer.
    PeerDown(NodeId),
    /// Raw bytes from an authenticated peer (decoded and size-checked here).
    Bytes { from: NodeId, bytes: Vec<u8> },
    /// An already decoded message from an authenticated peer.
    Message { from: NodeId, msg: WireMessage },
    /// Timer: call at least every `heartbeat_ms / 2`.
    Tick,
    /// A fact about this node to publish (devices, telemetry, a link measurement, refusal
    /// counters, the status of an instance stage; on the coordinator also placement decisions).
    Propose(Event),
    /// This node is shutting down gracefully.
    Leave,
}

/// What the member asks the network or the local node to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// To every peer (gossip).
    Broadcast(WireMessage),
    /// To one peer (direct).
    Send { to: NodeId, msg: WireMessage },
    /// `state()` changed: events were applied or a snapshot adopted.
    StateChanged,
    /// A local proposal was not accepted.
    Refused(ProposeError),
}

/// The member's role in the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Starting {
        until_ms: u64,
    },
    Follower,
    Candidate {
        since_ms: u64,
        /// Peers that answered that their history is not ours: not a catch-up source.
        excluded: BTreeSet<NodeId>,
    },
    Coordinator {
        since_ms: u64,
    },
}

/// Things dropped, refused or ignored, for logs and `hearth cluster status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub malformed_messages: u64,
    /// `Ordered` or `Snapshot` from a node that is not our coordinator.
    pub ignored_ordering: u64,
    /// Heartbeats whose node id differs from the authenticated sender.
    pub spoofed: u64,
    pub apply_errors: u64,
    pub proposals_refused: u64,
    /// Proposals dropped because the queue was full or no coordinator took them.
    pub proposals_dropped: u64,
    pub catch_ups_requested: u64,
    pub replays_sent: u64,
    pub snapshots_sent: u64,
    pub snapshots_adopted: u64,
    pub bad_snapshots: u64,
    /// Messages not sent because they would exceed `max_message_bytes`.
    pub oversized_outbound: u64,
    /// Outputs dropped because one call produced more than `max_outputs`.
    pub outputs_dropped: u64,
    /// Peers ignored because the peer table was full.
    pub peers_refused: u64,
}

/// Facts this node stated about itself that must survive a snapshot or a re-admission.
#[derive(Debug, Clone, Default)]
struct OwnFacts {
    devices: Option<Vec<DeviceSummary>>,
    refusals: Option<BTreeMap<String, u64>>,
    last_reasserted_ms: u64,
}

pub struct Member {
    cfg: Config,
    state: ClusterState,
    hash: u64,
    log: ReplayLog,
    peers: Peers,
    role: Role,
    pending: VecDeque<Event>,
    own: OwnFacts,
    counters: Counters,
    next_heartbeat_ms: u64,
    last_catch_up_ms: Option<u64>,
}

/// Outputs of one call, bounded.
struct Out {
    max: usize,
    items: Vec<Output>,
    dropped: u64,
    changed: bool,
}

impl Out {
    fn push(&mut self, o: Output) {
        if self.items.len() < self.max {
            self.items.push(o);
        } else {
            self.dropped += 1;
        }
    }
}

impl Member {
    pub fn new(cfg: Config, now_ms: u64) -> Self {
        let state = ClusterState::default();
        let hash = state.state_hash();
        Member {
            log: ReplayLog::new(cfg.replay_capacity),
            peers: Peers::new(cfg.max_peers),
            role: Role::Starting {
                until_ms: now_ms.saturating_add(cfg.startup_grace_ms),
            },
            pending: VecDeque::new(),
            own: OwnFacts::default(),
            counters: Counters::default(),
            next_heartbeat_ms: now_ms,
            last_catch_up_ms: None,
            state,
            hash,
            cfg,
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.cfg.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// [`ClusterState::state_hash`] of `state()`, kept up to date.
    pub fn state_hash(&self) -> u64 {
        self.hash
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The recently applied events (at most `replay_capacity`), oldest first.
    pub fn log(&self) -> impl Iterator<Item = &OrderedEntry> {
        self.log.entries()
    }

    /// Whom this node currently follows (itself when it coordinates or is about to).
    pub fn coordinator(&self, now_ms: u64) -> NodeId {
        self.peers.elect(&self.cfg.id, now_ms, self.cfg.timeout_ms)
    }

    /// Whether this node orders events now.
    pub fn is_acting_coordinator(&self) -> bool {
        matches!(self.role, Role::Coordinator { .. })
    }

    /// Ids of the peers heard from within the timeout.
    pub fn live_peers(&self, now_ms: u64) -> Vec<NodeId> {
        self.peers
            .live(now_ms, self.cfg.timeout_ms)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Peers heard from within the timeout with the addresses they announce: what the network
    /// should stay connected to. Covers peers the state does not list yet, such as the
    /// coordinator of a cluster this node has not caught up with.
    pub fn live_peer_addresses(&self, now_ms: u64) -> Vec<(NodeId, Vec<String>)> {
        self.peers
            .live(now_ms, self.cfg.timeout_ms)
            .map(|(id, p)| (id.clone(), p.addresses.clone()))
            .collect()
    }

    /// Encodes a message under this member's size limit.
    pub fn encode(&self, msg: &WireMessage) -> Result<Vec<u8>, WireError> {
        msg.encode_bounded(self.cfg.max_message_bytes)
    }

    /// Feeds one input; returns what to send. Never panics on peer input.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Output> {
        let mut out = Out {
            max: self.cfg.max_outputs,
            items: Vec::new(),
            dropped: 0,
            changed: false,
        };
        match input {
            Input::PeerUp {
                id,
                name,
                addresses,
            } => {
                if id != self.cfg.id {
                    self.peer_up(id, name, addresses, now_ms, &mut out);
                }
            }
            Input::PeerDown(id) => {
                if let Some(p) = self.peers.entry(&id) {
                    p.down = true;
                }
            }
            Input::Bytes { from, bytes } => {
                match WireMessage::decode_bounded(&bytes, self.cfg.max_message_bytes) {
                    Ok(msg) => self.on_message(from, msg, now_ms, &mut out),
                    Err(_) => self.counters.malformed_messages += 1,
                }
            }
            Input::Message { from, msg } => self.on_message(from, msg, now_ms, &mut out),
            Input::Tick => {}
            Input::Propose(event) => self.propose_local(event, now_ms, &mut out),
            Input::Leave => out.push(Output::Broadcast(WireMessage::Leaving)),
        }
        self.step(now_ms, &mut out);
        if out.changed {
            out.push(Output::StateChanged);
        }
        self.counters.outputs_dropped += out.dropped;
        out.items
    }

    fn peer_up(
        &mut self,
        id: NodeId,
        name: String,
        addresses: Vec<String>,
        now_ms: u64,
        out: &mut Out,
    ) {
        if !self.peers.heard(&id, now_ms) {
            self.counters.peers_refused += 1;
            return;
        }
        if let Some(p) = self.peers.entry(&id) {
            p.name = name;
            p.addresses = addresses;
        }
        // Introduce ourselves at once rather than at the next heartbeat: formation is faster.
        out.push(Output::Send {
            to: id,
            msg: WireMessage::Heartbeat(self.heartbeat(now_ms)),
        });
    }

    fn heartbeat(&self, now_ms: u64) -> Heartbeat {
        let coordinator = match self.role {
            Role::Starting { .. } => None,
            _ => Some(self.coordinator(now_ms)),
        };
        Heartbeat {
            node: self.cfg.id.clone(),
            name: self.cfg.name.clone(),
            addresses: self.cfg.addresses.clone(),
            incarnation: self.cfg.incarnation,
            epoch: self.state.epoch,
            coordinator,
            acting: self.is_acting_coordinator(),
            last_seq: self.state.last_seq,
            state_hash: self.hash,
        }
    }

    // ---- messages -------------------------------------------------------------------------

    fn on_message(&mut self, from: NodeId, msg: WireMessage, now_ms: u64, out: &mut Out) {
        if from == self.cfg.id {
            return;
        }
        if !self.peers.heard(&from, now_ms) {
            self.counters.peers_refused += 1;
            return;
        }
        match msg {
            WireMessage::Heartbeat(hb) => {
                if hb.node != from {
                    self.counters.spoofed += 1;
                    return;
                }
                if let Some(p) = self.peers.entry(&from) {
                    p.name = hb.name.clone();
                    p.addresses = hb.addresses.clone();
                    p.heartbeat = Some(hb);
                }
            }
            WireMessage::Propose { event } => self.on_proposal(&from, event, now_ms, out),
            WireMessage::Ordered { entries } => {
                if !self.follows(&from, now_ms) {
                    self.counters.ignored_ordering += 1;
                    return;
                }
                self.apply_entries(&from, entries, now_ms, out);
            }
            WireMessage::Replay { entries } => {
                // A replay is checked entry by entry against our own hash chain, so it is safe
                // from whoever we asked: the leader, or any peer while we are candidate.
                self.apply_entries(&from, entries, now_ms, out);
            }
            WireMessage::CatchUp {
                from_seq,
                have_hash,
            } => self.on_catch_up(&from, from_seq, have_hash, out),
            WireMessage::Snapshot { state, hash } => {
                if !self.follows(&from, now_ms) {
                    self.counters.ignored_ordering += 1;
                    return;
                }
                self.adopt_snapshot(state, hash, out);
            }
            WireMessage::Diverged { .. } => {
                if let Role::Candidate { excluded, .. } = &mut self.role {
                    excluded.insert(from);
                }
            }
            WireMessage::Leaving => {
                if let Some(p) = self.peers.entry(&from) {
                    p.left = true;
                }
                if self.is_acting_coordinator() && self.state.is_member(&from) {
                    self.order(Event::NodeLeft { node: from }, now_ms, out)
                        .unwrap_or_else(|_| self.counters.apply_errors += 1);
                }
            }
        }
    }

    /// Whether `from` is the coordinator this node follows.
    fn follows(&self, from: &NodeId, now_ms: u64) -> bool {
        matches!(self.role, Role::Follower) && self.coordinator(now_ms) == *from
    }

    fn apply_entries(
        &mut self,
        from: &NodeId,
        entries: Vec<OrderedEntry>,
        now_ms: u64,
        out: &mut Out,
    ) {
        for entry in entries {
            let seq = entry.event.seq;
            if seq <= self.state.last_seq {
                continue; // Already have it (a broadcast and a replay crossed).
            }
            if seq > self.state.last_seq + 1 || entry.prev_hash != self.hash {
                // A gap, or an event of another history: ask for the missing part (or, if the
                // histories differ, the coordinator's snapshot).
                if matches!(self.role, Role::Follower) {
                    self.request_catch_up(from.clone(), now_ms, out, true);
                }
                return;
            }
            if apply_in_place(&mut self.state, &entry.event).is_err() {
                self.counters.apply_errors += 1;
                return;
            }
            self.hash = self.state.state_hash();
            self.log.push(entry);
            out.changed = true;
        }
    }

    fn request_catch_up(&mut self, to: NodeId, now_ms: u64, out: &mut Out, urgent: bool) {
        // One request per heartbeat interval: answers are in flight meanwhile.
        if let Some(t) = self.last_catch_up_ms {
            let wait = if urgent {
                self.cfg.heartbeat_ms / 2
            } else {
                self.cfg.heartbeat_ms
            };
            if now_ms.saturating_sub(t) < wait {
                return;
            }
        }
        self.last_catch_up_ms = Some(now_ms);
        self.counters.catch_ups_requested += 1;
        out.push(Output::Send {
            to,
            msg: WireMessage::CatchUp {
                from_seq: self.state.last_seq + 1,
                have_hash: self.hash,
            },
        });
    }

    fn on_catch_up(&mut self, from: &NodeId, from_seq: u64, have_hash: u64, out: &mut Out) {
        let answer = self.log.answer(
            from_seq,
            have_hash,
            self.state.last_seq,
            self.hash,
            MAX_ENTRIES_PER_MESSAGE,
        );
        match answer {
            ReplayAnswer::UpToDate => {}
            ReplayAnswer::Entries(mut entries) => {
                // Halve until it fits: a few large events must not make the replay unsendable.
                loop {
                    let msg = WireMessage::Replay { entries };
                    if self.encode(&msg).is_ok() {
                        self.counters.replays_sent += 1;
                        out.push(Output::Send {
                            to: from.clone(),
                            msg,
                        });
                        return;
                    }
                    let WireMessage::Replay { entries: mut e } = msg else {
                        return;
                    };
                    if e.len() <= 1 {
                        self.counters.oversized_outbound += 1;
                        return;
                    }
                    e.truncate(e.len() / 2);
                    entries = e;
                }
            }
            ReplayAnswer::NotReplayable => {
                let msg = if self.is_acting_coordinator() {
                    WireMessage::Snapshot {
                        state: self.state.clone(),
                        hash: self.hash,
                    }
                } else {
                    WireMessage::Diverged {
                        last_seq: self.state.last_seq,
                    }
                };
                if self.encode(&msg).is_err() {
                    self.counters.oversized_outbound += 1;
                    return;
                }
                if matches!(msg, WireMessage::Snapshot { .. }) {
                    self.counters.snapshots_sent += 1;
                }
                out.push(Output::Send {
                    to: from.clone(),
                    msg,
                });
            }
        }
    }

    fn adopt_snapshot(&mut self, state: ClusterState, hash: u64, out: &mut Out) {
        if state.state_hash() != hash {
            self.counters.bad_snapshots += 1;
            return;
        }
        if hash == self.hash && state.last_seq == self.state.last_seq {
            return;
        }
        self.state = state;
        self.hash = hash;
        self.log.clear();
        self.counters.snapshots_adopted += 1;
        // Our own facts may be missing from the winner's history: say them again soon.
        self.own.last_reasserted_ms = 0;
        out.changed = true;
    }

    // ---- proposals ------------------------------------------------------------------------

    /// Who may propose what. `proposer` is authenticated by the network.
    fn authorize(&self, proposer: &NodeId, event: &Event) -> Result<(), ProposeError> {
        match event {
            Event::NodeJoined { .. }
            | Event::NodeLeft { .. }
            | Event::NodeTimedOut { .. }
            | Event::CoordinatorChanged { .. } => {
                Err(ProposeError::NotProposable { kind: event.kind() })
            }
            Event::InstancePlaced { .. } | Event::InstanceRemoved { .. } => {
                if *proposer == self.cfg.id && self.is_acting_coordinator() {
                    Ok(())
                } else {
                    Err(ProposeError::CoordinatorOnly { kind: event.kind() })
                }
            }
            Event::InstanceStatus { id, .. } => {
                // The coordinator decides; a stage's node reports its own loading and failure.
                let runs_stage = self
                    .state
                    .instances
                    .get(id)
                    .is_some_and(|i| i.stages.iter().any(|s| s.node == *proposer));
                if *proposer == self.cfg.id || runs_stage {
                    Ok(())
                } else {
                    Err(ProposeError::NotItsFact {
                        proposer: proposer.clone(),
                        subject: proposer.clone(),
                        kind: event.kind(),
                    })
                }
            }
            _ => match event.subject() {
                Some(s) if s == proposer => Ok(()),
                Some(s) => Err(ProposeError::NotItsFact {
                    proposer: proposer.clone(),
                    subject: s.clone(),
                    kind: event.kind(),
                }),
                None => Err(ProposeError::NotProposable { kind: event.kind() }),
            },
        }
    }

    fn propose_local(&mut self, event: Event, now_ms: u64, out: &mut Out) {
        let me = self.cfg.id.clone();
        if let Err(e) = self.authorize(&me, &event) {
            self.counters.proposals_refused += 1;
            out.push(Output::Refused(e));
            return;
        }
        match &event {
            Event::DeviceInfo { devices, .. } => self.own.devices = Some(devices.clone()),
            Event::RefusalCounts { counts, .. } => self.own.refusals = Some(counts.clone()),
            _ => {}
        }
        if self.is_acting_coordinator() {
            if let Err(e) = self.order(event, now_ms, out) {
                self.counters.proposals_refused += 1;
                out.push(Output::Refused(ProposeError::Invalid(e)));
            }
            return;
        }
        if self.pending.len() >= self.cfg.proposal_queue {
            self.pending.pop_front();
            self.counters.proposals_dropped += 1;
            out.push(Output::Refused(ProposeError::QueueFull {
                max: self.cfg.proposal_queue,
            }));
        }
        self.pending.push_back(event);
    }

    fn on_proposal(&mut self, from: &NodeId, event: Event, now_ms: u64, out: &mut Out) {
        if !self.is_acting_coordinator() {
            // The proposer's view of the election is behind ours; its own re-assertion or
            // the next periodic report will reach the right node.
            self.counters.proposals_dropped += 1;
            return;
        }
        if !self.state.is_member(from) {
            self.counters.proposals_refused += 1;
            return;
        }
        if self.authorize(from, &event).is_err() || self.order(event, now_ms, out).is_err() {
            self.counters.proposals_refused += 1;
        }
    }

    /// Stamps, applies and broadcasts one event (coordinator only).
    fn order(
        &mut self,
        event: Event,
        now_ms: u64,
        out: &mut Out,
    ) -> Result<(), crate::error::ApplyError> {
        let epoch = match &event {
            Event::CoordinatorChanged { epoch, .. } => *epoch,
            _ => self.state.epoch,
        };
        let stamped = SequencedEvent {
            epoch,
            seq: self.state.last_seq + 1,
            at_ms: now_ms,
            event,
        };
        apply_in_place(&mut self.state, &stamped)?;
        let entry = OrderedEntry {
            prev_hash: self.hash,
            event: stamped,
        };
        self.hash = self.state.state_hash();
        self.log.push(entry.clone());
        out.changed = true;
        out.push(Output::Broadcast(WireMessage::Ordered {
            entries: vec![entry],
        }));
        Ok(())
    }

    // ---- the periodic step ----------------------------------------------------------------

    fn step(&mut self, now_ms: u64, out: &mut Out) {
        self.peers
            .forget_silent(now_ms, self.cfg.timeout_ms.saturating_mul(4));
        let starting = matches!(self.role, Role::Starting { until_ms } if now_ms < until_ms);
        if !starting {
            let leader = self.coordinator(now_ms);
            if leader == self.cfg.id {
                if !matches!(self.role, Role::Candidate { .. } | Role::Coordinator { .. }) {
                    self.role = Role::Candidate {
                        since_ms: now_ms,
                        excluded: BTreeSet::new(),
                    };
                }
                if matches!(self.role, Role::Candidate { .. }) {
                    self.try_take_over(now_ms, out);
                }
                if matches!(self.role, Role::Coordinator { .. }) {
                    self.coordinate(now_ms, out);
                }
            } else {
                self.role = Role::Follower;
                self.follow(&leader, now_ms, out);
            }
            self.reassert_own_facts(now_ms);
            self.flush_pending(&leader, now_ms, out);
        }
        if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms.saturating_add(self.cfg.heartbeat_ms);
            out.push(Output::Broadcast(WireMessage::Heartbeat(
                self.heartbeat(now_ms),
            )));
        }
    }

    fn try_take_over(&mut self, now_ms: u64, out: &mut Out) {
        let Role::Candidate { since_ms, excluded } = &self.role else {
            return;
        };
        let since_ms = *since_ms;
        // The peer that holds the most events of (possibly) our history: catch up from it
        // first, so that the new reign continues the log instead of forking it.
        let source = self
            .peers
            .live(now_ms, self.cfg.timeout_ms)
            .filter(|(id, _)| !excluded.contains(*id))
            .filter_map(|(id, p)| p.heartbeat.as_ref().map(|hb| (hb.last_seq, id.clone())))
            .filter(|(seq, _)| *seq > self.state.last_seq)
            .max();
        let patient = now_ms.saturating_sub(since_ms) < self.cfg.catch_up_patience_ms;
        if let (Some((_, peer)), true) = (source, patient) {
            self.request_catch_up(peer, now_ms, out, false);
            return;
        }
        let epoch = self
            .peers
            .live(now_ms, self.cfg.timeout_ms)
            .filter_map(|(_, p)| p.heartbeat.as_ref().map(|hb| hb.epoch))
            .chain(std::iter::once(self.state.epoch))
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let me = self.cfg.id.clone();
        if self
            .order(
                Event::CoordinatorChanged {
                    coordinator: me,
                    epoch,
                },
                now_ms,
                out,
            )
            .is_ok()
        {
            self.role = Role::Coordinator { since_ms: now_ms };
        } else {
            self.counters.apply_errors += 1;
        }
    }

    /// Admit the live, time out the silent.
    fn coordinate(&mut self, now_ms: u64, out: &mut Out) {
        let Role::Coordinator { since_ms } = self.role else {
            return;
        };
        let me = self.cfg.id.clone();
        let mut events = Vec::new();
        let my_entry = self.state.members.get(&me);
        if my_entry.is_none_or(|m| m.incarnation != self.cfg.incarnation) {
            events.push(Event::NodeJoined {
                node: me.clone(),
                name: self.cfg.name.clone(),
                addresses: self.cfg.addresses.clone(),
                incarnation: self.cfg.incarnation,
            });
        }
        for (id, p) in self.peers.live(now_ms, self.cfg.timeout_ms) {
            let Some(hb) = &p.heartbeat else { continue };
            let known = self.state.members.get(id);
            if known.is_none_or(|m| m.incarnation != hb.incarnation) {
                events.push(Event::NodeJoined {
                    node: id.clone(),
                    name: hb.name.clone(),
                    addresses: hb.addresses.clone(),
                    incarnation: hb.incarnation,
                });
            }
        }
        for id in self.state.members.keys() {
            if *id == me {
                continue;
            }
            let peer = self.peers.get(id);
            if peer.is_some_and(|p| p.left) {
                events.push(Event::NodeLeft { node: id.clone() });
                continue;
            }
            // A member we have not heard since we took over gets a full timeout from then.
            let heard = peer
                .and_then(|p| p.last_heard_ms)
                .unwrap_or(0)
                .max(since_ms);
            if now_ms.saturating_sub(heard) > self.cfg.timeout_ms {
                events.push(Event::NodeTimedOut { node: id.clone() });
            }
        }
        for e in events {
            if self.order(e, now_ms, out).is_err() {
                self.counters.apply_errors += 1;
            }
        }
    }

    fn follow(&mut self, leader: &NodeId, now_ms: u64, out: &mut Out) {
        let Some(hb) = self.peers.get(leader).and_then(|p| p.heartbeat.as_ref()) else {
            return;
        };
        if !hb.acting {
            return;
        }
        let in_sync = hb.last_seq == self.state.last_seq && hb.state_hash == self.hash;
        // Heartbeats lag behind broadcasts, so "behind" is only acted on once per interval;
        // a member ahead of its coordinator or with another hash holds another history.
        if !in_sync {
            self.request_catch_up(leader.clone(), now_ms, out, false);
        }
    }

    fn reassert_own_facts(&mut self, now_ms: u64) {
        let me = &self.cfg.id;
        let Some(entry) = self.state.members.get(me) else {
            return;
        };
        let due = self.own.last_reasserted_ms == 0
            || now_ms.saturating_sub(self.own.last_reasserted_ms) >= 2 * self.cfg.heartbeat_ms;
        if !due {
            return;
        }
        let mut again = Vec::new();
        if let Some(d) = &self.own.devices {
            if entry.devices != *d {
                again.push(Event::DeviceInfo {
                    node: me.clone(),
                    devices: d.clone(),
                });
            }
        }
        if let Some(c) = &self.own.refusals {
            if self.state.refusals.get(me) != Some(c) {
                again.push(Event::RefusalCounts {
                    node: me.clone(),
                    counts: c.clone(),
                });
            }
        }
        if again.is_empty() {
            return;
        }
        self.own.last_reasserted_ms = now_ms.max(1);
        for e in again {
            if !self.pending.contains(&e) && self.pending.len() < self.cfg.proposal_queue {
                self.pending.push_back(e);
            }
        }
    }

    fn flush_pending(&mut self, leader: &NodeId, now_ms: u64, out: &mut Out) {
        if self.pending.is_empty() {
            return;
        }
        if self.is_acting_coordinator() {
            while let Some(e) = self.pending.pop_front() {
                if let Err(err) = self.order(e, now_ms, out) {
                    self.counters.proposals_refused += 1;
                    out.push(Output::Refused(ProposeError::Invalid(err)));
                }
            }
            return;
        }
        let acting = self
            .peers
            .get(leader)
            .and_then(|p| p.heartbeat.as_ref())
            .is_some_and(|hb| hb.acting);
        if *leader == self.cfg.id || !acting {
            return;
        }
        while let Some(event) = self.pending.pop_front() {
            out.push(Output::Send {
                to: leader.clone(),
                msg: WireMessage::Propose { event },
            });
        }
    }
}
