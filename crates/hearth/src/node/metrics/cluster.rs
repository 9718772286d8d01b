//! The cluster as this node sees it, as metric families built from the [`View`] at each
//! scrape: members, devices and their telemetry, links, instances and their stages, this
//! node's peer-layer refusals, and active alerts. Built fresh every time, so a member that left
//! is simply absent.

use super::super::view::{SharedView, View};
use hearth_cluster::InstanceStatus;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::collections::BTreeMap;

/// Labels of one series, in order.
pub type Labels = Vec<(&'static str, String)>;

/// One family: its name without the registry's prefix and unit suffix, and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyData {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub kind: Kind,
    pub series: Vec<(Labels, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// A count another part of the node keeps; encoded as an integer.
    Counter,
}

/// The units the Prometheus conventions name and `prometheus-client` has no variant for.
fn unit(name: &str) -> Option<Unit> {
    Some(match name {
        "bytes" => Unit::Bytes,
        "seconds" => Unit::Seconds,
        "celsius" => Unit::Celsius,
        other => Unit::Other(other.to_string()),
    })
}

/// Every state of an instance, so each instance has exactly one series at 1.
pub const INSTANCE_STATES: [&str; 5] = ["placing", "loading", "ready", "draining", "failed"];

fn state_name(s: &InstanceStatus) -> &'static str {
    match s {
        InstanceStatus::Placing => "placing",
        InstanceStatus::Loading { .. } => "loading",
        InstanceStatus::Ready => "ready",
        InstanceStatus::Draining => "draining",
        InstanceStatus::Failed { .. } => "failed",
    }
}

struct Builder(Vec<FamilyData>);

impl Builder {
    fn family(&mut self, name: &'static str, help: &'static str, u: Option<&str>, kind: Kind) {
        self.0.push(FamilyData {
            name,
            help,
            unit: u.and_then(unit),
            kind,
            series: Vec::new(),
        });
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, u: Option<&str>) {
        self.family(name, help, u, Kind::Gauge);
    }

