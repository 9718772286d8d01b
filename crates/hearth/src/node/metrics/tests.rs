//! The exposition read back: names, units, types and help of every family, label sets that
//! follow the state, and the request lifecycle.

use super::cluster::{families, INSTANCE_STATES};
use super::*;
use crate::node::alerts::Alerts;
use crate::node::view::View;
use hearth_cluster::{
    ClusterState, DeviceSummary, DeviceTelemetry, Instance, InstanceStatus, LinkStats, NodeEntry,
    NodeId, Stage,
};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// What a Prometheus text exposition says.
#[derive(Debug, Default)]
struct Exposition {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and a text");
                assert!(
                    e.help.insert(name.into(), help.into()).is_none(),
                    "two HELP lines for {name}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
                assert!(
                    e.types.insert(name.into(), kind.into()).is_none(),
                    "two TYPE lines for {name}"
                );
            } else if line.starts_with('#') {
                continue;
            } else {
                e.samples.push(sample(line));
            }
        }
        e
    }

    /// The family a sample belongs to: its own name, or a histogram's base name.
    fn family_of(&self, name: &str) -> Option<&str> {
        if self.types.contains_key(name) {
            return self.types.get_key_value(name).map(|(k, _)| k.as_str());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base)? == "histogram")
                .then(|| self.types.get_key_value(base).map(|(k, _)| k.as_str()))?
        })
    }

    fn values(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|s| s.0 == name)
            .map(|s| (&s.1, s.2))
            .collect()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.values(name)
            .into_iter()
            .find(|(l, _)| {
                l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(|s| s.as_str()) == Some(*v))
            })
            .map(|(_, v)| v)
    }
}

