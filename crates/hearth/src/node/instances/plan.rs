//! The coordinator's half of serving: it turns the live cluster into the planner's fleet and
//! keeps every wanted model placed. [`Reconciler::decide`] looks at the state and returns the
//! events to propose; it does no I/O, so every rule is tested on hand-built states.
//!
//! Rules, per wanted model:
//! - no live instance → place one (planner or proportional baseline), unless a placement failed
//!   moments ago (back-off);
//! - an instance whose stages all report ready → `ready`; older ready instances of the model
//!   → `draining`, and removed after a grace period (make-before-break: traffic moves to the new
//!   instance first, and sequences still on the old one resume on the new);
//! - an instance with a failed stage or a lost node → removed, then re-placed;
//! - a ready instance is re-planned when the fleet now predicts a speed better by more than the
//!   hysteresis, or when one of its devices fell below the thermal headroom the policy allows.
//!
//! Instances of models no longer wanted are drained and removed.

use super::models::profile_from_json;
use hearth_cluster::{
    ClusterState, Event, Instance, InstanceStatus, NodeId, Stage, StageStatus, WantedModel,
};
use hearth_placement::baseline::{baseline, Baseline};
use hearth_placement::cost::{predict, StageSpec};
use hearth_placement::{Backend, Device, Fleet, Link, ModelProfile, Policy, Precision};
use std::collections::HashMap;

/// Figures assumed for a link not measured yet: a home LAN.
const DEFAULT_LATENCY_MS: f64 = 1.0;
const DEFAULT_BANDWIDTH_GBPS: f64 = 1.0;

/// The planner's fleet built from the state, and which node and device each entry is.
pub struct LiveFleet {
    pub fleet: Fleet,
    pub devices: Vec<(NodeId, String)>,
}

/// One device per member: the one the engine runs on (a declared device, else the CPU). Nodes
/// not measured yet are left out until they are.
pub fn live_fleet(state: &ClusterState) -> Option<LiveFleet> {
    let mut devices = Vec::new();
    let mut ids = Vec::new();
    for (node, entry) in &state.members {
        let Some(d) = entry
            .devices
            .iter()
            .find(|d| d.declared || d.backends.iter().any(|b| b == "cpu"))
        else {
            continue;
        };
        if d.bandwidth_gbs <= 0.0 || d.tflops <= 0.0 || d.memory_budget_bytes == 0 {
            continue;
        }
        let telemetry = state.telemetry.get(node).and_then(|t| t.get(&d.id));
        let headroom = telemetry.map_or(d.thermal_headroom, |t| t.thermal_headroom);
        devices.push(Device {
            name: format!("{}/{}", entry.name, short(node)),
            backend: d
                .backends
                .iter()
                .find_map(|b| Backend::parse(b))
                .unwrap_or(Backend::Cpu),
            memory_gib: d.memory_budget_bytes as f64 / (1u64 << 30) as f64,
            bandwidth_gbs: d.bandwidth_gbs,
            tflops: d.tflops,
            // The engine computes and passes hidden states in f32.
            precisions: vec![Precision::F32],
            thermal_headroom: headroom.clamp(0.0, 1.0),
            on_battery: telemetry.is_some_and(|t| t.on_battery),
        });
        ids.push((node.clone(), d.id.clone()));
    }
    let mut links = Vec::new();
    for a in 0..ids.len() {
        for b in a + 1..ids.len() {
            let measured =
                |x: usize, y: usize| state.links.get(&ids[x].0).and_then(|to| to.get(&ids[y].0));
            let (latency_ms, bandwidth_gbps) = match measured(a, b).or(measured(b, a)) {
                Some(l) => (
                    (l.rtt_p50_ms / 2.0).max(0.001),
                    l.throughput_mbps
                        .filter(|t| *t > 0.0)
                        .map_or(DEFAULT_BANDWIDTH_GBPS, |t| t / 1000.0),
                ),
                None => (DEFAULT_LATENCY_MS, DEFAULT_BANDWIDTH_GBPS),
            };
            links.push(Link {
                a,
                b,
                latency_ms,
                bandwidth_gbps,
            });
        }
    }
    if devices.is_empty() {
        return None;
    }
    let fleet = Fleet::new(devices, links).ok()?;
    Some(LiveFleet {
        fleet,
        devices: ids,
    })
}

