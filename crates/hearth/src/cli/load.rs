//! Loading a model for the commands that run it: resolve the name, open and validate the file,
//! build the tokenizer, and load the engine's shards.

use super::declared::Declared;
use anyhow::{bail, Context};
use clap::Args;
use hearth_engine::{ShardChain, ShardOptions};
use hearth_model::chat::ChatTemplate;
use hearth_model::config::ModelConfig;
use hearth_model::gguf::GgufFile;
use hearth_model::tokenizer::Tokenizer;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Options shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model to use: a catalog name (see `hearth model list`) or a path to a .gguf file.
    #[arg(long, short = 'm', default_value = "smollm2-135m")]
    pub model: String,
}

/// Options of the engine when it runs a model.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Compute threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Pin each compute thread to a core of its own (Linux; ignored where there are more
    /// threads than cores). Steadier decode where other processes share the cores.
    #[arg(long)]
    pub pin_threads: bool,
    /// Run the model as a chain of shards, e.g. `0..10,10..20,20..30` (same output as whole).
    #[arg(long, value_parser = parse_layers)]
    pub layers: Option<LayerSplit>,
    /// Positions (prompt + generated tokens) the KV cache holds (default: the model's
    /// training context, at most 4096).
    #[arg(long)]
    pub context: Option<usize>,
    /// Refuse to load if weights, KV cache and scratch exceed this size (e.g. `512MiB`, `2G`).
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// Stand in for a declared device: a TOML file with the fields of a fleet file's
    /// `[[device]]` (name, backend, memory_gib, bandwidth_gbs, tflops, precisions, optional
    /// thermal_headroom, on_battery) plus optional `compute_share` (0..1; default: declared
    /// over measured bandwidth) and `[thermal]`. The engine refuses to load past its memory
    /// and runs at its compute share.
    #[arg(long, value_name = "FILE")]
    pub device_profile: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LayerSplit(pub Vec<Range<usize>>);

fn parse_layers(s: &str) -> Result<LayerSplit, String> {
    let ranges = s
        .split(',')
        .map(|part| {
            let (a, b) = part
                .trim()
                .split_once("..")
                .ok_or_else(|| format!("{part:?} is not a range like 0..10"))?;
            let a: usize = a
                .trim()
                .parse()
                .map_err(|_| format!("bad layer number {a:?}"))?;
            let b: usize = b
                .trim()
                .parse()
                .map_err(|_| format!("bad layer number {b:?}"))?;
            if a >= b {
                return Err(format!("empty layer range {a}..{b}"));
            }
            Ok(a..b)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LayerSplit(ranges))
}

/// Parses `123`, `512MiB`, `1.5GiB`, `2G`, `300MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((value * scale) as u64)
}

pub struct LoadedModel {
    pub path: PathBuf,
    pub file: Arc<GgufFile>,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
}

impl LoadedModel {
    pub fn open(args: &ModelArgs) -> anyhow::Result<LoadedModel> {
        let path = super::model::resolve_or_pull(&args.model)?;
        let file = GgufFile::open(&path)
            .with_context(|| format!("cannot load model {}", path.display()))?;
        let config = ModelConfig::from_gguf(&file)
            .with_context(|| format!("cannot run {}", path.display()))?;
        let tokenizer = Tokenizer::from_metadata(file.metadata())
            .with_context(|| format!("cannot build the tokenizer of {}", path.display()))?;
        Ok(LoadedModel {
            path,
            file: Arc::new(file),
            config,
            tokenizer,
        })
    }

    /// The model's chat template, or ChatML when the file has none.
    pub fn chat_template(&self) -> anyhow::Result<ChatTemplate> {
        chat_template(&self.file, &self.tokenizer)
    }

    pub fn load_chain(&self, args: &EngineArgs, sequences: usize) -> anyhow::Result<ShardChain> {
        let context = args
            .context
            .unwrap_or_else(|| self.config.context_length.min(4096));
        if context == 0 {
            bail!("--context must be at least 1");
        }
        let declared = args
            .device_profile
            .as_deref()
            .map(Declared::load)
            .transpose()?;
        let mut memory_limit = args.memory_limit;
        let mut compute_share = 1.0;
        if let Some(d) = &declared {
            eprintln!("{}", d.summary());
            let limit = d.profile.memory_bytes();
            memory_limit = Some(memory_limit.map_or(limit, |m| m.min(limit)));
            compute_share = d.compute_share;
        }
        let options = ShardOptions {
            context,
            max_sequences: sequences,
            memory_limit,
            compute_share,
            threads: args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
            pin_threads: args.pin_threads,
            ..ShardOptions::default()
        };
        let ranges = args
            .layers
            .as_ref()
            .map(|l| l.0.clone())
            .unwrap_or_default();
        ShardChain::load(Arc::clone(&self.file), &ranges, options)
            .with_context(|| format!("cannot run {}", self.path.display()))
    }
}

/// The chat template in a model file, or ChatML when it has none.
pub fn chat_template(file: &GgufFile, tokenizer: &Tokenizer) -> anyhow::Result<ChatTemplate> {
    let md = file.metadata();
    if md.get("tokenizer.chat_template").is_some() {
        return ChatTemplate::from_metadata(md).context("the model's chat template is invalid");
    }
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    Ok(ChatTemplate::chatml(
        text(tokenizer.bos()),
        text(tokenizer.eos()),
    ))
}

/// The context length a model was trained with.
pub fn training_context(path: &std::path::Path) -> anyhow::Result<usize> {
    let file = GgufFile::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let config = ModelConfig::from_gguf(&file)
        .with_context(|| format!("unsupported model {}", path.display()))?;
    Ok(config.context_length)
}

/// Peak resident memory of this process, from the kernel's high-water mark.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A comma-separated list of token ids on the command line.
#[derive(Debug, Clone, Default)]
pub struct TokenIds(pub Vec<u32>);

pub fn parse_ids(s: &str) -> Result<TokenIds, String> {
    if s.trim().is_empty() {
        return Ok(TokenIds::default());
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("bad token id {p:?}"))
        })
        .collect::<Result<_, _>>()
        .map(TokenIds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("12XB").is_err());
    }

    #[test]
    fn layer_splits_parse() {
        let l = parse_layers("0..10, 10..30").unwrap();
        assert_eq!(l.0, vec![0..10, 10..30]);
        assert!(parse_layers("5..5").is_err());
        assert!(parse_layers("a..b").is_err());
    }
}