    /// Adds a series to the family declared last under `name`.
    fn push(&mut self, name: &'static str, labels: Labels, value: f64) {
        if let Some(f) = self.0.iter_mut().rev().find(|f| f.name == name) {
            f.series.push((labels, value));
        }
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The families for `view`. Families without series are left out.
pub fn families(view: &View) -> Vec<FamilyData> {
    let s = &view.state;
    let mut b = Builder(Vec::new());

    b.gauge("cluster_members", "Members of the cluster", None);
    b.push("cluster_members", vec![], s.members.len() as f64);
    b.gauge(
        "cluster_epoch",
        "Epoch of the current coordinator's reign",
        None,
    );
    b.push("cluster_epoch", vec![], s.epoch as f64);
    b.gauge(
        "cluster_last_seq",
        "Sequence number of the last event applied to the cluster state",
        None,
    );
    b.push("cluster_last_seq", vec![], s.last_seq as f64);
    b.gauge(
        "cluster_coordinator",
        "1 for the member that coordinates the cluster",
        None,
    );
    if let Some(c) = &s.coordinator {
        b.push("cluster_coordinator", vec![("node", c.to_string())], 1.0);
    }
    b.gauge(
        "node_info",
        "1 for each member, labelled with the name it was given",
        None,
    );
    for (id, m) in &s.members {
        b.push(
            "node_info",
            vec![("node", id.to_string()), ("name", m.name.clone())],
            1.0,
        );
    }

    let summaries = [
        ("device_memory_total", "Memory of the device", Some("bytes")),
        (
            "device_memory_budget",
            "Memory of the device hearth may use",
            Some("bytes"),
        ),
        (
            "device_memory_bandwidth",
            "Measured memory bandwidth of the device",
            Some("bytes_per_second"),
        ),
        (
            "device_compute",
            "Measured dense compute throughput of the device",
            Some("flops_per_second"),
        ),
        (
            "device_declared",
            "1 when the device's figures come from a declared profile, not a probe",
            None,
        ),
    ];
    for (name, help, u) in summaries {
        b.gauge(name, help, u);
    }
    for (id, m) in &s.members {
        for d in &m.devices {
            let l = || vec![("node", id.to_string()), ("device", d.id.clone())];
            b.push("device_memory_total", l(), d.memory_total_bytes as f64);
            b.push("device_memory_budget", l(), d.memory_budget_bytes as f64);
            b.push("device_memory_bandwidth", l(), d.bandwidth_gbs * 1e9);
            b.push("device_compute", l(), d.tflops * 1e12);
            b.push("device_declared", l(), flag(d.declared));
        }
    }

    let live = [
        (
            "device_memory_used",
            "Memory in use on the device",
            Some("bytes"),
        ),
        (
            "device_utilisation",
            "Busy fraction of the device",
            Some("ratio"),
        ),
        (
            "device_temperature",
            "Temperature of the device",
            Some("celsius"),
        ),
        ("device_power", "Power drawn by the device", Some("watts")),
        (
            "device_thermal_headroom",
            "Fraction of full load the device can sustain at its temperature limit (1 = cool)",
            Some("ratio"),
        ),
        (
            "device_battery",
            "Battery charge of the device",
            Some("ratio"),
        ),
        (
            "device_on_battery",
            "1 while the device runs on battery",
            None,
        ),
        ("device_throttled", "1 while the device is throttling", None),
    ];
    for (name, help, u) in live {
        b.gauge(name, help, u);
    }
    for (node, devices) in &s.telemetry {
        for (device, t) in devices {
            let l = || vec![("node", node.to_string()), ("device", device.clone())];
            b.push("device_memory_used", l(), t.memory_used_bytes as f64);
            b.push("device_utilisation", l(), t.utilisation);
            if let Some(c) = t.temperature_c {
                b.push("device_temperature", l(), c);
            }
            if let Some(w) = t.power_w {
                b.push("device_power", l(), w);
            }
            b.push("device_thermal_headroom", l(), t.thermal_headroom);
            if let Some(level) = t.battery {
                b.push("device_battery", l(), level);
            }
            b.push("device_on_battery", l(), flag(t.on_battery));
            b.push("device_throttled", l(), flag(t.throttled));
        }
    }

    b.gauge(
        "link_rtt_p50",
        "Median round-trip time of the link, as measured by its `from` end",
        Some("seconds"),
    );
    b.gauge(
        "link_rtt_p95",
        "95th percentile round-trip time of the link",
        Some("seconds"),
    );
    b.gauge(
        "link_throughput",
        "Measured throughput of the link",
        Some("bytes_per_second"),
    );
    b.gauge(
        "link_loss",
        "Fraction of probes lost on the link",
        Some("ratio"),
    );
    for (from, row) in &s.links {
        for (to, l) in row {
            let labels = || vec![("from", from.to_string()), ("to", to.to_string())];
            b.push("link_rtt_p50", labels(), l.rtt_p50_ms / 1e3);
            b.push("link_rtt_p95", labels(), l.rtt_p95_ms / 1e3);
            if let Some(mbps) = l.throughput_mbps {
                b.push("link_throughput", labels(), mbps * 1e6 / 8.0);
            }
            if let Some(loss) = l.loss {
                b.push("link_loss", labels(), loss);
            }
        }
    }

    b.gauge(
        "instance_state",
        "1 for the state each model instance is in (placing, loading, ready, draining, failed)",
        None,
    );
    b.gauge(
        "instance_loading_progress",
        "How much of a loading instance is loaded",
        Some("ratio"),
    );
    b.gauge(
        "instance_stage_first_layer",
        "First layer of a stage of a model instance",
        None,
    );
    b.gauge(
        "instance_stage_end_layer",
        "Layer after the last one of a stage of a model instance",
        None,
    );
    b.gauge(
        "instance_stage_layers",
        "Layers run by a stage of a model instance",
        None,
    );
    for (id, inst) in &s.instances {
        let now = state_name(&inst.status);
        for state in INSTANCE_STATES {
            b.push(
                "instance_state",
                vec![
                    ("instance", id.clone()),
                    ("model", inst.model.clone()),
                    ("state", state.to_string()),
                ],
                flag(state == now),
            );
        }
        if let InstanceStatus::Loading { progress } = inst.status {
            b.push(
                "instance_loading_progress",
                vec![("instance", id.clone()), ("model", inst.model.clone())],
                progress,
            );
        }
        for st in &inst.stages {
            let l = || {
                vec![
                    ("instance", id.clone()),
                    ("model", inst.model.clone()),
                    ("node", st.node.to_string()),
                    ("device", st.device.clone()),
                ]
            };
            b.push("instance_stage_first_layer", l(), f64::from(st.first_layer));
            b.push("instance_stage_end_layer", l(), f64::from(st.end_layer));
            b.push(
                "instance_stage_layers",
                l(),
                f64::from(st.end_layer.saturating_sub(st.first_layer)),
            );
        }
    }

    b.gauge(
        "live_peers",
        "Peers this node hears from directly now",
        None,
    );
    b.push("live_peers", vec![], view.live_peers.len() as f64);
    b.family(
        "peer_refusals",
        "Peers or messages this node's peer layer refused, by reason",
        None,
        Kind::Counter,
    );
    let n = &view.net;
    for (reason, count) in [
        ("admission", n.refused_admission),
        ("malformed", n.dropped_malformed),
        ("oversized", n.dropped_oversized),
        ("unadmitted", n.dropped_unadmitted),
    ] {
        b.push(
            "peer_refusals",
            vec![("reason", reason.to_string())],
            count as f64,
        );
    }

    b.gauge(
        "alerts",
        "Active alerts on this node, by name and severity",
        None,
    );
    let mut active: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for a in view.alerts.active() {
        *active.entry((a.name, a.severity.as_str())).or_default() += 1;
    }
    for ((name, severity), count) in active {
        b.push(
            "alerts",
            vec![("name", name), ("severity", severity.to_string())],
            count as f64,
        );
    }

    b.0.retain(|f| !f.series.is_empty());
    b.0
}

/// Encodes [`families`] of the view at each scrape.
#[derive(Debug)]
pub struct ClusterCollector {
    view: SharedView,
}

impl ClusterCollector {
    pub fn new(view: SharedView) -> ClusterCollector {
        ClusterCollector { view }
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Built under the read lock, encoded after it is released.
        let families = match self.view.read() {
            Ok(v) => families(&v),
            Err(_) => return Ok(()),
        };
        for f in &families {
            let kind = match f.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), kind)?;
            match f.series.as_slice() {
                [(labels, value)] if labels.is_empty() => encode_value(f.kind, *value, metric)?,
                series => {
                    for (labels, value) in series {
                        encode_value(f.kind, *value, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, value: f64, metric: MetricEncoder) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Gauge => ConstGauge::new(value).encode(metric),
        Kind::Counter => ConstCounter::new(value as u64).encode(metric),
    }
}
