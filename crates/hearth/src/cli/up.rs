//! `hearth up`: start a node. It finds and admits peers, agrees with them on one cluster state
//! and serves the HTTP API until interrupted. It asks the cluster to serve a model (`--model`,
//! by default the catalog's default model): the coordinator places it on the fleet, the chosen
//! nodes load their layers, and every node's OpenAI-compatible API serves it.

use super::declared::Declared;
use super::devices::measured_cpu;
use super::load::parse_size;
use crate::node::admin::Admin;
use crate::node::driver::{now_ms, Driver, LocalFact, ServingHooks};
use crate::node::instances::files::LocalModels;
use crate::node::instances::models::{self, Placement};
use crate::node::instances::plan::{Reconciler, ServePolicy};
use crate::node::instances::stages::StageSettings;
use crate::node::instances::{self, ServingSetup};
use crate::node::metrics::Metrics;
use crate::node::openai::{self, OpenAi, ServedModels};
use crate::node::security::{self, Security, SecurityArgs};
use crate::node::view::View;
use crate::node::{alerts, api, facts};
use anyhow::{bail, Context};
use clap::Args;
use hearth_cluster::{Config, Event, Member, NodeId};
use hearth_device::telemetry::{Sampler, TelemetryConfig};
use hearth_device::ThermalStandIn;
use hearth_net::{ClusterKey, Multiaddr, NetConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub const DEFAULT_API: &str = "127.0.0.1:52415";

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// The name other members and the dashboard show (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the node keeps its identity and the generated cluster key
    /// (default: $XDG_DATA_HOME/hearth/node).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, repeatable, e.g. `/ip4/0.0.0.0/udp/52414/quic-v1` (QUIC) or
    /// `/ip4/0.0.0.0/tcp/52414` (TCP). Default: both of those.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// A peer to dial, repeatable (e.g. `/ip4/192.168.1.20/tcp/52414`). Dialled with backoff
    /// until it answers, and again after it is lost; works where multicast does not.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<Multiaddr>,
    /// The cluster key (64 hex digits, base64, or a passphrase). Only nodes holding the same
    /// key are admitted. Default: the key in the data dir, generated on first start.
    #[arg(long, value_name = "KEY", conflicts_with = "cluster_key_file")]
    pub cluster_key: Option<String>,
    /// Read the cluster key from a file.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Do not announce or discover peers with mDNS (use --peer).
    #[arg(long)]
    pub no_mdns: bool,
    /// Carry pipeline messages over the peer connection only. By default they take lanes:
    /// direct, sealed TCP connections on an extra (ephemeral) port, which decode faster; use
    /// this where only the listen port is reachable.
    #[arg(long)]
    pub no_lanes: bool,
    /// Where the HTTP API listens.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API)]
    pub api: SocketAddr,
    /// Stand in for a declared device (see `hearth run --help`).
    #[arg(long, value_name = "FILE")]
    pub device_profile: Option<PathBuf>,
    /// Ask the cluster to serve this model: a catalog name (see `hearth model list`) or a
    /// path to a .gguf file. The coordinator places it on the devices the planner chooses
    /// (split across nodes when one cannot hold it) and every node's API serves it.
    /// Default: the catalog's default model, smollm2-135m.
    #[arg(long, short = 'm', value_name = "MODEL", conflicts_with = "no_model")]
    pub model: Option<String>,
    /// Ask for no model: this node joins the cluster and runs whatever is placed on it.
    #[arg(long)]
    pub no_model: bool,
    /// How the model asked for here is placed: the planner's plan, or layers in proportion
    /// to each device's memory (the common baseline, for comparison).
    #[arg(long, value_enum, default_value = "planner")]
    pub placement: Placement,
    /// Compute threads of each stage run here (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Pin each compute thread to a core of its own (Linux; ignored where there are more
    /// threads than cores). Steadier decode where other processes share the cores.
    #[arg(long)]
    pub pin_threads: bool,
    /// Positions (prompt + generated tokens) one request may use, for the model asked for
    /// here (default: the model's training context, at most 4096).
    #[arg(long)]
    pub context: Option<usize>,
    /// Requests each instance generates at once (each holds a KV cache on every stage).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub parallel: u64,
    /// Offer at most this much memory to the planner (e.g. `60MiB`), so one machine can hold
    /// a cluster that must split a model.
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// Largest request body the API accepts (e.g. `1MiB`).
    #[arg(long, value_parser = parse_size, default_value = "1MiB")]
    pub max_body: u64,
    /// Requests that may wait for the model; more are refused with 429.
    #[arg(long, default_value_t = openai::DEFAULT_QUEUE as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_queue: u64,
    /// A member silent this long is removed from the cluster, milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(500..))]
    pub timeout_ms: u64,
    /// How often telemetry is published, milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    pub telemetry_ms: u64,
    /// Log verbosity: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// `$XDG_DATA_HOME/hearth/node`, or `~/.local/share/hearth/node`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    Ok(hearth_device::registry::data_dir()
        .context("neither XDG_DATA_HOME nor HOME is set; pass --data-dir")?
        .join("node"))
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hearth".to_string())
}

