//! The rules: pure functions of the cluster state, the [`History`] and the policy, each
//! returning the conditions that hold now.

use super::{AlertPolicy, Firing, Severity, Subject};
use hearth_cluster::{ClusterState, InstanceStatus, NodeId};
use std::collections::{BTreeMap, VecDeque};

/// A device reports `throttled`: it already runs below the speed it was planned for.
pub const DEVICE_THROTTLED: &str = "device_throttled";
/// A device's thermal headroom falls fast enough to reach 0 soon.
pub const DEVICE_THROTTLE_PREDICTED: &str = "device_throttle_predicted";
pub const MEMORY_PRESSURE: &str = "memory_pressure";
/// A member disappeared from the state (left or timed out).
pub const NODE_LOST: &str = "node_lost";
pub const LINK_DEGRADED: &str = "link_degraded";
pub const PLACEMENT_FAILED: &str = "placement_failed";
/// An instance has been placing or loading for longer than the policy allows.
pub const PLACEMENT_STALLED: &str = "placement_stalled";
/// Raised by the code that downloads a model when it gives up (no rule derives it).
#[allow(dead_code)]
pub const MODEL_DOWNLOAD_FAILED: &str = "model_download_failed";

/// What the rules remember between evaluations: one state cannot tell a trend, a departure
/// or how long something has lasted. Everything in it is bounded by what the state holds.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// `(sampled_ms, thermal headroom)` per `(node, device)`, oldest first.
    headroom: BTreeMap<(NodeId, String), VecDeque<(u64, f64)>>,
    /// Members at the last evaluation and their names; `None` before the first.
    members: Option<BTreeMap<NodeId, String>>,
    /// Members that disappeared, with their name and when it was noticed.
    lost: BTreeMap<NodeId, (String, u64)>,
    /// Instances placing or loading, since when.
    pending: BTreeMap<String, u64>,
}

impl History {
    /// Takes in one state, seen at `now_ms` (this node's clock).
    pub fn observe(&mut self, state: &ClusterState, policy: &AlertPolicy, now_ms: u64) {
        for (node, devices) in &state.telemetry {
            for (device, t) in devices {
                let samples = self
                    .headroom
                    .entry((node.clone(), device.clone()))
                    .or_default();
                // The state repeats the last sample until a new one arrives.
                if samples.back().is_none_or(|&(at, _)| t.sampled_ms > at) {
                    samples.push_back((t.sampled_ms, t.thermal_headroom));
                    while samples.len() > policy.thermal_samples.max(2) {
                        samples.pop_front();
                    }
                }
            }
        }
        self.headroom.retain(|(node, device), _| {
            state
                .telemetry
                .get(node)
                .is_some_and(|d| d.contains_key(device))
        });

        let members: BTreeMap<NodeId, String> = state
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.name.clone()))
            .collect();
        if let Some(previous) = &self.members {
            for (id, name) in previous {
                if !members.contains_key(id) {
                    self.lost
                        .entry(id.clone())
                        .or_insert_with(|| (name.clone(), now_ms));
                }
            }
        }
        self.lost.retain(|id, (_, since)| {
            !members.contains_key(id) && now_ms.saturating_sub(*since) < policy.node_lost_hold_ms
        });
        self.members = Some(members);

        for (id, instance) in &state.instances {
            if pending(&instance.status) {
                self.pending.entry(id.clone()).or_insert(now_ms);
            }
        }
        self.pending
            .retain(|id, _| state.instances.get(id).is_some_and(|i| pending(&i.status)));
    }
}

fn pending(s: &InstanceStatus) -> bool {
    matches!(s, InstanceStatus::Placing | InstanceStatus::Loading { .. })
}

/// Every rule.
pub fn evaluate(
    state: &ClusterState,
    history: &History,
    policy: &AlertPolicy,
    now_ms: u64,
) -> Vec<Firing> {
    let mut out = thermal(state, history, policy);
    out.extend(memory(state, policy));
    out.extend(node_lost(history));
    out.extend(links(state, policy));
    out.extend(placement(state, history, policy, now_ms));
    out
}