fn sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}")),
    };
    let Some((name, labels)) = head.split_once('{') else {
        return (head.to_string(), BTreeMap::new(), value);
    };
    let labels = labels.strip_suffix('}').expect("labels end with }");
    let mut map = BTreeMap::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => val.push(chars.next().expect("escaped char").1),
                (i, '"') => break i,
                (_, c) => val.push(c),
            }
        };
        map.insert(key.to_string(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    (name.to_string(), map, value)
}

fn device(id: &str) -> DeviceSummary {
    DeviceSummary {
        id: id.to_string(),
        name: format!("{id} name"),
        backends: vec!["cpu".into()],
        memory_total_bytes: 16 << 30,
        memory_budget_bytes: 12 << 30,
        bandwidth_gbs: 25.0,
        tflops: 0.5,
        thermal_headroom: 1.0,
        declared: id.starts_with("declared"),
    }
}

fn node(name: &str, device_id: &str) -> NodeEntry {
    NodeEntry {
        name: name.into(),
        addresses: vec![],
        devices: vec![device(device_id)],
        last_seen_ms: 0,
        incarnation: 1,
        joined_seq: 1,
    }
}

fn telemetry(device: &str, throttled: bool) -> DeviceTelemetry {
    DeviceTelemetry {
        device: device.into(),
        memory_used_bytes: 4 << 30,
        utilisation: 0.25,
        temperature_c: Some(71.5),
        power_w: Some(35.0),
        battery: Some(0.5),
        on_battery: true,
        throttled,
        thermal_headroom: 0.4,
        sampled_ms: 1,
    }
}

/// Two members `a` and `b`, a link each way, an instance split over both, and a throttled
/// device on `b` with its alert.
fn view() -> View {
    let mut s = ClusterState {
        last_seq: 42,
        epoch: 3,
        coordinator: Some("a".into()),
        ..ClusterState::default()
    };
    s.members.insert("a".into(), node("alpha", "cpu-a"));
    s.members.insert("b".into(), node("beta", "declared-phone"));
    s.telemetry
        .entry("a".into())
        .or_default()
        .insert("cpu-a".into(), telemetry("cpu-a", false));
    s.telemetry
        .entry("b".into())
        .or_default()
        .insert("declared-phone".into(), telemetry("declared-phone", true));
    for (from, to) in [("a", "b"), ("b", "a")] {
        s.links.entry(from.into()).or_default().insert(
            to.into(),
            LinkStats {
                rtt_p50_ms: 0.5,
                rtt_p95_ms: 2.0,
                throughput_mbps: Some(800.0),
                loss: Some(0.01),
                measured_ms: 0,
            },
        );
    }
    s.instances.insert(
        "i1".into(),
        Instance {
            model: "smollm2-135m".into(),
            stages: vec![
                Stage {
                    node: "a".into(),
                    device: "cpu-a".into(),
                    first_layer: 0,
                    end_layer: 20,
                    status: Default::default(),
                },
                Stage {
                    node: "b".into(),
                    device: "declared-phone".into(),
                    first_layer: 20,
                    end_layer: 30,
                    status: Default::default(),
                },
            ],
            status: InstanceStatus::Loading { progress: 0.5 },
            predicted_tokens_per_s: 0.0,
        },
    );
    let alerts = Alerts::default();
    alerts.evaluate(&s, 1000);
    View {
        node_id: "a".into(),
        node_name: "alpha".into(),
        state: std::sync::Arc::new(s),
        live_peers: vec!["b".into()],
        net: hearth_net::Counters {
            refused_admission: 2,
            dropped_malformed: 1,
            ..hearth_net::Counters::default()
        },
        alerts,
        ..View::default()
    }
}

fn scrape(metrics: &Metrics, view: View) -> (String, Exposition) {
    let registry = metrics.registry(Arc::new(RwLock::new(view)));
    let text = encode(&registry).expect("the registry encodes");
    let e = Exposition::parse(&text);
    (text, e)
}

/// A served request, from arrival to the last token.
fn serve_one(metrics: &Metrics) {
    let t = metrics.request(Endpoint::ChatCompletions);
    t.queued();
    t.started(12);
    for _ in 0..3 {
        t.token();
    }
    t.finish(Outcome::Ok);
}

#[test]
fn every_family_has_help_type_prefix_and_base_units() {
    let metrics = Metrics::new();
    serve_one(&metrics);
    metrics
        .request(Endpoint::Completions)
        .finish(Outcome::of_error(
            StatusCode::TOO_MANY_REQUESTS,
            Some("rate_limit_exceeded"),
        ));
    metrics.http("/v1/chat/completions", 200);
    let (text, e) = scrape(&metrics, view());

    assert!(!e.samples.is_empty());
    for (name, _, value) in &e.samples {
        let family = e
            .family_of(name)
            .unwrap_or_else(|| panic!("{name} has no TYPE:\n{text}"));
        assert!(e.help.contains_key(family), "{family} has no HELP");
        assert!(!e.help[family].is_empty(), "{family} has an empty HELP");
        assert!(name.starts_with("hearth_"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        assert!(
            value.is_finite() || name.ends_with("_bucket"),
            "{name} {value}"
        );
        match e.types[family].as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter {name}"),
            "gauge" => assert!(!name.ends_with("_total"), "gauge {name}"),
            "histogram" => assert!(family.ends_with("_seconds"), "histogram {name}"),
            other => panic!("{family} has type {other}"),
        }
    }

    // The families the documentation lists, with their types and units.
    let expected = [
        ("hearth_http_requests_total", "counter"),
        ("hearth_requests_total", "counter"),
        ("hearth_refusals_total", "counter"),
        ("hearth_prompt_tokens_total", "counter"),
        ("hearth_completion_tokens_total", "counter"),
        ("hearth_time_to_first_token_seconds", "histogram"),
        ("hearth_inter_token_latency_seconds", "histogram"),
        ("hearth_queue_depth", "gauge"),
        ("hearth_cluster_members", "gauge"),
        ("hearth_cluster_epoch", "gauge"),
        ("hearth_cluster_last_seq", "gauge"),
        ("hearth_cluster_coordinator", "gauge"),
        ("hearth_node_info", "gauge"),
        ("hearth_device_memory_total_bytes", "gauge"),
        ("hearth_device_memory_budget_bytes", "gauge"),
        ("hearth_device_memory_used_bytes", "gauge"),
        ("hearth_device_memory_bandwidth_bytes_per_second", "gauge"),
        ("hearth_device_compute_flops_per_second", "gauge"),
        ("hearth_device_declared", "gauge"),
        ("hearth_device_utilisation_ratio", "gauge"),
        ("hearth_device_temperature_celsius", "gauge"),
        ("hearth_device_power_watts", "gauge"),
        ("hearth_device_thermal_headroom_ratio", "gauge"),
        ("hearth_device_battery_ratio", "gauge"),
        ("hearth_device_on_battery", "gauge"),
        ("hearth_device_throttled", "gauge"),
        ("hearth_link_rtt_p50_seconds", "gauge"),
        ("hearth_link_rtt_p95_seconds", "gauge"),
        ("hearth_link_throughput_bytes_per_second", "gauge"),
        ("hearth_link_loss_ratio", "gauge"),
        ("hearth_instance_state", "gauge"),
        ("hearth_instance_loading_progress_ratio", "gauge"),
        ("hearth_instance_stage_first_layer", "gauge"),
        ("hearth_instance_stage_end_layer", "gauge"),
        ("hearth_instance_stage_layers", "gauge"),
        ("hearth_live_peers", "gauge"),
        ("hearth_peer_refusals_total", "counter"),
        ("hearth_alerts", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(
            e.types.get(name).map(String::as_str),
            Some(kind),
            "{name}:\n{text}"
        );
    }
    assert_eq!(
        e.types.len(),
        expected.len(),
        "undocumented families:\n{text}"
    );

    // Values in base units.
    let dev_b = [("node", "b"), ("device", "declared-phone")];
    assert_eq!(
        e.value("hearth_device_memory_used_bytes", &dev_b),
        Some((4u64 << 30) as f64)
    );
    assert_eq!(
        e.value("hearth_device_temperature_celsius", &dev_b),
        Some(71.5)
    );
    assert_eq!(e.value("hearth_device_throttled", &dev_b), Some(1.0));
    assert_eq!(e.value("hearth_device_declared", &dev_b), Some(1.0));
    assert_eq!(
        e.value("hearth_device_memory_bandwidth_bytes_per_second", &dev_b),
        Some(25e9)
    );
    let ab = [("from", "a"), ("to", "b")];
    assert_eq!(e.value("hearth_link_rtt_p95_seconds", &ab), Some(0.002));
    assert_eq!(
        e.value("hearth_link_throughput_bytes_per_second", &ab),
        Some(1e8)
    );
    assert_eq!(e.value("hearth_link_loss_ratio", &ab), Some(0.01));
    assert_eq!(e.value("hearth_cluster_members", &[]), Some(2.0));
    assert_eq!(
        e.value("hearth_cluster_coordinator", &[("node", "a")]),
        Some(1.0)
    );
    assert_eq!(
        e.value("hearth_peer_refusals_total", &[("reason", "admission")]),
        Some(2.0)
    );
    assert_eq!(
        e.value(
            "hearth_alerts",
            &[("name", "device_throttled"), ("severity", "critical")]
        ),
        Some(1.0)
    );

    // One-hot instance state, and the layer split per stage.
    let states = e.values("hearth_instance_state");
    assert_eq!(states.len(), INSTANCE_STATES.len());
    assert_eq!(states.iter().map(|(_, v)| v).sum::<f64>(), 1.0);
    let stage = [
        ("instance", "i1"),
        ("model", "smollm2-135m"),
        ("node", "b"),
        ("device", "declared-phone"),
    ];
    assert_eq!(
        e.value("hearth_instance_stage_first_layer", &stage),
        Some(20.0)
    );
    assert_eq!(
        e.value("hearth_instance_stage_end_layer", &stage),
        Some(30.0)
    );
    assert_eq!(e.value("hearth_instance_stage_layers", &stage), Some(10.0));

    // The request's own instruments.
    assert_eq!(
        e.value(
            "hearth_requests_total",
            &[("endpoint", "chat_completions"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.value(
            "hearth_requests_total",
            &[("endpoint", "completions"), ("outcome", "refused")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.value("hearth_refusals_total", &[("reason", "queue_full")]),
        Some(1.0)
    );
    assert_eq!(e.value("hearth_prompt_tokens_total", &[]), Some(12.0));
    assert_eq!(e.value("hearth_completion_tokens_total", &[]), Some(3.0));
    assert_eq!(
        e.value("hearth_time_to_first_token_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        e.value("hearth_inter_token_latency_seconds_count", &[]),
        Some(2.0)
    );
    let buckets = e.values("hearth_time_to_first_token_seconds_bucket");
    assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1, "+Inf included");
    assert_eq!(e.value("hearth_queue_depth", &[]), Some(0.0));
    assert_eq!(
        e.value(
            "hearth_http_requests_total",
            &[("route", "/v1/chat/completions"), ("status", "200")]
        ),
        Some(1.0)
    );
}

#[test]
fn openmetrics_is_served_to_those_who_ask_for_it() {
    let metrics = Metrics::new();
    serve_one(&metrics);
    let registry = metrics.registry(Arc::new(RwLock::new(view())));
    let mut om = String::new();
    text::encode(&mut om, &registry).unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# UNIT hearth_device_temperature_celsius celsius"),
        "{om}"
    );
    assert!(om.contains("# TYPE hearth_requests counter"), "{om}");
}

#[test]
fn a_member_that_left_leaves_no_series_behind() {
    let metrics = Metrics::new();
    let shared = Arc::new(RwLock::new(view()));
    let registry = metrics.registry(Arc::clone(&shared));
    let before = Exposition::parse(&encode(&registry).unwrap());
    let of_b = |e: &Exposition| {
        e.samples
            .iter()
            .filter(|(_, l, _)| l.values().any(|v| v == "b" || v == "declared-phone"))
            .count()
    };
    assert!(
        of_b(&before) > 10,
        "b has devices, telemetry, links and a stage"
    );

    // b leaves: the state drops it, and the next scrape follows.
    {
        let mut v = shared.write().unwrap();
        let b = NodeId::from("b");
        let state = std::sync::Arc::make_mut(&mut v.state);
        state.members.remove(&b);
        state.telemetry.remove(&b);
        state.links.remove(&b);
        for row in state.links.values_mut() {
            row.remove(&b);
        }
        state.instances.clear();
    }
    let after = Exposition::parse(&encode(&registry).unwrap());
    assert_eq!(of_b(&after), 0);
    assert_eq!(after.value("hearth_cluster_members", &[]), Some(1.0));
    // Families left without series are not declared either.
    assert!(!after.types.contains_key("hearth_link_rtt_p95_seconds"));
    assert!(!after.types.contains_key("hearth_instance_state"));
    assert!(after.types.contains_key("hearth_device_memory_used_bytes"));
}

#[test]
fn families_of_an_empty_view_are_only_the_cluster_counts() {
    let names: Vec<&str> = families(&View::default()).iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "cluster_members",
            "cluster_epoch",
            "cluster_last_seq",
            "live_peers",
            "peer_refusals"
        ]
    );
}

#[test]
fn a_request_has_one_outcome_and_a_dropped_one_is_cancelled() {
    let metrics = Metrics::new();
    let count = |e: &Exposition, outcome: &str| {
        e.value(
            "hearth_requests_total",
            &[("endpoint", "chat_completions"), ("outcome", outcome)],
        )
    };

    // The engine's outcome stands; the handler's later error does not count again.
    let t = metrics.request(Endpoint::ChatCompletions);
    let engine_side = t.clone();
    t.queued();
    engine_side.started(5);
    engine_side.finish(Outcome::Error);
    t.finish(Outcome::Error);
    t.finish(Outcome::Ok);
    drop((t, engine_side));

    // Queued, then the client left: cancelled, and out of the queue.
    let t = metrics.request(Endpoint::ChatCompletions);
    t.queued();
    let (_, e) = scrape(&metrics, View::default());
    assert_eq!(e.value("hearth_queue_depth", &[]), Some(1.0));
    drop(t);

    // Refused at the queue: one refusal, queue back to zero.
    let t = metrics.request(Endpoint::ChatCompletions);
    t.queued();
    t.finish(Outcome::of_error(StatusCode::TOO_MANY_REQUESTS, None));
    drop(t);

    metrics.refused("unauthorized");

    let (_, e) = scrape(&metrics, View::default());
    assert_eq!(count(&e, "error"), Some(1.0));
    assert_eq!(count(&e, "cancelled"), Some(1.0));
    assert_eq!(count(&e, "refused"), Some(1.0));
    assert_eq!(count(&e, "ok"), None);
    assert_eq!(e.value("hearth_queue_depth", &[]), Some(0.0));
    assert_eq!(e.value("hearth_prompt_tokens_total", &[]), Some(5.0));
    assert_eq!(
        e.value("hearth_refusals_total", &[("reason", "unauthorized")]),
        Some(1.0)
    );
    assert_eq!(
        e.value("hearth_refusals_total", &[("reason", "queue_full")]),
        Some(1.0)
    );
}

#[test]
fn errors_map_to_refusal_reasons() {
    let cases = [
        (
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Outcome::Refused("queue_full"),
        ),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("request_too_large"),
            Outcome::Refused("body_too_large"),
        ),
        (
            StatusCode::BAD_REQUEST,
            Some("context_length_exceeded"),
            Outcome::Refused("prompt_too_long"),
        ),
        (
            StatusCode::BAD_REQUEST,
            None,
            Outcome::Refused("bad_request"),
        ),
        (
            StatusCode::NOT_FOUND,
            Some("model_not_found"),
            Outcome::Refused("unknown_model"),
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("model_not_loaded"),
            Outcome::Refused("no_model"),
        ),
        (
            StatusCode::UNAUTHORIZED,
            None,
            Outcome::Refused("unauthorized"),
        ),
        (StatusCode::FORBIDDEN, None, Outcome::Refused("forbidden")),
        (StatusCode::INTERNAL_SERVER_ERROR, None, Outcome::Error),
        (StatusCode::SERVICE_UNAVAILABLE, None, Outcome::Error),
    ];
    for (status, code, want) in cases {
        assert_eq!(Outcome::of_error(status, code), want, "{status} {code:?}");
    }
}
