use super::load::{peak_rss_bytes, EngineArgs, LoadedModel, ModelArgs};
use anyhow::bail;
use clap::Args;
use hearth_engine::LogitRows;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one batch for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time for the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Times each measurement is repeated (the mean is reported).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Measures like llama-bench: prefill = P tokens in one pass on an empty cache; decode = G
/// single-token passes on an empty cache; each after one warm-up run.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.prompt_tokens == 0 && args.gen_tokens == 0 {
        bail!("nothing to measure: --prompt-tokens and --gen-tokens are both 0");
    }
    let model = LoadedModel::open(&args.model)?;
    let mut engine = args.engine.clone();
    let needed = args.prompt_tokens.max(args.gen_tokens).max(1);
    engine.context = Some(engine.context.unwrap_or(needed).max(needed));
    let mut chain = model.load_chain(&engine, 1)?;
    let vocab = chain.config().vocab_size as u32;
    // Deterministic pseudo-random tokens, as llama-bench uses random tokens.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next_token = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab as u64) as u32
    };
    let reps = args.repetitions.max(1);
    let mut prefill = None;
    if args.prompt_tokens > 0 {
        let tokens: Vec<u32> = (0..args.prompt_tokens).map(|_| next_token()).collect();
        let mut total = 0.0;
        for rep in 0..=reps {
            let seq = chain.new_sequence()?;
            let start = Instant::now();
            chain.forward(seq, &tokens, LogitRows::Last)?;
            let secs = start.elapsed().as_secs_f64();
            chain.drop_sequence(seq);
            if rep > 0 {
                total += args.prompt_tokens as f64 / secs;
            }
        }
        prefill = Some(total / reps as f64);
    }
    let mut decode = None;
    if args.gen_tokens > 0 {
        let mut total = 0.0;
        for rep in 0..=reps {
            let seq = chain.new_sequence()?;
            let mut token = next_token();
            let start = Instant::now();
            for _ in 0..args.gen_tokens {
                let logits = chain.forward(seq, &[token], LogitRows::Last)?;
                token = hearth_engine::sample::argmax_logits(logits);
            }
            let secs = start.elapsed().as_secs_f64();
            chain.drop_sequence(seq);
            if rep > 0 {
                total += args.gen_tokens as f64 / secs;
            }
        }
        decode = Some(total / reps as f64);
    }
    let rss = peak_rss_bytes();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "prefill_tok_s": prefill,
                "decode_tok_s": decode,
                "peak_rss_bytes": rss,
                "threads": chain.shards()[0].pool().threads(),
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
            })
        );
    } else {
        if let Some(p) = prefill {
            println!("prefill: {p:.1} tok/s ({} tokens)", args.prompt_tokens);
        }
        if let Some(d) = decode {
            println!("decode:  {d:.1} tok/s ({} tokens)", args.gen_tokens);
        }
        if let Some(r) = rss {
            println!("peak RSS: {:.1} MiB", r as f64 / (1 << 20) as f64);
        }
    }
    Ok(())
}
