//! `hearth up`: start a node. It finds and admits peers, agrees with them on one cluster state
//! and serves the HTTP API until interrupted; with `--model` it also runs that model here and
//! serves it through the OpenAI-compatible API.

use super::declared::Declared;
use super::devices::measured_cpu;
use super::load::{parse_size, EngineArgs, LoadedModel, ModelArgs};
use crate::node::driver::{now_ms, Driver, LocalFact};
use crate::node::openai::engine::LocalGenerator;
use crate::node::openai::{self, OpenAi, ServedModel, Serving};
use crate::node::security::{self, Security, SecurityArgs};
use crate::node::view::View;
use crate::node::{api, facts};
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
    /// Where the HTTP API listens.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API)]
    pub api: SocketAddr,
    /// Stand in for a declared device (see `hearth run --help`).
    #[arg(long, value_name = "FILE")]
    pub device_profile: Option<PathBuf>,
    /// Run this model on this node and serve it on the API's `/v1/...` endpoints: a catalog
    /// name (see `hearth model list`) or a path to a .gguf file. Default: no model.
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: Option<String>,
    /// Compute threads for the model (default: all cores).
    #[arg(long, short = 't', requires = "model")]
    pub threads: Option<usize>,
    /// Positions (prompt + generated tokens) one request may use (default: the model's
    /// training context, at most 4096).
    #[arg(long, requires = "model")]
    pub context: Option<usize>,
    /// Refuse to load the model if weights, KV cache and scratch exceed this size.
    #[arg(long, value_parser = parse_size, requires = "model")]
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
    let openai = OpenAi {
        serving: args
            .model
            .as_deref()
            .map(|m| load_model(m, &args))
            .transpose()?
            .map(Arc::new),
        max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
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
    runtime.block_on(serve(args, data_dir, key, declared, openai))
}

async fn serve(
    args: UpArgs,
    data_dir: PathBuf,
    key: ClusterKey,
    declared: Option<Declared>,
    openai: OpenAi,
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
    spawn_device_facts(id.clone(), declared.clone(), fact_tx.clone());
    spawn_telemetry(
        id.clone(),
        declared.clone(),
        Duration::from_millis(args.telemetry_ms),
        fact_tx,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let router = api::router(Arc::clone(&view), openai, security.auth.clone());
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

/// Loads the model as `hearth run` does and starts its engine thread; the API then serves it.
fn load_model(model: &str, args: &UpArgs) -> anyhow::Result<Serving> {
    let loaded = LoadedModel::open(&ModelArgs {
        model: model.to_string(),
    })?;
    let template = loaded.chat_template()?;
    let chain = loaded.load_chain(
        &EngineArgs {
            threads: args.threads,
            layers: None,
            context: args.context,
            memory_limit: args.memory_limit,
            device_profile: args.device_profile.clone(),
        },
        1,
    )?;
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let stem = loaded
        .path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned());
    // A catalog name is the model's id; a path is known by its file name without `.gguf`.
    let is_path = model.contains(std::path::MAIN_SEPARATOR) || model.ends_with(".gguf");
    let id = match (&stem, is_path) {
        (Some(s), true) => s.clone(),
        _ => model.to_string(),
    };
    let aliases = [Some(model.to_string()), file_name(&loaded.path), stem]
        .into_iter()
        .flatten()
        .collect();
    let tokenizer = Arc::new(loaded.tokenizer);
    let generator = LocalGenerator::new(chain, &tokenizer);
    let served = ServedModel {
        id,
        aliases,
        created: now_ms() / 1000,
        tokenizer,
        template,
        context: 0,
    };
    let serving = Serving::start(served, generator, args.max_queue as usize)
        .context("cannot start the engine thread")?;
    eprintln!(
        "serving {} ({} positions per request) from {}",
        serving.model.id,
        serving.model.context,
        loaded.path.display()
    );
    Ok(serving)
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
        let devices = facts::devices(cpu.as_ref(), declared.as_deref());
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