pub fn cluster_key(
    key: Option<&str>,
    file: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<ClusterKey> {
    Ok(match (key, file) {
        (Some(k), _) => ClusterKey::parse(k).context("--cluster-key")?,
        (None, Some(f)) => ClusterKey::from_file(f)
            .with_context(|| format!("--cluster-key-file {}", f.display()))?,
        (None, None) => ClusterKey::load_or_generate(data_dir)
            .with_context(|| format!("cluster key in {}", data_dir.display()))?,
    })
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let key = cluster_key(
        args.cluster_key.as_deref(),
        args.cluster_key_file.as_deref(),
        &data_dir,
    )?;
    let declared = args
        .device_profile
        .as_deref()
        .map(Declared::load)
        .transpose()?;
    // An explicit model must exist before the node starts; the default one is best effort.
    let model = match (&args.model, args.no_model) {
        (Some(m), _) => Some(resolve(m).with_context(|| format!("--model {m}"))?),
        (None, true) => None,
        (None, false) => match resolve(DEFAULT_MODEL) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!(
                    "warning: the default model {DEFAULT_MODEL} is not available ({e:#}); \
                     this node serves what the cluster places on it"
                );
                None
            }
        },
    };
    let openai = OpenAi {
        models: ServedModels::default(),
        max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        metrics: Metrics::new(),
        max_prompt_tokens: args
            .security
            .max_prompt_tokens
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, data_dir, key, declared, openai, model))
}

/// The model `hearth up` asks for when given none.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// A model spec and the file it names on this machine (pulled from the catalog if needed).
struct Requested {
    spec: String,
    path: PathBuf,
}

fn resolve(spec: &str) -> anyhow::Result<Requested> {
    let path = super::model::resolve_or_pull(spec)?;
    Ok(Requested {
        spec: spec.to_string(),
        path,
    })
}

async fn serve(
    args: UpArgs,
    data_dir: PathBuf,
    key: ClusterKey,
    declared: Option<Declared>,
    openai: OpenAi,
    model: Option<Requested>,
) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(host_name);
    let mut cfg = NetConfig::new(&data_dir, key);
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    } else {
        cfg.listen = vec![
            "/ip4/0.0.0.0/udp/52414/quic-v1".parse()?,
            "/ip4/0.0.0.0/tcp/52414".parse()?,
        ];
    }
    cfg.peers = args.peers.clone();
    cfg.mdns = !args.no_mdns;
    cfg.lanes = !args.no_lanes;
    cfg.node_name = name.clone();
    let security = Security::open(&args.security, &data_dir, args.api)?;
    let api_listener = security
        .bind(args.api)
        .await
        .with_context(|| format!("cannot listen for the API on {}", args.api))?;
    let api_addr = api_listener.local_addr();
    let (net, events) = hearth_net::start(cfg)
        .await
        .context("cannot start the network")?;

    let id = NodeId(net.local_id().to_string());
    let mut member_cfg = Config::new(id.clone(), name.clone(), now_ms());
    member_cfg.timeout_ms = args.timeout_ms;
    member_cfg.heartbeat_ms = (args.timeout_ms / 6).max(100);
    member_cfg.startup_grace_ms = (args.timeout_ms / 3).max(300);
    member_cfg.addresses = net.listen_addrs().iter().map(|a| a.to_string()).collect();
    let member = Member::new(member_cfg, now_ms());
    let view = Arc::new(RwLock::new(View {
        node_id: id.to_string(),
        node_name: name.clone(),
        cluster_id: net.cluster_id(),
        ..View::default()
    }));
    println!(
        "hearth node {id} ({name}) in cluster {}; API on {}://{api_addr}",
        net.cluster_id(),
        security.scheme()
    );

    let (fact_tx, fact_rx) = mpsc::channel(64);
    let declared = declared.map(Arc::new);
    let parallel = args.parallel as usize;
    let links = instances::start(ServingSetup {
        me: id.clone(),
        data_dir: data_dir.clone(),
        net: net.clone(),
        view: Arc::clone(&view),
        models: openai.models.clone(),
        facts: fact_tx.clone(),
        stage: StageSettings {
            threads: args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
            pin_threads: args.pin_threads,
            sequences: parallel,
            compute_share: declared.as_ref().map_or(1.0, |d| d.compute_share),
            ..StageSettings::default()
        },
        workers: parallel,
        queue: args.max_queue as usize,
    });
    if let Some(m) = model {
        let request = ModelRequest {
            model: m,
            placement: args.placement,
            context: args.context,
            me: id.clone(),
            files: Arc::clone(&links.files),
            facts: fact_tx.clone(),
            view: Arc::clone(&view),
        };
        tokio::task::spawn_blocking(move || request.run());
    }
    let fact_tx_admin = fact_tx.clone();
    spawn_device_facts(
        id.clone(),
        declared.clone(),
        args.memory_limit,
        fact_tx.clone(),
    );
    spawn_telemetry(
        id.clone(),
        declared.clone(),
        Duration::from_millis(args.telemetry_ms),
        fact_tx,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = Admin {
        view: Arc::clone(&view),
        me: id.clone(),
        facts: fact_tx_admin,
        files: Arc::clone(&links.files),
    };
    alerts::spawn(Arc::clone(&view), stop_rx.clone());
    let router = api::router(Arc::clone(&view), openai, admin, security.auth.clone());
    let server = tokio::spawn(security::serve(
        api_listener,
        router,
        wait_for(stop_rx.clone()),
    ));
    let driver = Driver {
        member,
        net,
        view,
        tick: Duration::from_millis(100),
        refusal_report: Duration::from_secs(1),
        serving: ServingHooks {
            states: links.states,
            streams: links.streams,
            transport: links.transport,
            reconciler: Reconciler::new(ServePolicy {
                sequences: parallel,
                ..ServePolicy::default()
            }),
            published_hash: 0,
        },
        audit: security.audit.clone(),
    };
    let driver = tokio::spawn(driver.run(events, fact_rx, stop_rx));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = driver.await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("API server failed: {e}"),
        Err(e) => bail!("API server task failed: {e}"),
    }
}

