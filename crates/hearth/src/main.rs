//! `hearth`: the command-line front end. Library crates do the work; this binary parses
//! arguments, wires them together and reports errors in one line.

mod cli;
mod node;
#[cfg(test)]
mod test_dir;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Turn the devices you own into one inference cluster for large language models.
#[derive(Parser)]
#[command(name = "hearth", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt or a chat message on this machine.
    Run(cli::run::RunArgs),
    /// Print the token ids of a text.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Score a continuation: per token, its log-probability and the top predictions.
    Logprobs(cli::logprobs::LogprobsArgs),
    /// Measure prompt-processing and generation speed.
    Bench(cli::bench::BenchArgs),
    /// Plan which device runs which layers of a model on a fleet.
    Place(cli::place::PlaceArgs),
    /// List this node's compute devices with measured figures.
    Devices(cli::devices::DevicesArgs),
    /// Start a node: join (or found) a cluster and serve the API.
    Up(cli::up::UpArgs),
    /// Inspect the cluster this node belongs to.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Create, list and revoke bearer tokens for a node's API.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Download and list models.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Tokenize(args) => cli::tokenize::run(args),
        Command::Logprobs(args) => cli::logprobs::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Model(cmd) => cli::model::run(cmd),
        Command::Place(args) => cli::place::run(args),
        Command::Devices(args) => cli::devices::run(args),
        Command::Up(args) => cli::up::run(args),
        Command::Cluster(cmd) => cli::cluster::run(cmd),
        Command::Token(cmd) => cli::token::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
