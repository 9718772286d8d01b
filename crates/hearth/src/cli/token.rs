//! `hearth token create | list | revoke`: bearer tokens for a node's API, kept (as hashes) in
//! the node's data dir. A running node sees the change on its next request.

use super::up::default_data_dir;
use crate::node::driver::now_ms;
use crate::node::security::audit::{rfc3339_ms, Audit};
use crate::node::security::tokens::{self, Scope, TokenRecord};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it once; only its SHA-256 is kept.
    Create(CreateArgs),
    /// List tokens: id, name, scope, when created (never the tokens themselves).
    List(ListArgs),
    /// Revoke a token; a running node refuses it from its next request on.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct DataDir {
    /// The node's data dir (default: $XDG_DATA_HOME/hearth/node, as `hearth up`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDir {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => default_data_dir(),
        }
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// `user`: the OpenAI-compatible API (`/v1/...`) and `/health`. `admin`: everything,
    /// including the cluster's admin endpoints (`/api/...`).
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// A name to recognise the token by in `hearth token list` and the audit log.
    #[arg(long, default_value = "")]
    pub name: String,
    #[command(flatten)]
    pub dir: DataDir,
    /// Print the token and its record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub dir: DataDir,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The token's id, as `hearth token list` shows it (`tok_...`).
    pub id: String,
    #[command(flatten)]
    pub dir: DataDir,
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List(args) => list(args),
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn record_json(t: &TokenRecord) -> serde_json::Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scope": t.scope.as_str(),
        "created": rfc3339_ms(t.created_ms),
    })
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve()?;
    let (secret, record) = tokens::create(&dir, args.scope, &args.name, now_ms())?;
    let audit = Audit::open(&dir)?;
    audit.record("token.created", record_json(&record));
    audit.flush();
    if args.json {
        let mut v = record_json(&record);
        v["token"] = json!(secret);
        println!("{v}");
    } else {
        println!("{secret}");
    }
    eprintln!(
        "created {} token {}{}; it is shown only now. Use it as `Authorization: Bearer <token>` \
         (the OpenAI clients' api_key).",
        record.scope.as_str(),
        record.id,
        if record.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", record.name)
        }
    );
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve()?;
    let all = tokens::load(&dir)?;
    if args.json {
        let v: Vec<_> = all.iter().map(record_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if all.is_empty() {
        eprintln!(
            "no tokens in {}; create one with `hearth token create --scope user`",
            dir.display()
        );
        return Ok(());
    }
    let width = all
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    println!("{:<16}  {:<width$}  {:<5}  CREATED", "ID", "NAME", "SCOPE");
    for t in &all {
        println!(
            "{:<16}  {:<width$}  {:<5}  {}",
            t.id,
            t.name,
            t.scope.as_str(),
            rfc3339_ms(t.created_ms)
        );
    }
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve()?;
    let record = tokens::revoke(&dir, &args.id)
        .with_context(|| format!("cannot revoke {} in {}", args.id, dir.display()))?;
    let audit = Audit::open(&dir)?;
    audit.record("token.revoked", record_json(&record));
    audit.flush();
    eprintln!("revoked {} token {}", record.scope.as_str(), record.id);
    Ok(())
}