/// The name people gave a member, or the tail of its id.
fn node_name(state: &ClusterState, id: &NodeId) -> String {
    state
        .members
        .get(id)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| short(id.as_str()).to_string())
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// Seconds until the headroom reaches 0 on the least-squares line through `samples`
/// (`(ms, headroom)`); `None` when it is not falling, or too few samples to tell.
pub fn time_to_exhaustion_s(samples: &VecDeque<(u64, f64)>, min_samples: usize) -> Option<f64> {
    let &(_, last) = samples.back()?;
    if last <= 0.0 {
        return Some(0.0);
    }
    if samples.len() < min_samples.max(2) {
        return None;
    }
    let t0 = samples.front()?.0;
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|&(t, h)| (t.saturating_sub(t0) as f64 / 1e3, h))
        .collect();
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_h = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_h)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    (slope < 0.0 && slope.is_finite()).then(|| last / -slope)
}

/// Throttling now (critical) or predicted from the headroom trend (warning).
pub fn thermal(state: &ClusterState, history: &History, policy: &AlertPolicy) -> Vec<Firing> {
    let mut out = Vec::new();
    for (node, devices) in &state.telemetry {
        for (device, t) in devices {
            let subject = Subject::Device {
                node: node.to_string(),
                device: device.clone(),
            };
            let name = node_name(state, node);
            let temp = t
                .temperature_c
                .map_or(String::new(), |c| format!(" at {c:.0} °C"));
            if t.throttled {
                out.push(Firing {
                    name: DEVICE_THROTTLED,
                    severity: Severity::Critical,
                    subject,
                    message: format!(
                        "{device} on {name} is throttling{temp} and runs slower than it was \
                         planned for. Cool it (airflow, a cooler room, plugged in) or lower its \
                         load; the cluster moves work away from it as its headroom drops."
                    ),
                });
                continue;
            }
            let Some(eta) = history
                .headroom
                .get(&(node.clone(), device.clone()))
                .and_then(|s| time_to_exhaustion_s(s, policy.thermal_min_samples))
            else {
                continue;
            };
            if eta < policy.throttle_warning_s {
                out.push(Firing {
                    name: DEVICE_THROTTLE_PREDICTED,
                    severity: Severity::Warning,
                    subject,
                    message: format!(
                        "{device} on {name}{temp} has {:.0} % thermal headroom left and is \
                         on course to throttle in about {}. Improve its cooling or give it \
                         less work before it slows the cluster down.",
                        100.0 * t.thermal_headroom,
                        duration(eta)
                    ),
                });
            }
        }
    }
    out
}