/// Asks the cluster to serve a model: hashes and profiles the file, then proposes it until the
/// state holds it (a proposal made before this node is a member, or lost to a change of
/// coordinator, is simply made again).
struct ModelRequest {
    model: Requested,
    placement: Placement,
    context: Option<usize>,
    me: NodeId,
    files: Arc<LocalModels>,
    facts: mpsc::Sender<LocalFact>,
    view: crate::node::view::SharedView,
}

impl ModelRequest {
    fn run(self) {
        let context = match self.context {
            Some(c) => c,
            None => match crate::cli::load::training_context(&self.model.path) {
                Ok(c) => c.min(4096),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read the model");
                    return;
                }
            },
        };
        let wanted = match models::wanted(
            &self.model.spec,
            &self.model.path,
            &self.files,
            &self.me,
            self.placement,
            context,
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot describe the model");
                return;
            }
        };
        eprintln!(
            "asking the cluster to serve {} ({} bytes, sha256 {}, {} placement)",
            wanted.name, wanted.size_bytes, wanted.sha256, wanted.placement
        );
        loop {
            let held = self.view.read().is_ok_and(|v| {
                v.state
                    .wanted
                    .get(&wanted.name)
                    .is_some_and(|w| w.sha256 == wanted.sha256)
            });
            if held {
                return;
            }
            let event = Event::ModelWanted {
                model: wanted.clone(),
            };
            if self.facts.blocking_send(LocalFact::Propose(event)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Publishes this node's devices: at once when declared, else once the CPU is measured (the
/// first start on new hardware takes a few seconds; later starts read the registry).
fn spawn_device_facts(
    node: NodeId,
    declared: Option<Arc<Declared>>,
    memory_limit: Option<u64>,
    facts: mpsc::Sender<LocalFact>,
) {
    tokio::task::spawn_blocking(move || {
        let cpu = if declared.is_some() {
            None
        } else {
            match measured_cpu(false) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "CPU not measured; publishing it without figures");
                    None
                }
            }
        };
        let mut devices = facts::devices(cpu.as_ref(), declared.as_deref());
        if let Some(limit) = memory_limit {
            for d in &mut devices {
                d.memory_budget_bytes = d.memory_budget_bytes.min(limit);
            }
        }
        let _ = facts.blocking_send(LocalFact::Propose(Event::DeviceInfo { node, devices }));
    });
}

fn spawn_telemetry(
    node: NodeId,
    declared: Option<Arc<Declared>>,
    period: Duration,
    facts: mpsc::Sender<LocalFact>,
) {
    tokio::task::spawn_blocking(move || {
        let sampler = match Sampler::start(TelemetryConfig {
            period,
            ..TelemetryConfig::default()
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no telemetry on this machine");
                return;
            }
        };
        let device = match (&declared, hearth_device::cpu::probe()) {
            (Some(d), _) => format!("declared-{}", d.profile.name),
            (None, Ok(info)) => info.device_id(),
            (None, Err(_)) => return,
        };
        let mut stand_in = declared
            .as_ref()
            .and_then(|d| d.profile.thermal.as_ref())
            .and_then(|t| match ThermalStandIn::new(t) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "the declared thermal parameters cannot be simulated");
                    None
                }
            });
        let mut last_ms: Option<u64> = None;
        while let Some(s) = sampler.recv() {
            let dt_s = last_ms.map_or(period.as_secs_f64(), |l| {
                s.at_unix_ms.saturating_sub(l) as f64 / 1e3
            });
            last_ms = Some(s.at_unix_ms);
            let on_battery = declared.as_ref().is_some_and(|d| d.profile.on_battery);
            let reading = stand_in.as_mut().and_then(|sim| {
                sim.step(f64::from(s.utilisation), dt_s, on_battery, None)
                    .map_err(|e| tracing::debug!(error = %e, "stand-in sample refused"))
                    .ok()
            });
            let t = facts::telemetry(&device, &s, declared.as_deref(), reading.as_ref(), now_ms());
            let event = Event::Telemetry {
                node: node.clone(),
                samples: vec![t],
            };
            if facts.blocking_send(LocalFact::Propose(event)).is_err() {
                return;
            }
        }
    });
}
