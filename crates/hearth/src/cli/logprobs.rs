use super::load::{parse_ids, EngineArgs, LoadedModel, ModelArgs, TokenIds};
use anyhow::bail;
use clap::Args;
use hearth_engine::LogitRows;

#[derive(Args, Debug)]
pub struct LogprobsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids of the prompt.
    #[arg(long, value_parser = parse_ids)]
    pub prompt_tokens: TokenIds,
    /// Comma-separated token ids to score after the prompt.
    #[arg(long, value_parser = parse_ids)]
    pub continuation: TokenIds,
    /// How many of the most likely tokens to list per step.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print JSON (the only format).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LogprobsArgs) -> anyhow::Result<()> {
    let prompt = args.prompt_tokens.0;
    let continuation = args.continuation.0;
    if prompt.is_empty() {
        bail!("--prompt-tokens must name at least one token");
    }
    if continuation.is_empty() {
        bail!("--continuation must name at least one token");
    }
    let model = LoadedModel::open(&args.model)?;
    let mut chain = model.load_chain(&args.engine, 1)?;
    let total = prompt.len() + continuation.len() - 1;
    if total > chain.context() {
        bail!(
            "prompt and continuation need {total} positions but the context holds {}; raise --context",
            chain.context()
        );
    }
    let vocab = chain.config().vocab_size;
    let mut input = prompt.clone();
    input.extend_from_slice(&continuation[..continuation.len() - 1]);
    let seq = chain.new_sequence()?;
    let logits = chain.forward(seq, &input, LogitRows::All)?;
    let mut steps = Vec::with_capacity(continuation.len());
    let mut logprobs = vec![0f32; vocab];
    for (i, &token) in continuation.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + i) * vocab..][..vocab];
        hearth_engine::cpu::ops::log_softmax(row, &mut logprobs);
        let mut order: Vec<u32> = (0..vocab as u32).collect();
        let k = args.top.min(vocab);
        let by_prob = |a: &u32, b: &u32| {
            logprobs[*b as usize]
                .total_cmp(&logprobs[*a as usize])
                .then(a.cmp(b))
        };
        if k > 0 && k < vocab {
            order.select_nth_unstable_by(k - 1, by_prob);
        }
        order.truncate(k);
        order.sort_by(by_prob);
        let lp = logprobs.get(token as usize).copied();
        let Some(lp) = lp else {
            bail!("continuation token {token} is outside the vocabulary of {vocab}");
        };
        steps.push(serde_json::json!({
            "token": token,
            "logprob": lp,
            "top": order.iter().map(|&t| serde_json::json!([t, logprobs[t as usize]])).collect::<Vec<_>>(),
        }));
    }
    println!("{}", serde_json::json!({ "steps": steps }));
    Ok(())
}
