//! What a member knows about its peers, and the election rule built on it.
//!
//! Rule: the coordinator is the smallest id among this node and the peers it heard from within
//! the timeout (and that the network has not reported lost since). Every node evaluates the
//! rule on its own view; views agree once heartbeats have crossed, so the result agrees too.

use std::collections::BTreeMap;

use crate::state::NodeId;
use crate::wire::Heartbeat;

#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// From the network's `PeerUp` or from the peer's heartbeats.
    pub name: String,
    pub addresses: Vec<String>,
    /// Local clock of the last message from this peer.
    pub last_heard_ms: Option<u64>,
    /// The network reported the connection lost and nothing was heard since.
    pub down: bool,
    /// The peer said goodbye and nothing was heard since.
    pub left: bool,
    pub heartbeat: Option<Heartbeat>,
}

#[derive(Debug, Clone)]
pub struct Peers {
    max: usize,
    map: BTreeMap<NodeId, PeerView>,
}

impl Peers {
    pub fn new(max: usize) -> Self {
        Peers {
            max,
            map: BTreeMap::new(),
        }
    }

    /// The entry of `id`, created if there is room. `None` means the table is full.
    pub fn entry(&mut self, id: &NodeId) -> Option<&mut PeerView> {
        if !self.map.contains_key(id) {
            if self.map.len() >= self.max {
                return None;
            }
            self.map.insert(id.clone(), PeerView::default());
        }
        self.map.get_mut(id)
    }

    pub fn get(&self, id: &NodeId) -> Option<&PeerView> {
        self.map.get(id)
    }

    /// Records a message from `id`; `false` when the table is full and `id` is unknown.
    pub fn heard(&mut self, id: &NodeId, now_ms: u64) -> bool {
        match self.entry(id) {
            Some(p) => {
                p.last_heard_ms = Some(p.last_heard_ms.map_or(now_ms, |t| t.max(now_ms)));
                p.down = false;
                p.left = false;
                true
            }
            None => false,
        }
    }

    pub fn is_live(&self, id: &NodeId, now_ms: u64, timeout_ms: u64) -> bool {
        self.map
            .get(id)
            .is_some_and(|p| live(p, now_ms, timeout_ms))
    }

    pub fn live(&self, now_ms: u64, timeout_ms: u64) -> impl Iterator<Item = (&NodeId, &PeerView)> {
        self.map
            .iter()
            .filter(move |(_, p)| live(p, now_ms, timeout_ms))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &PeerView)> {
        self.map.iter()
    }

    /// Forgets peers silent for `forget_ms`, so the table does not fill with the dead.
    pub fn forget_silent(&mut self, now_ms: u64, forget_ms: u64) {
        self.map.retain(|_, p| {
            p.last_heard_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= forget_ms)
        });
    }

    /// The election rule.
    pub fn elect(&self, me: &NodeId, now_ms: u64, timeout_ms: u64) -> NodeId {
        self.live(now_ms, timeout_ms)
            .map(|(id, _)| id)
            .filter(|id| *id < me)
            .min()
            .unwrap_or(me)
            .clone()
    }
}

fn live(p: &PeerView, now_ms: u64, timeout_ms: u64) -> bool {
    !p.down
        && !p.left
        && p.last_heard_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= timeout_ms)
}