fn duration(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

/// Used over total memory of each device with telemetry.
pub fn memory(state: &ClusterState, policy: &AlertPolicy) -> Vec<Firing> {
    let mut out = Vec::new();
    for (node, devices) in &state.telemetry {
        for (device, t) in devices {
            let Some(total) = state
                .members
                .get(node)
                .and_then(|m| m.devices.iter().find(|d| &d.id == device))
                .map(|d| d.memory_total_bytes)
                .filter(|&b| b > 0)
            else {
                continue;
            };
            let ratio = t.memory_used_bytes as f64 / total as f64;
            let severity = if ratio >= policy.memory_critical_ratio {
                Severity::Critical
            } else if ratio >= policy.memory_warning_ratio {
                Severity::Warning
            } else {
                continue;
            };
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            out.push(Firing {
                name: MEMORY_PRESSURE,
                severity,
                subject: Subject::Device {
                    node: node.to_string(),
                    device: device.clone(),
                },
                message: format!(
                    "{device} on {} has {:.1} of {:.1} GiB in use ({:.0} %). Free memory there \
                     (close other programs) or give it a smaller memory budget so fewer layers \
                     are placed on it.",
                    node_name(state, node),
                    gib(t.memory_used_bytes),
                    gib(total),
                    100.0 * ratio
                ),
            });
        }
    }
    out
}

/// Members that disappeared, for [`AlertPolicy::node_lost_hold_ms`] or until they return.
pub fn node_lost(history: &History) -> Vec<Firing> {
    history
        .lost
        .iter()
        .map(|(id, (name, _))| Firing {
            name: NODE_LOST,
            severity: Severity::Warning,
            subject: Subject::Node {
                node: id.to_string(),
            },
            message: format!(
                "{name} ({}) is no longer in the cluster: it stopped, crashed or cannot be \
                 reached. If it was not stopped on purpose, check that `hearth up` runs there \
                 and that it can reach the other nodes; work placed on it is re-planned.",
                short(id.as_str())
            ),
        })
        .collect()
}

/// Links whose RTT p95 or loss is beyond the policy.
pub fn links(state: &ClusterState, policy: &AlertPolicy) -> Vec<Firing> {
    let mut out = Vec::new();
    for (from, row) in &state.links {
        for (to, l) in row {
            let loss = l.loss.unwrap_or(0.0);
            let slow = l.rtt_p95_ms > policy.link_rtt_p95_ms;
            let lossy = loss > policy.link_loss_ratio;
            if !slow && !lossy {
                continue;
            }
            out.push(Firing {
                name: LINK_DEGRADED,
                severity: Severity::Warning,
                subject: Subject::Link {
                    from: from.to_string(),
                    to: to.to_string(),
                },
                message: format!(
                    "the link {} -> {} is degraded: RTT p95 {:.1} ms (limit {:.0}), loss {:.1} % \
                     (limit {:.1}). Move the devices closer to the access point or onto a \
                     wired link; stages split across it slow every token.",
                    node_name(state, from),
                    node_name(state, to),
                    l.rtt_p95_ms,
                    policy.link_rtt_p95_ms,
                    100.0 * loss,
                    100.0 * policy.link_loss_ratio
                ),
            });
        }
    }
    out
}

/// Instances that failed (critical) or have been placing or loading too long (warning).
pub fn placement(
    state: &ClusterState,
    history: &History,
    policy: &AlertPolicy,
    now_ms: u64,
) -> Vec<Firing> {
    let mut out = Vec::new();
    for (id, instance) in &state.instances {
        let subject = Subject::Instance {
            instance: id.clone(),
        };
        let model = &instance.model;
        match &instance.status {
            InstanceStatus::Failed { reason } => out.push(Firing {
                name: PLACEMENT_FAILED,
                severity: Severity::Critical,
                subject,
                message: format!(
                    "instance {id} of {model} failed: {reason}. Add a device or free memory \
                     where the planner says it is short, or serve a smaller model or \
                     quantization."
                ),
            }),
            status @ (InstanceStatus::Placing | InstanceStatus::Loading { .. }) => {
                let Some(&since) = history.pending.get(id) else {
                    continue;
                };
                let waited = now_ms.saturating_sub(since);
                if waited < policy.placement_stall_ms {
                    continue;
                }
                let doing = match status {
                    InstanceStatus::Loading { progress } => {
                        format!("loading ({:.0} %)", 100.0 * progress)
                    }
                    _ => "placing".to_string(),
                };
                out.push(Firing {
                    name: PLACEMENT_STALLED,
                    severity: Severity::Warning,
                    subject,
                    message: format!(
                        "instance {id} of {model} has been {doing} for {}. Check the logs of \
                         the nodes its stages are on (a slow disk or download, a node that \
                         keeps leaving).",
                        duration(waited as f64 / 1e3)
                    ),
                });
            }
            InstanceStatus::Ready | InstanceStatus::Draining => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{AlertBook, Change};
    use super::*;
    use hearth_cluster::{DeviceSummary, DeviceTelemetry, Instance, LinkStats, NodeEntry, Stage};

    fn entry(name: &str, devices: &[(&str, u64)]) -> NodeEntry {
        NodeEntry {
            name: name.to_string(),
            addresses: Vec::new(),
            devices: devices
                .iter()
                .map(|&(id, total)| DeviceSummary {
                    id: id.to_string(),
                    name: id.to_string(),
                    backends: vec!["cpu".to_string()],
                    memory_total_bytes: total,
                    memory_budget_bytes: total,
                    bandwidth_gbs: 10.0,
                    tflops: 0.1,
                    thermal_headroom: 1.0,
                    declared: false,
                })
                .collect(),
            last_seen_ms: 0,
            incarnation: 1,
            joined_seq: 1,
        }
    }

    fn telemetry(device: &str, used: u64, headroom: f64, at: u64) -> DeviceTelemetry {
        DeviceTelemetry {
            device: device.to_string(),
            memory_used_bytes: used,
            utilisation: 0.5,
            temperature_c: Some(60.0),
            power_w: Some(20.0),
            battery: None,
            on_battery: false,
            throttled: false,
            thermal_headroom: headroom,
            sampled_ms: at,
        }
    }

    /// Two members, `a` (device `cpu-a`, 10 GiB) and `b` (device `cpu-b`).
    fn two_nodes() -> ClusterState {
        let mut s = ClusterState {
            epoch: 1,
            coordinator: Some("a".into()),
            ..ClusterState::default()
        };
        s.members
            .insert("a".into(), entry("alpha", &[("cpu-a", 10 << 30)]));
        s.members
            .insert("b".into(), entry("beta", &[("cpu-b", 10 << 30)]));
        for (n, d) in [("a", "cpu-a"), ("b", "cpu-b")] {
            s.telemetry
                .entry(n.into())
                .or_default()
                .insert(d.to_string(), telemetry(d, 1 << 30, 1.0, 0));
        }
        s
    }

    fn set_telemetry(s: &mut ClusterState, node: &str, t: DeviceTelemetry) {
        s.telemetry
            .entry(node.into())
            .or_default()
            .insert(t.device.clone(), t);
    }

    fn active_names(book: &AlertBook) -> Vec<(String, Severity)> {
        book.active()
            .iter()
            .map(|a| (a.name.clone(), a.severity))
            .collect()
    }

    fn started(changes: &[Change], name: &str) -> bool {
        changes
            .iter()
            .any(|c| matches!(c, Change::Started(a) if a.name == name))
    }

    fn resolved(changes: &[Change], name: &str) -> bool {
        changes
            .iter()
            .any(|c| matches!(c, Change::Resolved(a) if a.name == name))
    }

    #[test]
    fn a_calm_cluster_raises_nothing() {
        let mut book = AlertBook::default();
        let s = two_nodes();
        for t in 0..5 {
            assert!(book.evaluate(&s, t * 1000).is_empty());
        }
        assert!(book.active().is_empty());
    }

    #[test]
    fn throttled_is_critical_while_it_lasts_then_resolves() {
        let mut book = AlertBook::default();
        let mut s = two_nodes();
        let mut t = telemetry("cpu-a", 1 << 30, 0.0, 1000);
        t.throttled = true;
        t.temperature_c = Some(92.0);
        set_telemetry(&mut s, "a", t.clone());
        let c = book.evaluate(&s, 1000);
        assert!(started(&c, DEVICE_THROTTLED), "{c:?}");
        let a = book.active()[0].clone();
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(
            a.subject,
            Subject::Device {
                node: "a".into(),
                device: "cpu-a".into()
            }
        );
        assert!(a.message.contains("alpha") && a.message.contains("92 °C"));
        assert_eq!(a.started_ms, 1000);

        // Still throttled: the same alert, nothing new.
        t.sampled_ms = 2000;
        set_telemetry(&mut s, "a", t.clone());
        assert!(book.evaluate(&s, 2000).is_empty());
        assert_eq!(book.active()[0].started_ms, 1000);

        // Cool again: resolved, and listed as such.
        t.throttled = false;
        t.thermal_headroom = 0.8;
        t.sampled_ms = 3000;
        set_telemetry(&mut s, "a", t);
        let c = book.evaluate(&s, 3000);
        assert!(resolved(&c, DEVICE_THROTTLED), "{c:?}");
        assert!(book.active().is_empty());
        let r: Vec<_> = book.resolved().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ended_ms, Some(3000));
    }

    #[test]
    fn a_falling_headroom_trend_predicts_throttling() {
        let policy = AlertPolicy::default();
        let mut book = AlertBook::new(policy.clone());
        let mut s = two_nodes();
        // Headroom falls 1 % per second: zero in well under the warning horizon.
        let mut h = 0.9;
        let mut now = 0;
        let mut first_alert = None;
        for i in 0..10u64 {
            now = 1000 * (i + 1);
            set_telemetry(&mut s, "a", telemetry("cpu-a", 1 << 30, h, now));
            let c = book.evaluate(&s, now);
            if started(&c, DEVICE_THROTTLE_PREDICTED) {
                first_alert = Some(i + 1);
            }
            h -= 0.01;
        }
        // Not before enough samples make a trend.
        assert_eq!(first_alert, Some(policy.thermal_min_samples as u64));
        let a = book.active()[0].clone();
        assert_eq!(a.name, DEVICE_THROTTLE_PREDICTED);
        assert_eq!(a.severity, Severity::Warning);
        assert!(a.message.contains("81 %"), "{}", a.message);
        assert!(a.message.contains("in about"), "{}", a.message);

        // The headroom recovers and stays up: the trend turns and the alert resolves.
        let mut resolved_at = None;
        for i in 0..30u64 {
            now += 1000;
            set_telemetry(&mut s, "a", telemetry("cpu-a", 1 << 30, 0.95, now));
            if resolved(&book.evaluate(&s, now), DEVICE_THROTTLE_PREDICTED) {
                resolved_at = Some(i);
                break;
            }
        }
        assert!(resolved_at.is_some());
        assert!(book.active().is_empty());
    }

    #[test]
    fn a_slow_or_flat_trend_predicts_nothing() {
        let mut samples = VecDeque::new();
        for i in 0..10u64 {
            // 0.01 % per second from 0.8: about 2 h to zero.
            samples.push_back((i * 1000, 0.8 - 0.0001 * i as f64));
        }
        let eta = time_to_exhaustion_s(&samples, 5).unwrap();
        assert!((eta - 0.7991 / 0.0001).abs() < 1.0, "{eta}");
        assert!(eta > AlertPolicy::default().throttle_warning_s);

        let flat: VecDeque<(u64, f64)> = (0..10).map(|i| (i * 1000, 0.5)).collect();
        assert_eq!(time_to_exhaustion_s(&flat, 5), None);
        let rising: VecDeque<(u64, f64)> = (0..10).map(|i| (i * 1000, 0.1 * i as f64)).collect();
        assert_eq!(time_to_exhaustion_s(&rising, 5), None);
        let few: VecDeque<(u64, f64)> = (0..3).map(|i| (i * 1000, 0.9 - 0.1 * i as f64)).collect();
        assert_eq!(time_to_exhaustion_s(&few, 5), None);
        let exhausted: VecDeque<(u64, f64)> = [(0, 0.0)].into_iter().collect();
        assert_eq!(time_to_exhaustion_s(&exhausted, 5), Some(0.0));
    }

    #[test]
    fn memory_pressure_warns_escalates_and_resolves() {
        let mut book = AlertBook::default();
        let mut s = two_nodes();
        let total = 10u64 << 30;
        set_telemetry(&mut s, "b", telemetry("cpu-b", total / 100 * 92, 1.0, 1));
        let c = book.evaluate(&s, 1000);
        assert!(started(&c, MEMORY_PRESSURE));
        assert_eq!(
            active_names(&book),
            vec![(MEMORY_PRESSURE.to_string(), Severity::Warning)]
        );
        assert!(book.active()[0].message.contains("92 %"));

        set_telemetry(&mut s, "b", telemetry("cpu-b", total / 100 * 99, 1.0, 2));
        let c = book.evaluate(&s, 2000);
        assert!(matches!(&c[..], [Change::Changed(a)] if a.severity == Severity::Critical));
        assert_eq!(book.active()[0].started_ms, 1000, "the same alert goes on");

        set_telemetry(&mut s, "b", telemetry("cpu-b", total / 2, 1.0, 3));
        assert!(resolved(&book.evaluate(&s, 3000), MEMORY_PRESSURE));
        assert!(book.active().is_empty());
    }

    #[test]
    fn a_lost_node_is_reported_for_the_hold_time_then_resolves() {
        let policy = AlertPolicy {
            node_lost_hold_ms: 10_000,
            ..AlertPolicy::default()
        };
        let mut book = AlertBook::new(policy);
        let mut s = two_nodes();
        assert!(book.evaluate(&s, 1000).is_empty());
        s.members.remove(&NodeId::from("b"));
        s.telemetry.remove(&NodeId::from("b"));
        let c = book.evaluate(&s, 2000);
        assert!(started(&c, NODE_LOST), "{c:?}");
        let a = book.active()[0].clone();
        assert_eq!(a.subject, Subject::Node { node: "b".into() });
        assert!(a.message.contains("beta"));
        // Stays while it is away, within the hold.
        assert!(book.evaluate(&s, 6000).is_empty());
        assert_eq!(book.active().len(), 1);
        // Then resolves, even though it never came back.
        let c = book.evaluate(&s, 12_000);
        assert!(resolved(&c, NODE_LOST), "{c:?}");
        assert!(book.evaluate(&s, 13_000).is_empty());
        assert!(book.active().is_empty());
    }

    #[test]
    fn a_lost_node_that_returns_resolves_at_once() {
        let mut book = AlertBook::default();
        let mut s = two_nodes();
        book.evaluate(&s, 1000);
        let b = s.members.remove(&NodeId::from("b")).unwrap();
        assert!(started(&book.evaluate(&s, 2000), NODE_LOST));
        s.members.insert("b".into(), b);
        assert!(resolved(&book.evaluate(&s, 3000), NODE_LOST));
        assert!(book.active().is_empty());
    }

    #[test]
    fn the_first_evaluation_reports_no_departures() {
        // A node that starts into an empty state, then learns the cluster, lost nobody.
        let mut book = AlertBook::default();
        book.evaluate(&ClusterState::default(), 0);
        assert!(book.evaluate(&two_nodes(), 1000).is_empty());
    }

    #[test]
    fn a_slow_or_lossy_link_is_degraded_until_it_recovers() {
        let policy = AlertPolicy::default();
        let mut book = AlertBook::new(policy.clone());
        let mut s = two_nodes();
        let link = |p95: f64, loss: Option<f64>| LinkStats {
            rtt_p50_ms: p95 / 2.0,
            rtt_p95_ms: p95,
            throughput_mbps: Some(100.0),
            loss,
            measured_ms: 0,
        };
        s.links
            .entry("a".into())
            .or_default()
            .insert("b".into(), link(2.0, Some(0.0)));
        assert!(book.evaluate(&s, 1000).is_empty());

        s.links
            .entry("a".into())
            .or_default()
            .insert("b".into(), link(policy.link_rtt_p95_ms + 50.0, None));
        let c = book.evaluate(&s, 2000);
        assert!(started(&c, LINK_DEGRADED));
        assert_eq!(
            book.active()[0].subject,
            Subject::Link {
                from: "a".into(),
                to: "b".into()
            }
        );
        assert!(book.active()[0].message.contains("alpha -> beta"));

        // Fast again but lossy: the same alert stays.
        s.links
            .entry("a".into())
            .or_default()
            .insert("b".into(), link(2.0, Some(0.2)));
        assert!(book.evaluate(&s, 3000).is_empty());
        assert!(book.active()[0].message.contains("loss 20.0 %"));

        s.links
            .entry("a".into())
            .or_default()
            .insert("b".into(), link(2.0, Some(0.0)));
        assert!(resolved(&book.evaluate(&s, 4000), LINK_DEGRADED));
    }

    fn instance(status: InstanceStatus) -> Instance {
        Instance {
            model: "smollm2-135m".into(),
            stages: vec![Stage {
                node: "a".into(),
                device: "cpu-a".into(),
                first_layer: 0,
                end_layer: 30,
                status: Default::default(),
            }],
            status,
            predicted_tokens_per_s: 0.0,
        }
    }

    #[test]
    fn a_failed_instance_is_critical_until_it_is_replaced() {
        let mut book = AlertBook::default();
        let mut s = two_nodes();
        s.instances.insert(
            "i1".into(),
            instance(InstanceStatus::Failed {
                reason: "no device has 2 GiB free".into(),
            }),
        );
        let c = book.evaluate(&s, 1000);
        assert!(started(&c, PLACEMENT_FAILED));
        let a = book.active()[0].clone();
        assert_eq!(a.severity, Severity::Critical);
        assert!(a.message.contains("no device has 2 GiB free"));
        assert!(book.evaluate(&s, 2000).is_empty());
        s.instances
            .insert("i1".into(), instance(InstanceStatus::Ready));
        assert!(resolved(&book.evaluate(&s, 3000), PLACEMENT_FAILED));
    }

    #[test]
    fn placing_or_loading_too_long_is_stalled() {
        let policy = AlertPolicy {
            placement_stall_ms: 60_000,
            ..AlertPolicy::default()
        };
        let mut book = AlertBook::new(policy);
        let mut s = two_nodes();
        s.instances
            .insert("i1".into(), instance(InstanceStatus::Placing));
        assert!(book.evaluate(&s, 0).is_empty());
        // Placing then loading is one wait.
        s.instances.insert(
            "i1".into(),
            instance(InstanceStatus::Loading { progress: 0.25 }),
        );
        assert!(book.evaluate(&s, 59_000).is_empty());
        let c = book.evaluate(&s, 61_000);
        assert!(started(&c, PLACEMENT_STALLED), "{c:?}");
        assert!(book.active()[0].message.contains("loading (25 %)"));
        assert!(book.evaluate(&s, 70_000).is_empty());
        s.instances
            .insert("i1".into(), instance(InstanceStatus::Ready));
        assert!(resolved(&book.evaluate(&s, 71_000), PLACEMENT_STALLED));
        // A new wait starts from zero.
        s.instances
            .insert("i1".into(), instance(InstanceStatus::Placing));
        assert!(book.evaluate(&s, 72_000).is_empty());
    }

    #[test]
    fn a_raised_alert_stays_until_resolved_by_name() {
        let mut book = AlertBook::default();
        let s = two_nodes();
        let subject = Subject::Model {
            model: "gemma3-270m".into(),
        };
        let c = book.raise(
            MODEL_DOWNLOAD_FAILED,
            Severity::Warning,
            subject.clone(),
            "download failed".into(),
            1000,
        );
        assert!(matches!(c, Some(Change::Started(_))));
        // Evaluations do not end what no rule started.
        assert!(book.evaluate(&s, 2000).is_empty());
        assert_eq!(
            active_names(&book),
            vec![(MODEL_DOWNLOAD_FAILED.to_string(), Severity::Warning)]
        );
        // Raising again is the same alert.
        assert!(book
            .raise(
                MODEL_DOWNLOAD_FAILED,
                Severity::Warning,
                subject.clone(),
                "again".into(),
                2500
            )
            .is_none());
        assert!(matches!(
            book.resolve(MODEL_DOWNLOAD_FAILED, &subject, 3000),
            Some(Change::Resolved(_))
        ));
        assert!(book
            .resolve(MODEL_DOWNLOAD_FAILED, &subject, 3100)
            .is_none());
        assert!(book.active().is_empty());
        assert_eq!(book.resolved().next().unwrap().message, "again");
    }

    #[test]
    fn resolved_alerts_are_kept_for_a_while_and_bounded() {
        let policy = AlertPolicy {
            keep_resolved_ms: 10_000,
            max_resolved: 3,
            ..AlertPolicy::default()
        };
        let mut book = AlertBook::new(policy);
        let s = two_nodes();
        for i in 0..5u64 {
            let subject = Subject::Model {
                model: format!("m{i}"),
            };
            book.raise("x", Severity::Info, subject.clone(), String::new(), i);
            book.resolve("x", &subject, i);
        }
        let kept: Vec<_> = book.resolved().map(|a| a.subject.clone()).collect();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0], Subject::Model { model: "m4".into() });
        book.evaluate(&s, 20_000);
        assert_eq!(book.resolved().count(), 0);
    }

    #[test]
    fn history_forgets_devices_and_instances_that_left_the_state() {
        let policy = AlertPolicy::default();
        let mut h = History::default();
        let mut s = two_nodes();
        s.instances
            .insert("i1".into(), instance(InstanceStatus::Placing));
        h.observe(&s, &policy, 0);
        assert_eq!(h.headroom.len(), 2);
        assert_eq!(h.pending.len(), 1);
        s.telemetry.remove(&NodeId::from("b"));
        s.instances.clear();
        h.observe(&s, &policy, 1);
        assert_eq!(h.headroom.len(), 1);
        assert!(h.pending.is_empty());
        // A repeated sample is not a new point of the trend.
        h.observe(&s, &policy, 2);
        assert_eq!(h.headroom.values().next().unwrap().len(), 1);
    }
}
