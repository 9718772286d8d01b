//! Typed events and the pure `apply`. Every check happens before the state is touched, so
//! [`apply_in_place`] leaves the state unchanged when it returns an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::state::{
    limits, ClusterState, DeviceSummary, DeviceTelemetry, Instance, InstanceStatus, LinkStats,
    NodeEntry, NodeId, Stage, StageStatus, WantedModel,
};

/// Link figures as a node measured them; the state adds the time the coordinator ordered them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkMeasurement {
    pub rtt_p50_ms: f64,
    pub rtt_p95_ms: f64,
    pub throughput_mbps: Option<f64>,
    pub loss: Option<f64>,
}

/// A fact about the cluster. Members propose the facts about themselves; the coordinator
/// produces the membership events and orders everything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A node was admitted, or re-admitted after a restart or a partition (the old entry of the
    /// same id is replaced, never duplicated).
    NodeJoined {
        node: NodeId,
        name: String,
        addresses: Vec<String>,
        incarnation: u64,
    },
    /// A node said goodbye.
    NodeLeft {
        node: NodeId,
    },
    /// A node was silent past the timeout.
    NodeTimedOut {
        node: NodeId,
    },
    /// The full list of a node's devices (replaces the previous list).
    DeviceInfo {
        node: NodeId,
        devices: Vec<DeviceSummary>,
    },
    /// Latest figures for some of a node's devices.
    Telemetry {
        node: NodeId,
        samples: Vec<DeviceTelemetry>,
    },
    LinkMeasured {
        from: NodeId,
        to: NodeId,
        stats: LinkMeasurement,
    },
    /// A node's refusal counters (absolute values, so a lost report costs nothing).
    RefusalCounts {
        node: NodeId,
        counts: BTreeMap<String, u64>,
    },
    InstancePlaced {
        id: String,
        model: String,
        stages: Vec<Stage>,
        #[serde(default)]
        predicted_tokens_per_s: f64,
    },
    InstanceStatus {
        id: String,
        status: InstanceStatus,
    },
    InstanceRemoved {
        id: String,
    },
    /// A node reports its stage of an instance.
    StageStatus {
        instance: String,
        node: NodeId,
        status: StageStatus,
    },
    /// A member asks the cluster to serve a model (replaces an earlier request of that name).
    ModelWanted {
        model: WantedModel,
    },
    /// A member asks the cluster to stop serving a model.
    ModelUnwanted {
        name: String,
        requested_by: NodeId,
    },
    /// First event of every reign: `coordinator` orders from here on, in `epoch`.
    CoordinatorChanged {
        coordinator: NodeId,
        epoch: u64,
    },
}

impl Event {
    /// Short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::NodeJoined { .. } => "node_joined",
            Event::NodeLeft { .. } => "node_left",
            Event::NodeTimedOut { .. } => "node_timed_out",
            Event::DeviceInfo { .. } => "device_info",
            Event::Telemetry { .. } => "telemetry",
            Event::LinkMeasured { .. } => "link_measured",
            Event::RefusalCounts { .. } => "refusal_counts",
            Event::InstancePlaced { .. } => "instance_placed",
            Event::InstanceStatus { .. } => "instance_status",
            Event::InstanceRemoved { .. } => "instance_removed",
            Event::StageStatus { .. } => "stage_status",
            Event::ModelWanted { .. } => "model_wanted",
            Event::ModelUnwanted { .. } => "model_unwanted",
            Event::CoordinatorChanged { .. } => "coordinator_changed",
        }
    }

    /// The node that is the source of this fact, if the event is a fact a node states about
    /// itself. Used to decide who may propose it and whose `last_seen_ms` it refreshes.
    pub fn subject(&self) -> Option<&NodeId> {
        match self {
            Event::NodeJoined { node, .. }
            | Event::DeviceInfo { node, .. }
            | Event::Telemetry { node, .. }
            | Event::RefusalCounts { node, .. }
            | Event::StageStatus { node, .. } => Some(node),
            Event::LinkMeasured { from, .. } => Some(from),
            Event::ModelWanted { model } => Some(&model.requested_by),
            Event::ModelUnwanted { requested_by, .. } => Some(requested_by),
            _ => None,
        }
    }
}

/// An event as ordered by the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub epoch: u64,
    pub seq: u64,
    /// The coordinator's clock when it ordered the event; the only time that enters the state.
    pub at_ms: u64,
    pub event: Event,
}

/// `state` with `ev` applied, or why `ev` cannot follow `state`.
pub fn apply(state: &ClusterState, ev: &SequencedEvent) -> Result<ClusterState, ApplyError> {
    let mut next = state.clone();
    apply_in_place(&mut next, ev)?;
    Ok(next)
}

