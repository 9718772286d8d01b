//! Nodes as child processes: `hearth up` with its API on an ephemeral loopback port, read back
//! from the line the node prints when it starts.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const KEY: &str = "hearth-test-cluster-key";

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hearth-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Node {
    pub name: String,
    pub data_dir: PathBuf,
    pub api: String,
    pub id: String,
    /// The line the node printed when it started.
    pub banner: String,
    /// An admin token for the node's API, where it needs one (an API beyond loopback).
    pub token: Option<String>,
    child: Child,
    log: PathBuf,
    /// Held while the node runs, so a test that measures timing can have the machine alone.
    _sharing: Option<Sharing>,
}

/// Nodes of every test share the machine; a test that times links or probes takes it alone
/// with [`alone`]: it waits until no other test's node runs, and other tests' nodes wait for it
/// to finish. Nodes waiting to start never hold the machine, so this cannot deadlock (unlike a
/// writer-preferring lock, which would stop a test halfway through starting its nodes).
struct Machine {
    /// Running nodes of other tests, and whether a test has the machine alone.
    state: std::sync::Mutex<(usize, bool)>,
    changed: std::sync::Condvar,
}

static MACHINE: Machine = Machine {
    state: std::sync::Mutex::new((0, false)),
    changed: std::sync::Condvar::new(),
};

thread_local! {
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct Sharing;

fn share() -> Sharing {
    let mut s = MACHINE.state.lock().unwrap_or_else(|e| e.into_inner());
    while s.1 {
        s = MACHINE.changed.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    s.0 += 1;
    Sharing
}

impl Drop for Sharing {
    fn drop(&mut self) {
        let mut s = MACHINE.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        MACHINE.changed.notify_all();
    }
}

/// The machine to this test alone until the guard is dropped (its own nodes start freely).
pub struct Alone;

pub fn alone() -> Alone {
    let mut s = MACHINE.state.lock().unwrap_or_else(|e| e.into_inner());
    while s.1 || s.0 > 0 {
        s = MACHINE.changed.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    s.1 = true;
    ALONE.with(|a| a.set(true));
    Alone
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
        let mut s = MACHINE.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = false;
        MACHINE.changed.notify_all();
    }
}

/// What every test node on loopback starts with (no mDNS; peers and API on ephemeral loopback
/// ports; the tests' cluster key), then `extra`.
pub fn loopback_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
        "--cluster-key",
        KEY,
    ];
    a.extend_from_slice(extra);
    a
}

impl Node {
    /// [`Node::start`] with the data dir `dir/name`.
    pub fn start_in(name: &str, dir: &TempDir, shared_home: &TempDir, extra: &[&str]) -> Node {
        Node::start(name, &dir.0.join(name), &shared_home.0, extra)
    }

    /// Starts `hearth up` and waits for it to print its id and API address.
    pub fn start(name: &str, data_dir: &Path, shared_home: &Path, extra: &[&str]) -> Node {
        Node::start_with(
            Command::new(env!("CARGO_BIN_EXE_hearth")),
            name,
            data_dir,
            shared_home,
            extra,
        )
    }

