//! The replicated cluster state. Every map is a `BTreeMap` so that the serialization, and with
//! it [`ClusterState::state_hash`], is canonical: two nodes that applied the same log hold
//! byte-identical states.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Limits on what one state may hold. Events that would exceed them are refused by `apply`, so a
/// misbehaving member cannot grow every node's memory without bound.
pub mod limits {
    /// Members of one cluster.
    pub const MAX_MEMBERS: usize = 256;
    /// Devices reported by one node.
    pub const MAX_DEVICES_PER_NODE: usize = 64;
    /// Listen addresses reported by one node.
    pub const MAX_ADDRESSES: usize = 32;
    /// Backends listed by one device.
    pub const MAX_BACKENDS: usize = 16;
    /// Model instances.
    pub const MAX_INSTANCES: usize = 256;
    /// Stages of one instance.
    pub const MAX_STAGES: usize = 64;
    /// Refusal counter kinds reported by one node.
    pub const MAX_REFUSAL_KINDS: usize = 32;
    /// Length in bytes of any name, id, address or free-text field.
    pub const MAX_TEXT: usize = 512;
    /// Models the cluster is asked to serve at once.
    pub const MAX_WANTED: usize = 64;
    /// Length in bytes of a wanted model's planner profile.
    pub const MAX_PROFILE: usize = 64 * 1024;
}

/// A node's identity: the text of its libp2p `PeerId`. Ordered, because the election picks the
/// smallest live id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

/// What the cluster needs to know about one compute device. Kept to strings and numbers so this
/// crate does not depend on `hearth-device`; the binary converts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub id: String,
    pub name: String,
    /// Backend names as the device crate spells them (`cpu`, `cuda`, …).
    pub backends: Vec<String>,
    pub memory_total_bytes: u64,
    /// What hearth may use on this device (the declared limit or the probed free memory).
    pub memory_budget_bytes: u64,
    /// Memory bandwidth, GB/s (decode is bound by it); 0 until measured.
    pub bandwidth_gbs: f64,
    /// Dense throughput, TFLOP/s (prefill is bound by it); 0 until measured.
    pub tflops: f64,
    /// 1.0 = cool, 0.0 = at its thermal limit.
    pub thermal_headroom: f64,
    /// The figures come from a device profile the node stands in for, not from a probe.
    #[serde(default)]
    pub declared: bool,
}

/// Latest live figures of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceTelemetry {
    pub device: String,
    pub memory_used_bytes: u64,
    /// 0.0–1.0.
    pub utilisation: f64,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    /// 0.0–1.0 where the device runs on a battery.
    pub battery: Option<f64>,
    pub on_battery: bool,
    pub throttled: bool,
    pub thermal_headroom: f64,
    /// The reporting node's clock when it sampled; informative only.
    pub sampled_ms: u64,
}

/// One directed link as measured by its `from` end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    pub rtt_p50_ms: f64,
    pub rtt_p95_ms: f64,
    /// `None` until the first timed transfer completed.
    pub throughput_mbps: Option<f64>,
    /// Fraction of probes lost, 0.0–1.0; `None` until the first loss round completed.
    pub loss: Option<f64>,
    /// The coordinator's clock when it ordered the measurement.
    pub measured_ms: u64,
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub addresses: Vec<String>,
    pub devices: Vec<DeviceSummary>,
    /// The coordinator's clock when it last ordered an event from or about this node. Liveness
    /// itself is judged locally from heartbeats (see `member`); this is what the state shows.
    pub last_seen_ms: u64,
    /// Chosen by the node at each start (e.g. its start time or a random number): a new value
    /// under the same id means the node restarted, and its entry is replaced.
    pub incarnation: u64,
    /// Sequence number of the `NodeJoined` that admitted this incarnation.
    pub joined_seq: u64,
}

/// A contiguous range of layers of an instance run by one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub node: NodeId,
    pub device: String,
    pub first_layer: u32,
    /// Exclusive.
    pub end_layer: u32,
    /// As last reported by the stage's node.
    #[serde(default)]
    pub status: StageStatus,
}

/// How far one node is with its stage of an instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StageStatus {
    /// Placed; the node has not reported yet.
    #[default]
    Pending,
    /// Fetching or mapping its weights; `progress` 0.0–1.0.
    Loading {
        progress: f64,
    },
    Ready,
    Failed {
        reason: String,
    },
}

/// A model the cluster is asked to serve. The coordinator keeps an instance of every wanted
/// model placed, re-placing it when a stage's node is lost or a better plan appears.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WantedModel {
    /// The name clients use (`/v1/models`).
    pub name: String,
    /// The GGUF file's SHA-256 (hex): what every stage must load, whatever it is called there.
    pub sha256: String,
    pub size_bytes: u64,
    /// What the requester was asked for (a catalog name or a path on its machine): a node
    /// tries it locally before fetching the file from the requester.
    pub source: String,
    /// The planner's profile of the model (JSON), so the coordinator can plan without the file.
    pub profile: String,
    /// The node that asked; it holds the file and serves it to stages that lack it.
    pub requested_by: NodeId,
    /// `planner` or `proportional` (the memory-proportional baseline).
    pub placement: String,
    /// Positions one sequence may use; every stage reserves KV cache for it.
    pub context: u32,
}

/// Lifecycle of a model instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InstanceStatus {
    Placing,
    Loading { progress: f64 },
    Ready,
    Draining,
    Failed { reason: String },
}

/// A model being served by a pipeline of stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub model: String,
    pub stages: Vec<Stage>,
    pub status: InstanceStatus,
    /// The planner's predicted decode speed for this placement, tokens per second.
    #[serde(default)]
    pub predicted_tokens_per_s: f64,
}

/// The state every member holds, built only by applying the ordered log (or adopting a
/// snapshot of it).
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// Sequence number of the last applied event; 0 for the empty state.
    pub last_seq: u64,
    /// Epoch of the current coordinator's reign.
    pub epoch: u64,
    pub coordinator: Option<NodeId>,
    pub members: BTreeMap<NodeId, NodeEntry>,
    /// `links[from][to]`.
    pub links: BTreeMap<NodeId, BTreeMap<NodeId, LinkStats>>,
    /// `telemetry[node][device id]`.
    pub telemetry: BTreeMap<NodeId, BTreeMap<String, DeviceTelemetry>>,
    pub instances: BTreeMap<String, Instance>,
    /// Models the cluster should serve, by name.
    #[serde(default)]
    pub wanted: BTreeMap<String, WantedModel>,
    /// `refusals[node][kind]`: counters of peers a node refused (wrong key, malformed, …), as
    /// last reported by that node.
    pub refusals: BTreeMap<NodeId, BTreeMap<String, u64>>,
}

impl ClusterState {
    /// The canonical bytes of this state: JSON of ordered maps, so equal states give equal bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialization of these plain types cannot fail (no non-string map keys, no custom
        // serializers); an empty vector would still hash deterministically.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// FNV-1a (64 bit) of [`canonical_bytes`](Self::canonical_bytes). Stable across platforms
    /// and releases of this crate as long as the state's fields do not change.
    pub fn state_hash(&self) -> u64 {
        fnv1a(&self.canonical_bytes())
    }

    pub fn is_member(&self, id: &NodeId) -> bool {
        self.members.contains_key(id)
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