/// Applies `ev` to `state`; on error `state` is unchanged.
pub fn apply_in_place(state: &mut ClusterState, ev: &SequencedEvent) -> Result<(), ApplyError> {
    check_order(state, ev)?;
    check_event(state, &ev.event)?;
    mutate(state, ev);
    Ok(())
}

fn check_order(state: &ClusterState, ev: &SequencedEvent) -> Result<(), ApplyError> {
    let expected = state.last_seq.saturating_add(1);
    if ev.seq < expected {
        return Err(ApplyError::AlreadyApplied {
            seq: ev.seq,
            last: state.last_seq,
        });
    }
    if ev.seq > expected {
        return Err(ApplyError::Gap {
            expected,
            got: ev.seq,
        });
    }
    if ev.epoch < state.epoch {
        return Err(ApplyError::StaleEpoch {
            epoch: ev.epoch,
            current: state.epoch,
        });
    }
    match &ev.event {
        // A new reign must say which epoch it opens and must be newer than the last.
        Event::CoordinatorChanged { epoch, .. } if *epoch != ev.epoch || *epoch <= state.epoch => {
            Err(ApplyError::BadEpoch {
                stamped: ev.epoch,
                announced: *epoch,
                current: state.epoch,
            })
        }
        Event::CoordinatorChanged { .. } => Ok(()),
        _ if ev.epoch > state.epoch => Err(ApplyError::EpochWithoutCoordinator {
            epoch: ev.epoch,
            current: state.epoch,
        }),
        _ => Ok(()),
    }
}

fn text(field: &'static str, s: &str) -> Result<(), ApplyError> {
    if s.len() > limits::MAX_TEXT {
        return Err(ApplyError::TooLong {
            field,
            len: s.len(),
            max: limits::MAX_TEXT,
        });
    }
    Ok(())
}

fn count(field: &'static str, n: usize, max: usize) -> Result<(), ApplyError> {
    if n > max {
        return Err(ApplyError::TooMany { field, n, max });
    }
    Ok(())
}

/// A figure that must be finite, at least 0 and at most `max`.
fn figure(field: &'static str, v: f64, max: f64) -> Result<(), ApplyError> {
    if !v.is_finite() || v < 0.0 || v > max {
        return Err(ApplyError::BadFigure {
            field,
            value: v,
            max,
        });
    }
    Ok(())
}

fn member(state: &ClusterState, node: &NodeId) -> Result<(), ApplyError> {
    if state.members.contains_key(node) {
        Ok(())
    } else {
        Err(ApplyError::UnknownNode(node.clone()))
    }
}

fn check_device(d: &DeviceSummary) -> Result<(), ApplyError> {
    text("device.id", &d.id)?;
    text("device.name", &d.name)?;
    count("device.backends", d.backends.len(), limits::MAX_BACKENDS)?;
    for b in &d.backends {
        text("device.backends", b)?;
    }
    figure("device.bandwidth_gbs", d.bandwidth_gbs, f64::MAX)?;
    figure("device.tflops", d.tflops, f64::MAX)?;
    figure("device.thermal_headroom", d.thermal_headroom, 1.0)
}

fn check_telemetry(t: &DeviceTelemetry) -> Result<(), ApplyError> {
    text("telemetry.device", &t.device)?;
    figure("telemetry.utilisation", t.utilisation, 1.0)?;
    figure("telemetry.thermal_headroom", t.thermal_headroom, 1.0)?;
    if let Some(c) = t.temperature_c {
        // Below zero is possible outdoors; only refuse what no sensor reports.
        if !c.is_finite() || c.abs() > 1000.0 {
            return Err(ApplyError::BadFigure {
                field: "telemetry.temperature_c",
                value: c,
                max: 1000.0,
            });
        }
    }
    if let Some(p) = t.power_w {
        figure("telemetry.power_w", p, f64::MAX)?;
    }
    if let Some(b) = t.battery {
        figure("telemetry.battery", b, 1.0)?;
    }
    Ok(())
}