fn short(node: &NodeId) -> &str {
    let s = node.as_str();
    &s[s.len().saturating_sub(6)..]
}

/// How the coordinator places and re-places.
#[derive(Debug, Clone)]
pub struct ServePolicy {
    /// Sequences each stage holds at once (KV cache is reserved for all of them).
    pub sequences: usize,
    /// Re-plan only when the new plan's predicted decode speed beats the current one by this
    /// factor.
    pub hysteresis: f64,
    /// A ready instance is re-evaluated this often.
    pub replan_every_ms: u64,
    /// A draining instance is removed this long after its successor became ready.
    pub drain_ms: u64,
    /// After a failed placement, wait this long before trying again.
    pub backoff_ms: u64,
    pub min_headroom: f64,
}

impl Default for ServePolicy {
    fn default() -> Self {
        ServePolicy {
            sequences: 4,
            hysteresis: 1.2,
            replan_every_ms: 2000,
            drain_ms: 10_000,
            backoff_ms: 2000,
            min_headroom: Policy::default().min_headroom,
        }
    }
}

/// A placement the planner (or the baseline) proposes for a wanted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub stages: Vec<Stage>,
    pub predicted_tokens_per_s: f64,
}

/// Plans `model` on the live fleet.
pub fn propose(
    state: &ClusterState,
    model: &WantedModel,
    policy: &ServePolicy,
) -> Result<Proposal, String> {
    let profile = profile_from_json(&model.profile)
        .ok_or_else(|| format!("the profile of `{}` is unreadable", model.name))?;
    let live = live_fleet(state).ok_or("no measured device in the cluster yet")?;
    let planner_policy = Policy {
        context: model.context as usize * policy.sequences.max(1),
        min_headroom: policy.min_headroom,
        tensor_parallel: false,
        ..Policy::default()
    };
    let (specs, predicted) = if model.placement == "proportional" {
        let b = baseline(
            &live.fleet,
            &profile,
            &planner_policy,
            Baseline::MemoryProportional,
        );
        if !b.fits {
            return Err("the memory-proportional split does not fit the devices".into());
        }
        let p = b
            .prediction
            .ok_or("the memory-proportional split's devices are not linked")?;
        (b.stages, p.decode_tok_s())
    } else {
        let plan = hearth_placement::plan(&live.fleet, &profile, &planner_policy)
            .map_err(|e| e.to_string())?;
        let tok_s = plan.prediction.decode_tok_s();
        (plan.stage_specs(), tok_s)
    };
    Ok(Proposal {
        stages: to_stages(&live, &specs),
        predicted_tokens_per_s: predicted,
    })
}

fn to_stages(live: &LiveFleet, specs: &[StageSpec]) -> Vec<Stage> {
    specs
        .iter()
        .map(|s| Stage {
            node: live.devices[s.device].0.clone(),
            device: live.devices[s.device].1.clone(),
            first_layer: s.first_layer as u32,
            end_layer: s.end_layer as u32,
            status: StageStatus::Pending,
        })
        .collect()
}

