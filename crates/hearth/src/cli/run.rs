use super::load::{EngineArgs, LoadedModel, ModelArgs};
use crate::node::openai::text::take_complete_utf8;
use anyhow::{bail, Context};
use clap::Args;
use hearth_engine::{Sampler, SamplerConfig};
use hearth_model::chat::ChatMessage;
use std::io::Write;

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["prompt", "chat"]))]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to continue, as is.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    pub chat: Option<String>,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 always takes the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample only among the most likely tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed, for repeatable sampling (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print one JSON object: prompt tokens, generated tokens and text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.temperature.is_nan() || args.temperature < 0.0 {
        bail!("--temperature must be zero or positive");
    }
    let model = LoadedModel::open(&args.model)?;
    let mut chain = model.load_chain(&args.engine, 1)?;
    let tok = &model.tokenizer;
    let prompt_tokens = match (&args.prompt, &args.chat) {
        (Some(text), _) => {
            let mut ids: Vec<u32> = tok.bos_to_add().into_iter().collect();
            ids.extend(tok.encode(text, false));
            ids
        }
        (None, Some(message)) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system));
            }
            messages.push(ChatMessage::new("user", message));
            let templated = model.chat_template()?.render(&messages, true)?;
            tok.encode(&templated, true)
        }
        (None, None) => bail!("give --prompt or --chat"),
    };
    if prompt_tokens.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt_tokens.len() >= chain.context() {
        bail!(
            "the prompt has {} tokens but the context holds {}; shorten it or raise --context",
            prompt_tokens.len(),
            chain.context()
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed,
        ..SamplerConfig::default()
    });
    let mut generated = Vec::new();
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    let stats = chain.generate(
        &prompt_tokens,
        args.max_tokens,
        &mut sampler,
        |t| tok.is_end_of_generation(t),
        |t| {
            generated.push(t);
            if !args.json {
                pending.extend_from_slice(tok.token_bytes(t));
                let mut out = stdout.lock();
                let _ = out.write_all(take_complete_utf8(&mut pending).as_bytes());
                let _ = out.flush();
            }
            true
        },
    )?;
    let text = tok.decode(&generated);
    if args.json {
        let json = serde_json::json!({
            "prompt_tokens": prompt_tokens,
            "tokens": generated,
            "text": text,
            "peak_rss_bytes": super::load::peak_rss_bytes(),
        });
        println!("{json}");
    } else {
        let mut out = stdout.lock();
        out.write_all(String::from_utf8_lossy(&pending).as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .context("cannot write to stdout")?;
        let decode_rate = if stats.decode_seconds > 0.0 && stats.generated_tokens > 1 {
            (stats.generated_tokens - 1) as f64 / stats.decode_seconds
        } else {
            0.0
        };
        eprintln!(
            "[{} prompt tokens in {:.2} s, {} generated at {:.1} tok/s{}]",
            stats.prompt_tokens,
            stats.prefill_seconds,
            stats.generated_tokens,
            decode_rate,
            if stats.context_full {
                ", context full"
            } else {
                ""
            }
        );
    }
    Ok(())
}
