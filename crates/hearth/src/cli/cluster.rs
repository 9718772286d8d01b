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
    /// Members, their devices, the coordinator, the link matrix, model instances and their
    /// layer split, refusal counters and active alerts, as seen by one node.
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

fn fetch(api: &str, path: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let url = format!("http://{api}{path}");
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
        let mut v = fetch(&args.api, "/api/cluster", token.as_deref())?;
        // A node without alerts (an older release) still has a status worth showing.
        let alerts = fetch(&args.api, "/api/alerts", token.as_deref()).ok();
        let mut out = std::io::stdout().lock();
        if args.json {
            if let (Some(obj), Some(a)) = (v.as_object_mut(), alerts) {
                obj.insert("alerts".to_string(), a);
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            if args.watch {
                // Clear the screen and home the cursor.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", render(&v, alerts.as_ref()))?;
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

/// The status as text: who is in, who coordinates, how the links are, which instances run
/// where, what was refused, and the active alerts (`alerts`: `/api/alerts`).
pub fn render(v: &Value, alerts: Option<&Value>) -> String {
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
    s += "\nINSTANCES (model, state, layers per stage)\n";
    let instances = v["instances"].as_object().cloned().unwrap_or_default();
    if instances.is_empty() {
        s += "  none\n";
    }
    for (id, inst) in &instances {
        let status = &inst["status"];
        let state = match status["state"].as_str().unwrap_or("?") {
            "loading" => format!(
                "loading {:.0} %",
                100.0 * num(&status["progress"]).unwrap_or(0.0)
            ),
            "failed" => format!("failed: {}", str_of(&status["reason"])),
            other => other.to_string(),
        };
        s += &format!("  {id:<14} {:<28} {state}\n", str_of(&inst["model"]));
        for st in inst["stages"].as_array().unwrap_or(&empty) {
            s += &format!(
                "    layers {:>3}..{:<3} on {} ({})\n",
                st["first_layer"].as_u64().unwrap_or(0),
                st["end_layer"].as_u64().unwrap_or(0),
                label(&str_of(&st["node"])),
                str_of(&st["device"])
            );
        }
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
    s += "\nALERTS\n";
    let Some(alerts) = alerts else {
        s += "  (this node does not report alerts)\n";
        return s;
    };
    let active = alerts["active"].as_array().unwrap_or(&empty);
    if active.is_empty() {
        s += "  none\n";
    }
    for a in active {
        let sub = &a["subject"];
        let subject = match sub["kind"].as_str().unwrap_or("") {
            "device" => format!(
                "{} on {}",
                str_of(&sub["device"]),
                label(&str_of(&sub["node"]))
            ),
            "node" => label(&str_of(&sub["node"])),
            "link" => format!(
                "{} → {}",
                label(&str_of(&sub["from"])),
                label(&str_of(&sub["to"]))
            ),
            "instance" => str_of(&sub["instance"]),
            "model" => str_of(&sub["model"]),
            other => other.to_string(),
        };
        s += &format!(
            "  {:<8} {:<26} {}\n           {}\n",
            str_of(&a["severity"]).to_uppercase(),
            str_of(&a["name"]),
            subject,
            str_of(&a["message"])
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::render;
    use serde_json::json;

    fn status() -> serde_json::Value {
        json!({
            "node": {"cluster_id": "c0ffee", "name": "alpha", "id": "12D3KooWaaaaaaaa"},
            "coordinator": "12D3KooWaaaaaaaa",
            "epoch": 2, "last_seq": 40, "state_hash": "00ff",
            "nodes": [
                {"id": "12D3KooWaaaaaaaa", "name": "alpha", "devices": []},
                {"id": "12D3KooWbbbbbbbb", "name": "beta", "devices": []},
            ],
            "links": [],
            "instances": {
                "i1": {
                    "model": "smollm2-135m",
                    "stages": [
                        {"node": "12D3KooWaaaaaaaa", "device": "cpu-a", "first_layer": 0, "end_layer": 20},
                        {"node": "12D3KooWbbbbbbbb", "device": "cpu-b", "first_layer": 20, "end_layer": 30},
                    ],
                    "status": {"state": "loading", "progress": 0.5},
                },
            },
            "counters": {},
            "recent_refusals": [],
        })
    }

    #[test]
    fn instances_show_their_layer_split_and_alerts_their_subject() {
        let alerts = json!({
            "active": [{
                "name": "device_throttled", "severity": "critical",
                "subject": {"kind": "device", "node": "12D3KooWbbbbbbbb", "device": "cpu-b"},
                "message": "cpu-b on beta is throttling", "started_ms": 1, "ended_ms": null,
            }],
            "resolved": [],
        });
        let text = render(&status(), Some(&alerts));
        assert!(text.contains("i1             smollm2-135m"), "{text}");
        assert!(text.contains("loading 50 %"), "{text}");
        assert!(text.contains("layers   0..20  on alpha (cpu-a)"), "{text}");
        assert!(text.contains("layers  20..30  on beta (cpu-b)"), "{text}");
        assert!(
            text.contains("CRITICAL device_throttled") && text.contains("cpu-b on beta\n"),
            "{text}"
        );
        assert!(text.contains("cpu-b on beta is throttling"), "{text}");
    }

    #[test]
    fn no_alerts_and_no_alert_endpoint_are_told_apart() {
        let none = json!({"active": [], "resolved": []});
        assert!(render(&status(), Some(&none)).contains("ALERTS\n  none\n"));
        assert!(render(&status(), None).contains("does not report alerts"));
    }
}
