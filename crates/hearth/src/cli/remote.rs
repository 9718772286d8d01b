//! Commands that act on a running cluster through a node's admin API: `hearth model load` and
//! `hearth model unload`.

use super::up::DEFAULT_API;
use crate::node::instances::models::Placement;
use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The node's API address.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API)]
    pub api: String,
    /// Bearer token for the API (an admin token where the node requires tokens).
    #[arg(long, env = "HEARTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    fn url(&self, path: &str) -> String {
        if self.api.starts_with("http://") || self.api.starts_with("https://") {
            format!("{}{path}", self.api.trim_end_matches('/'))
        } else {
            format!("http://{}{path}", self.api)
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let url = self.url(path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("POST", Some(b)) => {
                let mut req = agent.post(&url).header("content-type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.send(b.to_string())
            }
            ("DELETE", _) => {
                let mut req = agent.delete(&url);
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.call()
            }
        };
        let mut resp = result.with_context(|| {
            format!("no hearth node answers at {url} (is `hearth up` running?)")
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("{method} {url}: {status}: {message}");
        }
        Ok(v)
    }
}

pub fn load(
    api: &ApiArgs,
    model: &str,
    placement: Placement,
    context: Option<usize>,
    no_wait: bool,
    timeout_s: u64,
) -> anyhow::Result<()> {
    let accepted = api.call(
        "POST",
        "/api/instances",
        Some(json!({"model": model, "placement": placement.name(), "context": context})),
    )?;
    let name = accepted["model"].as_str().unwrap_or(model).to_string();
    eprintln!(
        "the cluster will serve {name} ({} placement, sha256 {})",
        placement.name(),
        accepted["sha256"].as_str().unwrap_or("?")
    );
    if no_wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut last_line = String::new();
    loop {
        let v = api.call("GET", "/api/instances", None)?;
        let instances: Vec<&Value> = v["instances"]
            .as_array()
            .map(|a| a.iter().filter(|i| i["model"] == name.as_str()).collect())
            .unwrap_or_default();
        if let Some(ready) = instances.iter().find(|i| i["status"]["state"] == "ready") {
            print_instance(ready);
            return Ok(());
        }
        let line = match instances.last() {
            Some(i) => {
                let stages = i["stages"].as_array().map_or(&[][..], Vec::as_slice);
                let done = stages
                    .iter()
                    .filter(|s| s["status"]["state"] == "ready")
                    .count();
                format!(
                    "{}: {}, {done} of {} stages loaded",
                    i["id"].as_str().unwrap_or("?"),
                    i["status"]["state"].as_str().unwrap_or("?"),
                    stages.len()
                )
            }
            None => "waiting for the coordinator to place it…".to_string(),
        };
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within {timeout_s} s (see `hearth cluster status`)");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_instance(i: &Value) {
    println!(
        "{} ready: predicted {:.1} tok/s",
        i["id"].as_str().unwrap_or("?"),
        i["predicted_tokens_per_s"].as_f64().unwrap_or(0.0)
    );
    for s in i["stages"].as_array().map_or(&[][..], Vec::as_slice) {
        println!(
            "  layers {:>3}..{:<3} on {} ({})",
            s["first_layer"],
            s["end_layer"],
            s["node_name"].as_str().unwrap_or("?"),
            s["device"].as_str().unwrap_or("?"),
        );
    }
}

pub fn unload(api: &ApiArgs, model: &str) -> anyhow::Result<()> {
    api.call("DELETE", &format!("/api/instances/{model}"), None)?;
    eprintln!("the cluster stops serving {model}; its instances drain and are removed");
    Ok(())
}
