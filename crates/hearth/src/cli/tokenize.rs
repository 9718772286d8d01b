use super::load::{LoadedModel, ModelArgs};
use clap::Args;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize; special tokens such as `<|im_start|>` are recognised.
    pub text: String,
    /// Also add the model's BOS token when it asks for one.
    #[arg(long)]
    pub add_special: bool,
    /// Print `{"tokens":[..]}` instead of one `id<TAB>piece` line per token.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let model = LoadedModel::open(&args.model)?;
    let tok = &model.tokenizer;
    let tokens = tok.encode_with_special(&args.text, args.add_special, true);
    if args.json {
        println!("{}", serde_json::json!({ "tokens": tokens }));
    } else {
        for t in tokens {
            println!(
                "{t}\t{:?}",
                String::from_utf8_lossy(tok.token_piece(t, true))
            );
        }
    }
    Ok(())
}
