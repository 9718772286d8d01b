//! `hearth cluster status` and `hearth cluster key`.

use super::up::{cluster_key, default_data_dir, DEFAULT_API};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, their devices, the coordinator, the link matrix and refusal counters, as seen
    /// by one node.
    Status(StatusArgs),
    /// Print the cluster key of this node's data dir (generated on first start), to give to
    /// the nodes that should join.
    Key(KeyArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The node's API address.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API)]
    pub api: String,
    /// Print the node's JSON as it is.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// An admin token for a node that requires one (default: $HEARTH_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The node's data dir (default: $XDG_DATA_HOME/hearth/node).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status(args) => status(args),
        ClusterCommand::Key(args) => {
            let dir = match args.data_dir {
                Some(d) => d,
                None => default_data_dir()?,
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
            let key = cluster_key(None, None, &dir)?;
            println!("{key}");
            eprintln!(
                "cluster {}: start other nodes with --cluster-key <the key above>",
                key.cluster_id()
            );
            Ok(())
        }
    }
}

fn fetch(api: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let url = format!("http://{api}/api/cluster");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let body = request
        .call()
        .map_err(|e| match e {
            ureq::Error::StatusCode(s @ (401 | 403)) => anyhow::anyhow!(
                "{url} answered {s}: pass an admin token with --token or $HEARTH_TOKEN"
            ),
            e => anyhow::Error::new(e).context(format!(
                "no hearth node answers at {url} (is `hearth up` running?)"
            )),
        })?
        .body_mut()
        .read_to_string()
        .context("reading the node's answer")?;
    serde_json::from_str(&body).with_context(|| format!("{url} did not return JSON"))
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("HEARTH_TOKEN").ok())
        .filter(|t| !t.is_empty());
    loop {
        let v = fetch(&args.api, token.as_deref())?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            if args.watch {
                // Clear the screen and home the cursor.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", render(&v))?;
        }
        out.flush()?;
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn short(id: &str) -> &str {
    // PeerIds share a long prefix; their tail tells them apart.
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The status as text: who is in, who coordinates, how the links are, what was refused.
pub fn render(v: &Value) -> String {
    let mut s = String::new();
    let str_of = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let empty = Vec::new();
    let nodes = v["nodes"].as_array().unwrap_or(&empty);
    let names: std::collections::HashMap<String, String> = nodes
        .iter()
        .map(|n| (str_of(&n["id"]), str_of(&n["name"])))
        .collect();
    let label = |id: &str| {
        names
            .get(id)
            .map_or_else(|| short(id).to_string(), |n| n.to_string())
    };
    let coordinator = v["coordinator"].as_str().unwrap_or("");
    s += &format!(
        "cluster {}  ·  seen by {} ({})  ·  coordinator {}  ·  epoch {}  seq {}  state {}\n\n",
        str_of(&v["node"]["cluster_id"]),
        str_of(&v["node"]["name"]),
        short(&str_of(&v["node"]["id"])),
        label(coordinator),
        v["epoch"],
        v["last_seq"],
        str_of(&v["state_hash"]),
    );
    s += &format!(
        "{:<16} {:<10} {:<32} {:>10} {:>9} {:>8}\n",
        "NODE", "ID", "DEVICE", "MEMORY", "GB/s", "TFLOP/s"
    );
    for n in nodes {
        let id = str_of(&n["id"]);
        let mark = if id == coordinator { "*" } else { "" };
        let devices = n["devices"].as_array().cloned().unwrap_or_default();
        if devices.is_empty() {
            s += &format!(
                "{:<16} {:<10} (no devices reported yet)\n",
                format!("{}{mark}", str_of(&n["name"])),
                short(&id)
            );
        }
        for (i, d) in devices.iter().enumerate() {
            let (node, nid) = if i == 0 {
                (
                    format!("{}{mark}", str_of(&n["name"])),
                    short(&id).to_string(),
                )
            } else {
                (String::new(), String::new())
            };
            let declared = if d["declared"] == true {
                " (declared)"
            } else {
                ""
            };
            s += &format!(
                "{:<16} {:<10} {:<32} {:>10} {:>9.1} {:>8.3}\n",
                node,
                nid,
                format!(
                    "{}{declared}",
                    str_of(&d["name"]).chars().take(30).collect::<String>()
                ),
                format!(
                    "{:.1} GiB",
                    d["memory_budget_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64
                ),
                num(&d["bandwidth_gbs"]).unwrap_or(0.0),
                num(&d["tflops"]).unwrap_or(0.0),
            );
        }
    }
    s += "(* coordinator)\n\nLINKS (from → to: RTT p50/p95, throughput, loss)\n";
    let links = v["links"].as_array().unwrap_or(&empty);
    if links.is_empty() {
        s += "  none measured yet\n";
    }
    for l in links {
        let opt = |x: &Value, f: &dyn Fn(f64) -> String| num(x).map_or("n/a".to_string(), f);
        s += &format!(
            "  {:<14} → {:<14} {:>7.2}/{:<7.2} ms {:>12} {:>8}\n",
            label(&str_of(&l["from"])),
            label(&str_of(&l["to"])),
            num(&l["rtt_p50_ms"]).unwrap_or(f64::NAN),
            num(&l["rtt_p95_ms"]).unwrap_or(f64::NAN),
            opt(&l["throughput_mbps"], &|t| format!("{t:.1} Mbit/s")),
            opt(&l["loss"], &|x| format!("{:.1} %", 100.0 * x)),
        );
    }
    let c = &v["counters"];
    s += &format!(
        "\nREFUSED  admission {}  malformed {}  oversized {}  unadmitted {}\n",
        c["refused_admission"],
        c["dropped_malformed"],
        c["dropped_oversized"],
        c["dropped_unadmitted"]
    );
    for r in v["recent_refusals"].as_array().unwrap_or(&empty) {
        s += &format!(
            "  {} from {}: {}\n",
            short(&str_of(&r["peer"])),
            r["addr"].as_str().unwrap_or("?"),
            str_of(&r["reason"])
        );
    }
    s
}