    /// As [`Node::start`], through a prepared command (e.g. `ip netns exec NS hearth`).
    pub fn start_with(
        mut cmd: Command,
        name: &str,
        data_dir: &Path,
        shared_home: &Path,
        extra: &[&str],
    ) -> Node {
        let sharing = if ALONE.with(|a| a.get()) {
            None
        } else {
            Some(share())
        };
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join("node.log");
        let stderr = std::fs::File::create(&log).unwrap();
        // A node asks for the default model unless told otherwise; tests name theirs.
        let names_model = extra
            .iter()
            .any(|a| matches!(*a, "--model" | "-m" | "--no-model"));
        let mut child = cmd
            .args(["up", "--name", name, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .args(if names_model {
                &[][..]
            } else {
                &["--no-model"][..]
            })
            // One device registry for every node: measured once, before the nodes start.
            .env("XDG_DATA_HOME", shared_home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("hearth up starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("hearth up prints its address");
        let parse = || -> Option<(String, String)> {
            let id = line
                .strip_prefix("hearth node ")?
                .split_whitespace()
                .next()?;
            // `http://` or, with TLS, `https://`.
            let api = line.rsplit("://").next()?.trim();
            Some((id.to_string(), api.to_string()))
        };
        let Some((id, api)) = parse() else {
            let _ = child.kill();
            panic!(
                "hearth up printed {line:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Node {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            api,
            id,
            banner: line.trim().to_string(),
            token: None,
            child,
            log,
            _sharing: sharing,
        }
    }

    pub fn cluster(&self) -> Option<Value> {
        get_with(&self.api, "/api/cluster", self.token.as_deref())
    }

    /// The first address this node listens on, once it reports one.
    pub fn listen_addr(&self, proto: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(v) = self.cluster() {
                if let Some(a) = v["node"]["listen"].as_array().and_then(|l| {
                    l.iter()
                        .filter_map(|a| a.as_str())
                        .find(|a| a.contains(proto))
                }) {
                    return a.to_string();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} reported no {proto} listen address; log:\n{}",
            self.name,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no goodbye, like a crash or a pulled plug.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn get(api: &str, path: &str) -> Option<Value> {
    get_with(api, path, None)
}

/// As [`get`], with a bearer token when one is given.
/// POSTs JSON without a token; the status and the body as JSON (or as a string when it is
/// not JSON). Generous timeout: a request may wait for a whole generation.
pub fn post_json(api: &str, path: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut resp = agent
        .post(format!("http://{api}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn get_with(api: &str, path: &str, token: Option<&str>) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let mut request = agent.get(format!("http://{api}{path}"));
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let body = request.call().ok()?.body_mut().read_to_string().ok()?;
    serde_json::from_str(&body).ok()
}

/// Member ids a node's state lists, sorted.
pub fn members(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|m| m["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Polls until `ok` holds for what every node reports, or `limit` passes; returns the time it
/// took, or panics with what each node last reported.
pub fn wait_until(
    nodes: &[&Node],
    limit: Duration,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < limit {
        last = nodes
            .iter()
            .map(|n| n.cluster().unwrap_or(Value::Null))
            .collect();
        if ok(&last) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut report = format!("not within {limit:?}: {what}\n");
    for (n, v) in nodes.iter().zip(&last) {
        report += &format!(
            "--- {} ({}): members {:?}, coordinator {}, seq {}\n{}\n",
            n.name,
            n.id,
            members(v),
            v["coordinator"],
            v["last_seq"],
            n.log()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    panic!("{report}");
}

/// Every node lists exactly `ids` and names the same coordinator, one of them.
pub fn agree_on(ids: &[String]) -> impl Fn(&[Value]) -> bool + '_ {
    move |views: &[Value]| {
        let mut want = ids.to_vec();
        want.sort();
        let first = &views[0]["coordinator"];
        views.iter().all(|v| {
            members(v) == want
                && v["coordinator"] == *first
                && v["state_coordinator"] == *first
                && first.as_str().is_some_and(|c| want.iter().any(|w| w == c))
        })
    }
}

/// Measures this machine once into `home`, so nodes sharing it start without measuring.
pub fn measured_home() -> TempDir {
    let home = TempDir::new("cluster-home");
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["devices", "--json"])
        .env("XDG_DATA_HOME", &home.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home
}

/// Waits until the node's API lists a model (its tokenizer read, an instance ready).
pub fn wait_for_model(node: &Node, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let listed = get_with(&node.api, "/v1/models", node.token.as_deref())
            .and_then(|m| m["data"].as_array().map(|d| d.len()))
            .unwrap_or(0);
        if listed > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never served a model; log:\n{}",
            node.name,
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates an admin token in a node's data dir (`hearth token create`), for an API that
/// listens beyond loopback and so requires one.
pub fn admin_token(data_dir: &Path) -> String {
    token(data_dir, "admin", "harness")
}

/// Creates a token of `scope` (`user` or `admin`) named `name` in a node's data dir.
pub fn token(data_dir: &Path, scope: &str, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "token",
            "create",
            "--scope",
            scope,
            "--name",
            name,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every line of the node's audit log, each of which must be one JSON object.
pub fn audit_lines(data_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(data_dir.join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}"));
            assert!(v["at"].is_string() && v["kind"].is_string(), "{l}");
            v
        })
        .collect()
}

/// Waits for an audit line for which `want` holds.
pub fn audited(data_dir: &Path, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = audit_lines(data_dir);
        if let Some(v) = lines.iter().find(|v| want(v)) {
            return v.clone();
        }
        if Instant::now() > deadline {
            let all: Vec<String> = lines.iter().map(Value::to_string).collect();
            panic!("no audit line for {what}; the log:\n{}", all.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An instance's id and its stages as `(node, first layer, end layer)`.
pub type Placed = (String, Vec<(String, u64, u64)>);

/// The ready instance in a node's `/api/instances`.
pub fn ready_instance(v: &Value) -> Option<Placed> {
    let instances = v["instances"].as_object()?;
    let (id, inst) = instances
        .iter()
        .find(|(_, i)| i["status"]["state"] == "ready")?;
    let stages = inst["stages"]
        .as_array()?
        .iter()
        .map(|s| {
            Some((
                s["node"].as_str()?.to_string(),
                s["first_layer"].as_u64()?,
                s["end_layer"].as_u64()?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((id.clone(), stages))
}
