//! `hearth place`: plan which device runs which layers of a model on a fleet file.

use anyhow::{bail, Context};
use clap::Args;
use hearth_model::catalog;
use hearth_model::config::{ModelConfig, ModelSizes};
use hearth_model::gguf::GgufFile;
use hearth_placement::profiles;
use hearth_placement::{plan, Fleet, ModelProfile, Objective, Plan, Policy};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct PlaceArgs {
    /// Model: a profile name (e.g. llama-3.1-70b-q4_k_m), a catalog model name, or a .gguf path.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Fleet file: devices and links with measured figures (TOML).
    #[arg(long)]
    pub fleet: String,
    /// `latency`: fastest single-stream decode; `throughput`: best pipeline rate.
    #[arg(long, default_value = "latency", value_parser = ["latency", "throughput"])]
    pub objective: String,
    /// Tokens of KV cache each stage reserves.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Let devices on battery take part.
    #[arg(long)]
    pub allow_battery: bool,
    /// Leave out devices whose thermal headroom is below this (0..1).
    #[arg(long, default_value_t = 0.5)]
    pub min_headroom: f64,
    /// Search time budget in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub budget_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PlaceArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.fleet)
        .with_context(|| format!("cannot read fleet file {}", args.fleet))?;
    let fleet = Fleet::from_toml(&text).with_context(|| format!("fleet file {}", args.fleet))?;
    let model = load_profile(&args.model)?;
    let policy = Policy {
        context: args.context,
        objective: Objective::parse(&args.objective).expect("clap checked the objective"),
        allow_battery: args.allow_battery,
        min_headroom: args.min_headroom,
        budget: Duration::from_millis(args.budget_ms),
        ..Policy::default()
    };
    let p = plan(&fleet, &model, &policy)?;
    if args.json {
        println!("{}", to_json(&fleet, &p));
    } else {
        print_table(&fleet, &p);
    }
    Ok(())
}

/// A profile from the built-in list, a GGUF file, or a catalog model (pulled if needed).
fn load_profile(spec: &str) -> anyhow::Result<ModelProfile> {
    if let Some(p) = profiles::catalog_profile(spec) {
        return Ok(p);
    }
    let path = if Path::new(spec).is_file() {
        spec.into()
    } else if catalog::find(spec).is_some() {
        super::model::resolve_or_pull(spec)?
    } else {
        bail!(
            "unknown model `{spec}`: not a file, a profile ({}) or a catalog model ({})",
            profiles::catalog_names().join(", "),
            catalog::names().join(", ")
        );
    };
    profile_from_gguf(&path)
}

/// Measures a GGUF file into the sizes the planner works with.
pub fn profile_from_gguf(path: &Path) -> anyhow::Result<ModelProfile> {
    let file = GgufFile::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let config = ModelConfig::from_gguf(&file)
        .with_context(|| format!("unsupported model {}", path.display()))?;
    let sizes = ModelSizes::from_gguf(&file, &config);
    let name = config.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(ModelProfile {
        name,
        hidden_size: config.n_embd,
        n_kv_heads: config.n_head_kv,
        head_dim: config.head_dim,
        layer_bytes: sizes.layers.iter().map(|l| l.bytes).collect(),
        layer_params: sizes.layers.iter().map(|l| l.params).collect(),
        embedding_bytes: sizes.embedding.bytes,
        embedding_params: sizes.embedding.params,
        head_bytes: sizes.head.bytes,
        head_params: sizes.head.params,
        tied_embeddings: config.tied_embeddings,
        tensor_types: sizes
            .tensor_types
            .iter()
            .map(|t| t.name().to_string())
            .collect(),
    })
}

fn to_json(fleet: &Fleet, p: &Plan) -> serde_json::Value {
    let tp = p.tensor_parallel.as_ref().map(|t| {
        json!({
            "wins": t.wins,
            "optimal": t.optimal,
            "predicted_decode_tok_s": t.prediction.decode_tok_s(),
            "predicted_throughput_tok_s": t.prediction.throughput_tok_s(),
            "predicted_prefill_512_s": t.prediction.prefill_s,
            "stages": t.stages.iter().map(|s| json!({
                "devices": s.devices.iter().map(|&d| fleet.devices()[d].name.clone()).collect::<Vec<_>>(),
                "layers": [s.first_layer, s.end_layer],
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "model": p.model,
        "objective": p.objective.name(),
        "context": p.context,
        "stages": p.stages.iter().map(|s| json!({
            "device": s.device,
            "layers": [s.first_layer, s.end_layer],
            "bytes": s.bytes,
            "memory_bytes": s.memory_bytes,
            "memory_free_bytes": s.memory_free_bytes,
            "embedding": s.holds_embedding,
            "head": s.holds_head,
        })).collect::<Vec<_>>(),
        "act_dtype": p.act_dtype().name(),
        "predicted_decode_tok_s": p.prediction.decode_tok_s(),
        "predicted_throughput_tok_s": p.prediction.throughput_tok_s(),
        "predicted_prefill_512_s": p.prediction.prefill_s,
        "solve_ms": p.solve_time.as_secs_f64() * 1e3,
        "optimal": p.optimal,
        "search_nodes": p.nodes,
        "gap_to_lower_bound": p.gap(),
        "unused": p.unused.iter().map(|u| json!({"device": u.device, "reason": u.reason})).collect::<Vec<_>>(),
        "tensor_parallel": tp,
    })
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn print_table(fleet: &Fleet, p: &Plan) {
    println!(
        "model {}, objective {}, context {} tokens, activations in {}",
        p.model,
        p.objective.name(),
        p.context,
        p.act_dtype()
    );
    println!();
    println!(
        "{:<6} {:<20} {:>9} {:>11} {:>11} {:>11}",
        "stage", "device", "layers", "weights", "memory", "free"
    );
    for (i, s) in p.stages.iter().enumerate() {
        println!(
            "{:<6} {:<20} {:>9} {:>11} {:>11} {:>11}",
            i + 1,
            s.device,
            format!("{}..{}", s.first_layer, s.end_layer),
            gib(s.bytes),
            gib(s.memory_bytes),
            gib(s.memory_free_bytes)
        );
    }
    println!();
    println!(
        "decode {:.2} tok/s (one stream), {:.2} tok/s pipelined; prefill of 512 tokens {:.3} s",
        p.prediction.decode_tok_s(),
        p.prediction.throughput_tok_s(),
        p.prediction.prefill_s
    );
    if p.optimal {
        println!(
            "solved in {:.1} ms: optimal",
            p.solve_time.as_secs_f64() * 1e3
        );
    } else {
        println!(
            "solved in {:.1} ms: budget reached, within {:.1}% of the optimum",
            p.solve_time.as_secs_f64() * 1e3,
            p.gap() * 100.0
        );
    }
    if !p.unused.is_empty() {
        println!();
        println!("unused:");
        for u in &p.unused {
            println!("  {:<20} {}", u.device, u.reason);
        }
    }
    if let Some(t) = &p.tensor_parallel {
        let stages: Vec<String> = t
            .stages
            .iter()
            .map(|s| {
                let names: Vec<&str> = s
                    .devices
                    .iter()
                    .map(|&d| fleet.devices()[d].name.as_str())
                    .collect();
                format!("{} {}..{}", names.join("+"), s.first_layer, s.end_layer)
            })
            .collect();
        println!();
        println!(
            "tensor parallel ({}): {:.2} tok/s with {}",
            if t.wins { "would win" } else { "would not win" },
            t.prediction.decode_tok_s(),
            stages.join(", ")
        );
    }
}