/// The predicted decode speed of an existing instance on today's fleet; `None` when one of its
/// devices is gone or unusable.
pub fn repredict(state: &ClusterState, inst: &Instance, profile: &ModelProfile) -> Option<f64> {
    let live = live_fleet(state)?;
    let specs = inst
        .stages
        .iter()
        .map(|s| {
            let device = live
                .devices
                .iter()
                .position(|(n, d)| *n == s.node && *d == s.device)?;
            Some(StageSpec {
                device,
                first_layer: s.first_layer as usize,
                end_layer: s.end_layer as usize,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    predict(&live.fleet, profile, &specs).map(|p| p.decode_tok_s())
}

/// The coordinator's memory between decisions: times it cannot read from the state.
#[derive(Default)]
pub struct Reconciler {
    pub policy: ServePolicy,
    /// When each model's last placement attempt failed.
    failed_at: HashMap<String, u64>,
    /// When each instance started draining.
    draining_since: HashMap<String, u64>,
    /// When each model was last re-evaluated.
    evaluated_at: HashMap<String, u64>,
    /// The last reason a model could not be placed, for the log (said once per reason).
    last_error: HashMap<String, String>,
}

fn is_live(i: &Instance) -> bool {
    !matches!(i.status, InstanceStatus::Failed { .. })
        && !i
            .stages
            .iter()
            .any(|s| matches!(s.status, StageStatus::Failed { .. }))
}

impl Reconciler {
    pub fn new(policy: ServePolicy) -> Reconciler {
        Reconciler {
            policy,
            ..Reconciler::default()
        }
    }

    /// Events to propose now, in order.
    pub fn decide(&mut self, state: &ClusterState, now_ms: u64) -> Vec<Event> {
        let mut out = Vec::new();
        // Broken instances go first: their stages free memory for the replacement.
        for (id, inst) in &state.instances {
            if !is_live(inst) {
                tracing::warn!(instance = %id, model = %inst.model, "removing a failed instance");
                out.push(Event::InstanceRemoved { id: id.clone() });
            }
        }
        for (id, inst) in &state.instances {
            if is_live(inst) && !state.wanted.contains_key(&inst.model) {
                self.drain_or_remove(id, inst, now_ms, &mut out);
            }
        }
        for model in state.wanted.values() {
            self.reconcile_model(state, model, now_ms, &mut out);
        }
        self.draining_since
            .retain(|id, _| state.instances.contains_key(id));
        out
    }

    fn drain_or_remove(&mut self, id: &str, inst: &Instance, now_ms: u64, out: &mut Vec<Event>) {
        let since = *self.draining_since.entry(id.to_string()).or_insert(now_ms);
        if inst.status != InstanceStatus::Draining {
            out.push(Event::InstanceStatus {
                id: id.to_string(),
                status: InstanceStatus::Draining,
            });
        } else if now_ms.saturating_sub(since) >= self.policy.drain_ms {
            out.push(Event::InstanceRemoved { id: id.to_string() });
        }
    }

    fn reconcile_model(
        &mut self,
        state: &ClusterState,
        model: &WantedModel,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) {
        let mine: Vec<(&String, &Instance)> = state
            .instances
            .iter()
            .filter(|(_, i)| i.model == model.name && is_live(i))
            .collect();
        // Newest last: instance ids end in the sequence number that placed them.
        let mut ready: Vec<(&String, &Instance)> = Vec::new();
        let mut pending: Vec<(&String, &Instance)> = Vec::new();
        for (id, inst) in &mine {
            match inst.status {
                InstanceStatus::Ready => ready.push((id, inst)),
                InstanceStatus::Draining => self.drain_or_remove(id, inst, now_ms, out),
                _ => pending.push((id, inst)),
            }
        }
        for (id, inst) in &pending {
            let all_ready = inst
                .stages
                .iter()
                .all(|s| matches!(s.status, StageStatus::Ready));
            if all_ready {
                out.push(Event::InstanceStatus {
                    id: id.to_string(),
                    status: InstanceStatus::Ready,
                });
                // The successor is up: everything older starts draining.
                for (old, _) in &ready {
                    self.draining_since.insert(old.to_string(), now_ms);
                    out.push(Event::InstanceStatus {
                        id: old.to_string(),
                        status: InstanceStatus::Draining,
                    });
                }
                return;
            }
        }
        for (id, inst) in &pending {
            if let Some(status) = loading_status(inst) {
                out.push(Event::InstanceStatus {
                    id: id.to_string(),
                    status,
                });
            }
        }
        if !pending.is_empty() {
            return;
        }
        if let Some(&t) = self.failed_at.get(&model.name) {
            if now_ms.saturating_sub(t) < self.policy.backoff_ms {
                return;
            }
        }
        if let Some((_, current)) = ready.last() {
            let due = self
                .evaluated_at
                .get(&model.name)
                .is_none_or(|&t| now_ms.saturating_sub(t) >= self.policy.replan_every_ms);
            if !due {
                return;
            }
            self.evaluated_at.insert(model.name.clone(), now_ms);
            if !self.should_replan(state, model, current) {
                return;
            }
        }
        match propose(state, model, &self.policy) {
            Ok(p) => {
                if let Some((_, current)) = ready.last() {
                    if same_layout(&current.stages, &p.stages) {
                        return;
                    }
                    tracing::info!(model = %model.name, from = current.predicted_tokens_per_s, to = p.predicted_tokens_per_s, "re-placing: a better plan is available");
                }
                self.failed_at.remove(&model.name);
                self.last_error.remove(&model.name);
                out.push(Event::InstancePlaced {
                    id: format!("{}-{}", model.name, state.last_seq + 1),
                    model: model.name.clone(),
                    stages: p.stages,
                    predicted_tokens_per_s: p.predicted_tokens_per_s,
                });
            }
            Err(e) => {
                self.failed_at.insert(model.name.clone(), now_ms);
                if self.last_error.get(&model.name) != Some(&e) {
                    tracing::warn!(model = %model.name, error = %e, "cannot place the model");
                    self.last_error.insert(model.name.clone(), e);
                }
            }
        }
    }

    /// A ready instance moves when a device under it is too hot, or when a new plan beats it
    /// by the hysteresis.
    fn should_replan(&self, state: &ClusterState, model: &WantedModel, current: &Instance) -> bool {
        let hot = current.stages.iter().any(|s| {
            state
                .telemetry
                .get(&s.node)
                .and_then(|t| t.get(&s.device))
                .is_some_and(|t| t.thermal_headroom < self.policy.min_headroom)
        });
        if hot {
            tracing::info!(model = %model.name, "a device of the instance is too hot; re-planning");
            return true;
        }
        let Some(profile) = profile_from_json(&model.profile) else {
            return false;
        };
        let Some(now) = repredict(state, current, &profile) else {
            return true;
        };
        match propose(state, model, &self.policy) {
            Ok(p) => p.predicted_tokens_per_s > now * self.policy.hysteresis,
            Err(_) => false,
        }
    }

    /// Why each model that could not be placed was not, as of its last attempt.
    pub fn placement_errors(&self) -> &HashMap<String, String> {
        &self.last_error
    }
}

/// The instance's `loading` status when its stages' progress moved on enough to say so (each
/// report is an event every node applies, so small steps are not worth one).
fn loading_status(inst: &Instance) -> Option<InstanceStatus> {
    let started = inst
        .stages
        .iter()
        .any(|s| !matches!(s.status, StageStatus::Pending));
    if !started {
        return None;
    }
    let progress = inst
        .stages
        .iter()
        .map(|s| match s.status {
            StageStatus::Ready => 1.0,
            StageStatus::Loading { progress } => progress.clamp(0.0, 1.0),
            _ => 0.0,
        })
        .sum::<f64>()
        / inst.stages.len().max(1) as f64;
    let progress = (progress * 10.0).floor() / 10.0;
    match inst.status {
        InstanceStatus::Loading { progress: shown } if (progress - shown).abs() < 0.1 => None,
        _ => Some(InstanceStatus::Loading { progress }),
    }
}

fn same_layout(a: &[Stage], b: &[Stage]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.node == y.node && x.first_layer == y.first_layer && x.end_layer == y.end_layer
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::instances::models::profile_to_json;
    use hearth_cluster::{DeviceSummary, DeviceTelemetry, NodeEntry};

    fn profile() -> ModelProfile {
        ModelProfile {
            name: "tiny".into(),
            hidden_size: 576,
            n_kv_heads: 3,
            head_dim: 64,
            layer_bytes: vec![3_000_000; 30],
            layer_params: vec![5_000_000; 30],
            embedding_bytes: 28_000_000,
            embedding_params: 28_000_000,
            head_bytes: 2_304,
            head_params: 576,
            tied_embeddings: true,
            tensor_types: vec!["Q4_1".into(), "F32".into()],
        }
    }

    fn node(name: &str, memory: u64, bandwidth: f64) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            addresses: vec![],
            devices: vec![DeviceSummary {
                id: format!("cpu-{name}"),
                name: "cpu".into(),
                backends: vec!["cpu".into()],
                memory_total_bytes: memory,
                memory_budget_bytes: memory,
                bandwidth_gbs: bandwidth,
                tflops: 0.5,
                thermal_headroom: 1.0,
                declared: false,
            }],
            last_seen_ms: 0,
            incarnation: 1,
            joined_seq: 1,
        }
    }

    fn state(nodes: &[(&str, u64, f64)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (n, m, b) in nodes {
            s.members.insert(NodeId::new(*n), node(n, *m, *b));
        }
        s.wanted.insert(
            "tiny".into(),
            WantedModel {
                name: "tiny".into(),
                sha256: "00".repeat(32),
                size_bytes: 120_000_000,
                source: "tiny.gguf".into(),
                profile: profile_to_json(&profile()).to_string(),
                requested_by: NodeId::new(nodes[0].0),
                placement: "planner".into(),
                context: 256,
            },
        );
        s.last_seq = 10;
        s
    }

    /// Applies what the reconciler decided, as the coordinator would.
    fn apply(s: &mut ClusterState, events: &[Event]) {
        for e in events {
            let ordered = hearth_cluster::SequencedEvent {
                epoch: s.epoch,
                seq: s.last_seq + 1,
                at_ms: 0,
                event: e.clone(),
            };
            hearth_cluster::apply_in_place(s, &ordered).expect("a decision the state accepts");
        }
    }

    fn all_stages(s: &mut ClusterState, status: StageStatus) {
        for i in s.instances.values_mut() {
            for st in &mut i.stages {
                st.status = status.clone();
            }
        }
    }

    #[test]
    fn a_wanted_model_is_placed_then_ready_once_its_stages_are() {
        let mut s = state(&[("a", 1 << 30, 20.0)]);
        let mut r = Reconciler::new(ServePolicy::default());
        let placed = r.decide(&s, 0);
        assert!(matches!(&placed[..], [Event::InstancePlaced { stages, .. }] if stages.len() == 1));
        apply(&mut s, &placed);
        // Placed, no stage heard from yet: nothing to do.
        assert!(r.decide(&s, 50).is_empty());
        all_stages(&mut s, StageStatus::Loading { progress: 0.5 });
        let loading = r.decide(&s, 100);
        assert!(matches!(
            &loading[..],
            [Event::InstanceStatus { status: InstanceStatus::Loading { progress }, .. }] if *progress == 0.5
        ));
        apply(&mut s, &loading);
        // No news is not worth an event.
        assert!(r.decide(&s, 150).is_empty());
        all_stages(&mut s, StageStatus::Ready);
        let ready = r.decide(&s, 200);
        assert!(matches!(
            &ready[..],
            [Event::InstanceStatus {
                status: InstanceStatus::Ready,
                ..
            }]
        ));
        apply(&mut s, &ready);
        // Same fleet, same plan: no churn.
        assert!(r.decide(&s, 10_000).is_empty());
    }

    #[test]
    fn memory_limits_force_a_split_and_unmeasured_nodes_wait() {
        let mut s = state(&[
            ("a", 60 << 20, 20.0),
            ("b", 60 << 20, 20.0),
            ("c", 60 << 20, 20.0),
        ]);
        s.members.get_mut(&NodeId::new("c")).unwrap().devices[0].bandwidth_gbs = 0.0;
        let mut r = Reconciler::new(ServePolicy::default());
        assert!(r.decide(&s, 0).is_empty(), "two nodes cannot hold it");
        assert!(r.placement_errors().contains_key("tiny"));
        s.members.get_mut(&NodeId::new("c")).unwrap().devices[0].bandwidth_gbs = 20.0;
        assert!(r.decide(&s, 500).is_empty(), "backing off after a failure");
        let placed = r.decide(&s, 5_000);
        match &placed[..] {
            [Event::InstancePlaced { stages, .. }] => {
                assert_eq!(stages.len(), 3);
                assert_eq!(stages[0].first_layer, 0);
                assert_eq!(stages[2].end_layer, 30);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_instance_is_removed_and_the_model_placed_again() {
        let mut s = state(&[("a", 1 << 30, 20.0), ("b", 1 << 30, 20.0)]);
        let mut r = Reconciler::new(ServePolicy::default());
        let e = r.decide(&s, 0);
        apply(&mut s, &e);
        all_stages(
            &mut s,
            StageStatus::Failed {
                reason: "disk".into(),
            },
        );
        let events = r.decide(&s, 100);
        assert!(matches!(events[0], Event::InstanceRemoved { .. }));
        assert!(matches!(events[1], Event::InstancePlaced { .. }));
    }

    #[test]
    fn a_faster_node_replaces_the_instance_make_before_break() {
        let mut s = state(&[("a", 1 << 30, 2.0)]);
        let policy = ServePolicy::default();
        let drain = policy.drain_ms;
        let mut r = Reconciler::new(policy);
        let e = r.decide(&s, 0);
        apply(&mut s, &e);
        all_stages(&mut s, StageStatus::Ready);
        let e = r.decide(&s, 100);
        apply(&mut s, &e);
        let old = s.instances.keys().next().unwrap().clone();
        s.members.insert(NodeId::new("b"), node("b", 1 << 30, 40.0));
        let moved = r.decide(&s, 5_000);
        match &moved[..] {
            [Event::InstancePlaced { stages, .. }] => assert_eq!(stages[0].node.as_str(), "b"),
            other => panic!("{other:?}"),
        }
        apply(&mut s, &moved);
        // The old instance keeps serving while the new one loads.
        assert_eq!(s.instances[&old].status, InstanceStatus::Ready);
        for (id, i) in s.instances.iter_mut() {
            if *id != old {
                i.stages[0].status = StageStatus::Ready;
            }
        }
        let switch = r.decide(&s, 5_100);
        apply(&mut s, &switch);
        assert_eq!(s.instances[&old].status, InstanceStatus::Draining);
        assert!(r
            .decide(&s, 5_200)
            .iter()
            .all(|e| !matches!(e, Event::InstanceRemoved { .. })));
        let removed = r.decide(&s, 5_100 + drain);
        assert!(matches!(&removed[..], [Event::InstanceRemoved { id }] if *id == old));
    }

    #[test]
    fn a_hot_device_is_relieved_and_small_gains_do_not_move_anything() {
        let mut s = state(&[("a", 1 << 30, 20.0), ("b", 1 << 30, 21.0)]);
        let mut r = Reconciler::new(ServePolicy::default());
        let e = r.decide(&s, 0);
        apply(&mut s, &e);
        all_stages(&mut s, StageStatus::Ready);
        let e = r.decide(&s, 100);
        apply(&mut s, &e);
        // 5 % faster elsewhere is below the hysteresis.
        assert!(r.decide(&s, 3_000).is_empty());
        let inst = s.instances.values().next().unwrap().clone();
        let hot = &inst.stages[0];
        let mut t = std::collections::BTreeMap::new();
        t.insert(
            hot.device.clone(),
            DeviceTelemetry {
                device: hot.device.clone(),
                memory_used_bytes: 0,
                utilisation: 1.0,
                temperature_c: Some(95.0),
                power_w: None,
                battery: None,
                on_battery: false,
                throttled: false,
                thermal_headroom: 0.1,
                sampled_ms: 0,
            },
        );
        s.telemetry.insert(hot.node.clone(), t);
        let moved = r.decide(&s, 6_000);
        match &moved[..] {
            [Event::InstancePlaced { stages, .. }] => assert_ne!(stages[0].node, hot.node),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn instances_of_unwanted_models_drain_then_go() {
        let mut s = state(&[("a", 1 << 30, 20.0)]);
        let mut r = Reconciler::new(ServePolicy::default());
        let e = r.decide(&s, 0);
        apply(&mut s, &e);
        s.wanted.clear();
        let drain = r.decide(&s, 100);
        assert!(matches!(
            &drain[..],
            [Event::InstanceStatus {
                status: InstanceStatus::Draining,
                ..
            }]
        ));
        apply(&mut s, &drain);
        assert!(r.decide(&s, 200).is_empty());
        assert!(matches!(
            &r.decide(&s, 100 + ServePolicy::default().drain_ms)[..],
            [Event::InstanceRemoved { .. }]
        ));
    }
}
