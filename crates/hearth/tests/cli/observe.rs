//! Observing a cluster from outside: a real Prometheus scraping two nodes' `/metrics`,
//! `promtool check metrics` on what they expose, and alerts on `/api/alerts`.
//!
//! The Prometheus tests need the `prometheus` and `promtool` binaries (Debian: `apt-get install
//! prometheus`). Without them they say so and check nothing, unless
//! `HEARTH_EXPECT_PROMETHEUS=1`, where their absence is a failure.

use super::*;
use crate::cluster::harness::{
    agree_on, get, loopback_args, measured_home, wait_until, Node, TempDir,
};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `prometheus` and `promtool`, or `None` (after saying why) when they are not installed and
/// not required.
fn prometheus_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (on_path("prometheus"), on_path("promtool")) {
        (Some(server), Some(tool)) => Some((server, tool)),
        _ if std::env::var("HEARTH_EXPECT_PROMETHEUS").as_deref() == Ok("1") => panic!(
            "HEARTH_EXPECT_PROMETHEUS=1 but `prometheus` or `promtool` is not on PATH \
             (Debian: apt-get install prometheus)"
        ),
        _ => {
            eprintln!(
                "{test}: skipped, `prometheus` and `promtool` are not installed \
                 (Debian: apt-get install prometheus); set HEARTH_EXPECT_PROMETHEUS=1 to \
                 make this a failure"
            );
            None
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// A GET answered with 200, as text.
fn get_text(url: &str) -> Option<String> {
    let mut resp = agent().get(url).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.body_mut().read_to_string().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it scraping `targets` every second and waits until it is ready.
    fn start(binary: &Path, dir: &Path, targets: &[&str]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: hearth\n    static_configs:\n      \
                 - targets: [{targets}]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get_text(&format!("{}/-/ready", p.url)).is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of an instant query that yields one sample; `None` when it yields none.
    fn query(&self, q: &str) -> Option<f64> {
        let mut resp = agent()
            .get(format!("{}/api/v1/query", self.url))
            .query("query", q)
            .call()
            .unwrap_or_else(|e| panic!("query {q}: {e}"));
        let body = resp.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "query {q}: {v}");
        let result = v["data"]["result"].as_array().expect("a vector");
        assert!(result.len() <= 1, "query {q} gave several series: {v}");
        let value = result.first()?["value"][1].as_str()?;
        Some(match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        })
    }

    /// Polls `q` until `ok` holds for its value, or panics after `limit` with the last value.
    fn wait_for(&self, q: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.query(q);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{q} = {v:?} after {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on what `api` exposes now.
fn promtool_check(promtool: &Path, api: &str) {
    let text = get_text(&format!("http://{api}/metrics")).expect("/metrics answers");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {api}:\n{}{}\n--- metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_two_nodes_and_counts_every_request() {
    let Some((prometheus, promtool)) =
        prometheus_tools("prometheus_scrapes_two_nodes_and_counts_every_request")
    else {
        return;
    };
    let home = measured_home();
    let dir = TempDir::new("observe-prom");
    let model = model_path(MODEL).to_string_lossy().into_owned();
    let serving = Node::start_in(
        "serving",
        &dir,
        &home,
        &loopback_args(&["--model", &model, "--threads", "2"]),
    );
    let seed = serving.listen_addr("/tcp/");
    let other = Node::start_in("other", &dir, &home, &loopback_args(&["--peer", &seed]));
    wait_until(
        &[&serving, &other],
        Duration::from_secs(15),
        "two members",
        agree_on(&[serving.id.clone(), other.id.clone()]),
    );

    let prom = Prometheus::start(&prometheus, &dir.0, &[&serving.api, &other.api]);
    // Both targets scraped before any request, so the counters are seen to grow from zero.
    prom.wait_for("sum(up{job=\"hearth\"})", Duration::from_secs(20), |v| {
        v == 2.0
    });

    const N: usize = 5;
    for i in 0..N {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"Count to {i}."}}],"max_tokens":4,"temperature":0}}"#
        );
        let mut resp = agent()
            .post(format!("http://{}/v1/chat/completions", serving.api))
            .header("content-type", "application/json")
            .send(&body)
            .unwrap();
        let text = resp.body_mut().read_to_string().unwrap();
        assert_eq!(resp.status(), 200, "{text}");
    }

    let n = N as f64;
    prom.wait_for("sum(hearth_requests_total)", Duration::from_secs(20), |v| {
        v == n
    });
    prom.wait_for(
        "sum(hearth_requests_total{endpoint=\"chat_completions\",outcome=\"ok\"})",
        Duration::from_secs(5),
        |v| v == n,
    );
    prom.wait_for(
        "sum(hearth_time_to_first_token_seconds_count)",
        Duration::from_secs(5),
        |v| v == n,
    );
    let p90 = prom.wait_for(
        "histogram_quantile(0.9, sum by (le) (hearth_time_to_first_token_seconds_bucket))",
        Duration::from_secs(5),
        f64::is_finite,
    );
    assert!(p90 > 0.0 && p90 <= 30.0, "time to first token p90 {p90}");
    prom.wait_for(
        "sum(hearth_completion_tokens_total)",
        Duration::from_secs(5),
        |v| v == 4.0 * n,
    );
    // Every node exposes the whole cluster: the node without a model reports both members'
    // devices too.
    prom.wait_for(
        &format!(
            "count(count by (node) (hearth_device_memory_total_bytes{{instance=\"{}\"}}))",
            other.api
        ),
        Duration::from_secs(10),
        |v| v == 2.0,
    );
    prom.wait_for(
        "count(hearth_cluster_members == 2)",
        Duration::from_secs(5),
        |v| v == 2.0,
    );

    // A refused request is an outcome of its own, with its reason.
    let mut resp = agent()
        .post(format!("http://{}/v1/chat/completions", serving.api))
        .header("content-type", "application/json")
        .send("{\"messages\": 3}")
        .unwrap();
    assert_eq!(resp.status(), 400, "{:?}", resp.body_mut().read_to_string());
    prom.wait_for(
        "sum(hearth_refusals_total{reason=\"bad_request\"})",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    prom.wait_for(
        "sum(hearth_requests_total{outcome=\"refused\"})",
        Duration::from_secs(5),
        |v| v == 1.0,
    );

    promtool_check(&promtool, &serving.api);
    promtool_check(&promtool, &other.api);
}