fn check_event(state: &ClusterState, event: &Event) -> Result<(), ApplyError> {
    match event {
        Event::NodeJoined {
            node,
            name,
            addresses,
            ..
        } => {
            text("node", node.as_str())?;
            text("name", name)?;
            count("addresses", addresses.len(), limits::MAX_ADDRESSES)?;
            for a in addresses {
                text("addresses", a)?;
            }
            if !state.members.contains_key(node) {
                count("members", state.members.len() + 1, limits::MAX_MEMBERS)?;
            }
        }
        Event::NodeLeft { node } | Event::NodeTimedOut { node } => member(state, node)?,
        Event::DeviceInfo { node, devices } => {
            member(state, node)?;
            count("devices", devices.len(), limits::MAX_DEVICES_PER_NODE)?;
            let mut seen = std::collections::BTreeSet::new();
            for d in devices {
                check_device(d)?;
                if !seen.insert(d.id.as_str()) {
                    return Err(ApplyError::DuplicateDevice {
                        node: node.clone(),
                        device: d.id.clone(),
                    });
                }
            }
        }
        Event::Telemetry { node, samples } => {
            member(state, node)?;
            count("samples", samples.len(), limits::MAX_DEVICES_PER_NODE)?;
            let devices = &state.members[node].devices;
            for t in samples {
                check_telemetry(t)?;
                if !devices.iter().any(|d| d.id == t.device) {
                    return Err(ApplyError::UnknownDevice {
                        node: node.clone(),
                        device: t.device.clone(),
                    });
                }
            }
        }
        Event::LinkMeasured { from, to, stats } => {
            member(state, from)?;
            member(state, to)?;
            if from == to {
                return Err(ApplyError::SelfLink(from.clone()));
            }
            figure("link.rtt_p50_ms", stats.rtt_p50_ms, f64::MAX)?;
            figure("link.rtt_p95_ms", stats.rtt_p95_ms, f64::MAX)?;
            if let Some(t) = stats.throughput_mbps {
                figure("link.throughput_mbps", t, f64::MAX)?;
            }
            if let Some(l) = stats.loss {
                figure("link.loss", l, 1.0)?;
            }
        }
        Event::RefusalCounts { node, counts } => {
            member(state, node)?;
            count("refusal kinds", counts.len(), limits::MAX_REFUSAL_KINDS)?;
            for k in counts.keys() {
                text("refusal kind", k)?;
            }
        }
        Event::InstancePlaced {
            id,
            model,
            stages,
            predicted_tokens_per_s,
        } => {
            figure("predicted_tokens_per_s", *predicted_tokens_per_s, f64::MAX)?;
            text("instance.id", id)?;
            text("instance.model", model)?;
            if state.instances.contains_key(id) {
                return Err(ApplyError::DuplicateInstance(id.clone()));
            }
            count(
                "instances",
                state.instances.len() + 1,
                limits::MAX_INSTANCES,
            )?;
            if stages.is_empty() {
                return Err(ApplyError::NoStages(id.clone()));
            }
            count("stages", stages.len(), limits::MAX_STAGES)?;
            for s in stages {
                member(state, &s.node)?;
                text("stage.device", &s.device)?;
                if s.first_layer >= s.end_layer {
                    return Err(ApplyError::EmptyStage {
                        instance: id.clone(),
                        first: s.first_layer,
                        end: s.end_layer,
                    });
                }
            }
        }
        Event::InstanceStatus { id, status } => {
            if !state.instances.contains_key(id) {
                return Err(ApplyError::UnknownInstance(id.clone()));
            }
            match status {
                InstanceStatus::Loading { progress } => figure("progress", *progress, 1.0)?,
                InstanceStatus::Failed { reason } => text("reason", reason)?,
                _ => {}
            }
        }
        Event::InstanceRemoved { id } => {
            if !state.instances.contains_key(id) {
                return Err(ApplyError::UnknownInstance(id.clone()));
            }
        }
        Event::StageStatus {
            instance,
            node,
            status,
        } => {
            member(state, node)?;
            let runs_stage = state
                .instances
                .get(instance)
                .ok_or_else(|| ApplyError::UnknownInstance(instance.clone()))?
                .stages
                .iter()
                .any(|s| &s.node == node);
            if !runs_stage {
                return Err(ApplyError::NotAStage {
                    instance: instance.clone(),
                    node: node.clone(),
                });
            }
            match status {
                StageStatus::Loading { progress } => figure("progress", *progress, 1.0)?,
                StageStatus::Failed { reason } => text("reason", reason)?,
                _ => {}
            }
        }
        Event::ModelWanted { model } => {
            member(state, &model.requested_by)?;
            text("model.name", &model.name)?;
            text("model.sha256", &model.sha256)?;
            text("model.source", &model.source)?;
            text("model.placement", &model.placement)?;
            if model.profile.len() > limits::MAX_PROFILE {
                return Err(ApplyError::TooLong {
                    field: "model.profile",
                    len: model.profile.len(),
                    max: limits::MAX_PROFILE,
                });
            }
            if !state.wanted.contains_key(&model.name) {
                count("wanted", state.wanted.len() + 1, limits::MAX_WANTED)?;
            }
        }
        Event::ModelUnwanted { name, requested_by } => {
            member(state, requested_by)?;
            if !state.wanted.contains_key(name) {
                return Err(ApplyError::UnknownModel(name.clone()));
            }
        }
        // The coordinator is announced before it admits itself at the birth of a cluster, so
        // it need not be a member yet.
        Event::CoordinatorChanged { coordinator, .. } => text("coordinator", coordinator.as_str())?,
    }
    Ok(())
}

