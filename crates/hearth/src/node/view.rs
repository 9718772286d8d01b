//! What the node loop publishes for readers (the HTTP API): a copy of the replicated state
//! plus this node's own counters, refreshed by the loop, read without ever blocking it long.

use super::alerts::Alerts;
use hearth_cluster::{ClusterState, NodeId};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

/// A peer this node turned away, for `hearth cluster status` and the log.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub at_ms: u64,
    pub peer: String,
    pub addr: Option<String>,
    pub reason: String,
}

/// Refusals kept for display; older ones are only counted.
pub const RECENT_REFUSALS: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct View {
    pub node_id: String,
    pub node_name: String,
    pub cluster_id: String,
    pub listen: Vec<String>,
    /// Shared with the serving tasks' watch: a new `Arc` only when the state changed.
    pub state: Arc<ClusterState>,
    pub state_hash: u64,
    /// Who this node believes coordinates now (its own election view).
    pub coordinator: Option<NodeId>,
    pub role: String,
    pub live_peers: Vec<String>,
    pub net: hearth_net::Counters,
    pub cluster: hearth_cluster::Counters,
    pub recent_refusals: VecDeque<Refusal>,
    /// `(seq, epoch, kind)` of the events this node holds for replay, oldest first.
    pub log: Vec<(u64, u64, &'static str)>,
    /// Models this node, as coordinator, could not place, and why.
    pub placement_errors: std::collections::BTreeMap<String, String>,
    /// This node's alerts, judged from `state` by their own task (not the node loop); shared,
    /// so the API, the metrics and code that raises alerts see one book.
    pub alerts: Alerts,
}

pub type SharedView = Arc<RwLock<View>>;

impl View {
    pub fn record_refusal(&mut self, r: Refusal) {
        if self.recent_refusals.len() == RECENT_REFUSALS {
            self.recent_refusals.pop_front();
        }
        self.recent_refusals.push_back(r);
    }

    /// `GET /api/cluster`.
    pub fn cluster_json(&self) -> Value {
        let s = &self.state;
        let nodes: Vec<Value> = s
            .members
            .iter()
            .map(|(id, m)| {
                json!({
                    "id": id.as_str(),
                    "name": m.name,
                    "addresses": m.addresses,
                    "devices": m.devices,
                    "last_seen_ms": m.last_seen_ms,
                    "incarnation": m.incarnation,
                    "joined_seq": m.joined_seq,
                    "telemetry": s.telemetry.get(id).map(|t| t.values().collect::<Vec<_>>()),
                    "refusals": s.refusals.get(id),
                })
            })
            .collect();
        let links: Vec<Value> = s
            .links
            .iter()
            .flat_map(|(from, row)| {
                row.iter().map(move |(to, l)| {
                    json!({
                        "from": from.as_str(),
                        "to": to.as_str(),
                        "rtt_p50_ms": l.rtt_p50_ms,
                        "rtt_p95_ms": l.rtt_p95_ms,
                        "throughput_mbps": l.throughput_mbps,
                        "loss": l.loss,
                        "measured_ms": l.measured_ms,
                    })
                })
            })
            .collect();
        let n = &self.net;
        let c = &self.cluster;
        json!({
            "node": {
                "id": self.node_id,
                "name": self.node_name,
                "cluster_id": self.cluster_id,
                "listen": self.listen,
                "role": self.role,
                "live_peers": self.live_peers,
            },
            "coordinator": self.coordinator.as_ref().map(|c| c.as_str()),
            "state_coordinator": s.coordinator.as_ref().map(|c| c.as_str()),
            "epoch": s.epoch,
            "last_seq": s.last_seq,
            "state_hash": format!("{:016x}", self.state_hash),
            "nodes": nodes,
            "links": links,
            "instances": s.instances,
            "counters": {
                "refused_admission": n.refused_admission,
                "dropped_malformed": n.dropped_malformed + c.malformed_messages,
                "dropped_oversized": n.dropped_oversized + c.oversized_outbound,
                "dropped_unadmitted": n.dropped_unadmitted,
                "dropped_events": n.dropped_events,
                "gossip_in": n.gossip_in,
                "gossip_out": n.gossip_out,
                "direct_in": n.direct_in,
                "direct_out": n.direct_out,
                "dial_attempts": n.dial_attempts,
                "admitted": n.admitted,
                "ignored_ordering": c.ignored_ordering,
                "spoofed": c.spoofed,
                "apply_errors": c.apply_errors,
                "catch_ups_requested": c.catch_ups_requested,
                "snapshots_adopted": c.snapshots_adopted,
            },
            "recent_refusals": self.recent_refusals.iter().map(|r| json!({
                "at_ms": r.at_ms,
                "peer": r.peer,
                "addr": r.addr,
                "reason": r.reason,
            })).collect::<Vec<_>>(),
        })
    }

    /// `GET /api/cluster/log`: the ordered events this node holds, for checking continuity.
    pub fn log_json(&self) -> Value {
        json!({
            "last_seq": self.state.last_seq,
            "events": self.log.iter().map(|(seq, epoch, kind)| json!({
                "seq": seq, "epoch": epoch, "kind": kind,
            })).collect::<Vec<_>>(),
        })
    }
}