/// A declared device that starts 10 °C above its throttle threshold and cools slowly.
pub(crate) const HOT_PROFILE: &str = r#"
name = "hot-phone"
backend = "cpu"
memory_gib = 64.0
bandwidth_gbs = 5.0
tflops = 0.05
precisions = ["f32", "f16"]
compute_share = 0.5

[thermal]
idle_temp_c = 40.0
heat_rate = 1.0
cool_rate = 0.001
threshold_c = 85.0
start_temp_c = 95.0
"#;

/// Active alerts `api` lists under `name`.
fn active(api: &str, name: &str) -> Vec<Value> {
    get(api, "/api/alerts")
        .and_then(|v| v["active"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["name"] == name)
        .collect()
}

fn wait_for_alert(api: &str, name: &str, limit: Duration) -> (Value, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(a) = active(api, name).into_iter().next() {
            return (a, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no active {name} alert on {api} within {limit:?}: {:?}",
        get(api, "/api/alerts")
    );
}

#[test]
fn a_hot_device_and_a_killed_node_raise_alerts() {
    let home = measured_home();
    let dir = TempDir::new("observe-alerts");
    let profile = dir.0.join("hot.toml");
    std::fs::write(&profile, HOT_PROFILE).unwrap();
    let profile = profile.to_string_lossy().into_owned();
    let fast = ["--telemetry-ms", "200", "--timeout-ms", "1500"];

    let started = Instant::now();
    let hot = Node::start_in(
        "hot",
        &dir,
        &home,
        &loopback_args(&[&["--device-profile", profile.as_str()], &fast[..]].concat()),
    );
    let (alert, _) = wait_for_alert(&hot.api, "device_throttled", Duration::from_secs(5));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eprintln!("device_throttled listed {took:?} after the node was started");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["subject"]["kind"], "device", "{alert}");
    assert_eq!(alert["subject"]["node"], hot.id.as_str(), "{alert}");
    assert_eq!(alert["subject"]["device"], "declared-hot-phone", "{alert}");
    assert!(alert["message"].as_str().unwrap().contains("hot-phone"));
    assert!(alert["started_ms"].as_u64().is_some() && alert["ended_ms"].is_null());

    let seed = hot.listen_addr("/tcp/");
    let mut peer = Node::start_in(
        "peer",
        &dir,
        &home,
        &loopback_args(&[&["--peer", seed.as_str()], &fast[..]].concat()),
    );
    wait_until(
        &[&hot, &peer],
        Duration::from_secs(15),
        "two members",
        agree_on(&[hot.id.clone(), peer.id.clone()]),
    );
    // The state is replicated, so every node judges the hot device.
    wait_for_alert(&peer.api, "device_throttled", Duration::from_secs(5));

    // `hearth cluster status` shows the alert.
    let status = hearth(&["cluster", "status", "--api", &hot.api]);
    assert!(status.status.success());
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("ALERTS") && status.contains("device_throttled"),
        "{status}"
    );

    peer.kill();
    let (lost, took) = wait_for_alert(&hot.api, "node_lost", Duration::from_secs(10));
    eprintln!("node_lost listed {took:?} after the kill");
    assert_eq!(lost["subject"]["node"], peer.id.as_str(), "{lost}");
    assert!(lost["message"].as_str().unwrap().contains("peer"), "{lost}");

    // The metrics follow: the lost node's series are gone, its alert is counted.
    let text = get_text(&format!("http://{}/metrics", hot.api)).unwrap();
    let value = |series: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(
        value("hearth_alerts{name=\"node_lost\",severity=\"warning\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("hearth_alerts{name=\"device_throttled\",severity=\"critical\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value("hearth_cluster_members"), Some(1.0), "{text}");
    assert!(
        !text.contains(&peer.id),
        "series of the lost node remain:\n{text}"
    );
}