fn touch(state: &mut ClusterState, node: &NodeId, at_ms: u64) {
    if let Some(m) = state.members.get_mut(node) {
        m.last_seen_ms = m.last_seen_ms.max(at_ms);
    }
}

fn remove_node(state: &mut ClusterState, node: &NodeId, why: &str) {
    state.members.remove(node);
    state.links.remove(node);
    for to in state.links.values_mut() {
        to.remove(node);
    }
    state.links.retain(|_, to| !to.is_empty());
    state.telemetry.remove(node);
    state.refusals.remove(node);
    // A pipeline with a missing stage cannot serve; re-planning is the coordinator's decision.
    for inst in state.instances.values_mut() {
        if inst.stages.iter().any(|s| &s.node == node)
            && !matches!(inst.status, InstanceStatus::Failed { .. })
        {
            inst.status = InstanceStatus::Failed {
                reason: format!("node {node} {why}"),
            };
        }
    }
}

fn mutate(state: &mut ClusterState, ev: &SequencedEvent) {
    state.last_seq = ev.seq;
    let at = ev.at_ms;
    match &ev.event {
        Event::NodeJoined {
            node,
            name,
            addresses,
            incarnation,
        } => {
            // A restart or a re-admission: the previous incarnation's facts are gone with it;
            // the node re-proposes what is still true.
            if state.members.contains_key(node) {
                remove_node(state, node, "restarted");
            }
            state.members.insert(
                node.clone(),
                NodeEntry {
                    name: name.clone(),
                    addresses: addresses.clone(),
                    devices: Vec::new(),
                    last_seen_ms: at,
                    incarnation: *incarnation,
                    joined_seq: ev.seq,
                },
            );
        }
        Event::NodeLeft { node } => remove_node(state, node, "left"),
        Event::NodeTimedOut { node } => remove_node(state, node, "timed out"),
        Event::DeviceInfo { node, devices } => {
            if let Some(m) = state.members.get_mut(node) {
                m.devices = devices.clone();
            }
            // Telemetry of devices that are gone would otherwise linger forever.
            if let Some(t) = state.telemetry.get_mut(node) {
                t.retain(|id, _| devices.iter().any(|d| &d.id == id));
                if t.is_empty() {
                    state.telemetry.remove(node);
                }
            }
            touch(state, node, at);
        }
        Event::Telemetry { node, samples } => {
            let t = state.telemetry.entry(node.clone()).or_default();
            for s in samples {
                t.insert(s.device.clone(), s.clone());
            }
            touch(state, node, at);
        }
        Event::LinkMeasured { from, to, stats } => {
            state.links.entry(from.clone()).or_default().insert(
                to.clone(),
                LinkStats {
                    rtt_p50_ms: stats.rtt_p50_ms,
                    rtt_p95_ms: stats.rtt_p95_ms,
                    throughput_mbps: stats.throughput_mbps,
                    loss: stats.loss,
                    measured_ms: at,
                },
            );
            touch(state, from, at);
        }
        Event::RefusalCounts { node, counts } => {
            state.refusals.insert(node.clone(), counts.clone());
            touch(state, node, at);
        }
        Event::InstancePlaced {
            id,
            model,
            stages,
            predicted_tokens_per_s,
        } => {
            state.instances.insert(
                id.clone(),
                Instance {
                    model: model.clone(),
                    stages: stages.clone(),
                    status: InstanceStatus::Placing,
                    predicted_tokens_per_s: *predicted_tokens_per_s,
                },
            );
        }
        Event::StageStatus {
            instance,
            node,
            status,
        } => {
            if let Some(i) = state.instances.get_mut(instance) {
                for s in i.stages.iter_mut().filter(|s| &s.node == node) {
                    s.status = status.clone();
                }
            }
            touch(state, node, at);
        }
        Event::ModelWanted { model } => {
            state.wanted.insert(model.name.clone(), model.clone());
            touch(state, &model.requested_by, at);
        }
        Event::ModelUnwanted { name, .. } => {
            state.wanted.remove(name);
        }
        Event::InstanceStatus { id, status } => {
            if let Some(i) = state.instances.get_mut(id) {
                i.status = status.clone();
            }
        }
        Event::InstanceRemoved { id } => {
            state.instances.remove(id);
        }
        Event::CoordinatorChanged { coordinator, epoch } => {
            state.coordinator = Some(coordinator.clone());
            state.epoch = *epoch;
            touch(state, coordinator, at);
        }
    }
}
