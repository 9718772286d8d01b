//! What a file is: its size, its SHA-256, and the SHA-256 of every fixed-size chunk, so a
//! fetcher can check each chunk as it arrives instead of only the whole file at the end.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::{write_atomically, StoreError};

/// Default chunk size: large enough that per-chunk overhead (a request, a hash, a progress
/// write) is negligible, small enough that a corrupted chunk costs little to fetch again.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
pub const MIN_CHUNK_SIZE: u32 = 1024;
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
/// At most this many chunks per file, so a manifest (32 bytes per chunk) stays within one
/// 16 MiB frame: 8 MiB of hashes, 1 TiB of file at the default chunk size.
pub const MAX_CHUNKS: u64 = 1 << 18;
/// Longest model name in a manifest (its length travels as one byte).
pub const MAX_NAME_LEN: usize = 255;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Digest, ManifestError> {
        let bad = || ManifestError::BadHex {
            found: s.chars().take(80).collect(),
        };
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Digest(out))
    }
}

/// Why a manifest, or a position within one, is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("chunk size {0} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")]
    ChunkSize(u64),
    #[error("a file of {size} bytes in {chunk_size}-byte chunks needs {needed} chunks, more than the limit of {MAX_CHUNKS}")]
    TooManyChunks {
        size: u64,
        chunk_size: u32,
        needed: u64,
    },
    #[error("a file of {size} bytes in {chunk_size}-byte chunks has {expected} chunks, the manifest lists {found}")]
    ChunkCount {
        size: u64,
        chunk_size: u32,
        expected: u64,
        found: u64,
    },
    #[error("model name of {0} bytes exceeds the limit of {MAX_NAME_LEN}")]
    NameTooLong(usize),
    #[error("not a SHA-256 in hex: {found:?}")]
    BadHex { found: String },
    #[error("chunk {index} does not exist: the file has {count} chunks")]
    ChunkIndex { index: u64, count: u32 },
    #[error("bytes [{start}, {end}) lie outside chunk {index} of {len} bytes")]
    PieceRange {
        index: u32,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("bytes [{start}, {end}) lie outside the file of {size} bytes")]
    FileRange { start: u64, end: u64, size: u64 },
}

/// The validated description of one file. Fields are private so that every manifest in the
/// program has a chunk count consistent with its size and chunk size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    name: String,
    size: u64,
    chunk_size: u32,
    sha256: Digest,
    chunks: Vec<Digest>,
}

/// Chunks of `chunk_size` needed for `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> Result<u32, ManifestError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(ManifestError::ChunkSize(chunk_size as u64));
    }
    let needed = size.div_ceil(chunk_size as u64);
    if needed > MAX_CHUNKS {
        return Err(ManifestError::TooManyChunks {
            size,
            chunk_size,
            needed,
        });
    }
    Ok(needed as u32)
}

impl Manifest {
    pub fn new(
        name: impl Into<String>,
        size: u64,
        chunk_size: u32,
        sha256: Digest,
        chunks: Vec<Digest>,
    ) -> Result<Manifest, ManifestError> {
        let name = name.into();
        if name.len() > MAX_NAME_LEN {
            return Err(ManifestError::NameTooLong(name.len()));
        }
        let expected = chunk_count(size, chunk_size)? as u64;
        if chunks.len() as u64 != expected {
            return Err(ManifestError::ChunkCount {
                size,
                chunk_size,
                expected,
                found: chunks.len() as u64,
            });
        }
        Ok(Manifest {
            name,
            size,
            chunk_size,
            sha256,
            chunks,
        })
    }

    /// Hashes `path` in `chunk_size` chunks. Blocking: call it from a blocking thread
    /// ([`load_or_compute`] does).
    pub fn compute(
        path: &Path,
        name: impl Into<String>,
        chunk_size: u32,
    ) -> Result<Manifest, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        chunk_count(size, chunk_size)?;
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut buf = vec![0u8; chunk_size as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk_size as u64) as usize;
            file.read_exact(&mut buf[..n]).map_err(io)?;
            whole.update(&buf[..n]);
            chunks.push(Digest::of(&buf[..n]));
            left -= n as u64;
        }
        Ok(Manifest::new(
            name,
            size,
            chunk_size,
            Digest(whole.finalize().into()),
            chunks,
        )?)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same manifest under another name (names are labels; the content is the hash).
    pub fn with_name(mut self, name: impl Into<String>) -> Result<Manifest, ManifestError> {
        let name = name.into();
        if name.len() > MAX_NAME_LEN {
            return Err(ManifestError::NameTooLong(name.len()));
        }
        self.name = name;
        Ok(self)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn sha256(&self) -> Digest {
        self.sha256
    }

    pub fn chunk_hashes(&self) -> &[Digest] {
        &self.chunks
    }

    pub fn n_chunks(&self) -> u32 {
        self.chunks.len() as u32
    }

    fn check_index(&self, index: u64) -> Result<u32, ManifestError> {
        if index < self.chunks.len() as u64 {
            Ok(index as u32)
        } else {
            Err(ManifestError::ChunkIndex {
                index,
                count: self.n_chunks(),
            })
        }
    }

    /// Bytes of the file that chunk `index` covers.
    pub fn chunk_range(&self, index: u32) -> Result<Range<u64>, ManifestError> {
        let index = self.check_index(index as u64)?;
        let start = index as u64 * self.chunk_size as u64;
        Ok(start..(start + self.chunk_size as u64).min(self.size))
    }

    /// Bytes of the file that a piece `[offset, offset + len)` of chunk `index` covers; `None`
    /// is the whole chunk. An empty piece is refused: it would make no progress.
    pub fn piece_range(
        &self,
        index: u32,
        piece: Option<(u32, u32)>,
    ) -> Result<Range<u64>, ManifestError> {
        let chunk = self.chunk_range(index)?;
        let Some((offset, len)) = piece else {
            return Ok(chunk);
        };
        let chunk_len = chunk.end - chunk.start;
        let (start, end) = (offset as u64, offset as u64 + len as u64);
        if len == 0 || end > chunk_len {
            return Err(ManifestError::PieceRange {
                index,
                start,
                end,
                len: chunk_len,
            });
        }
        Ok(chunk.start + start..chunk.start + end)
    }

    /// Chunks that hold any byte of `ranges`. Empty ranges ask for nothing.
    pub fn chunks_covering(&self, ranges: &[Range<u64>]) -> Result<Vec<u32>, ManifestError> {
        let mut out = Vec::new();
        for r in ranges {
            if r.start > r.end || r.end > self.size {
                return Err(ManifestError::FileRange {
                    start: r.start,
                    end: r.end,
                    size: self.size,
                });
            }
            if r.start == r.end {
                continue;
            }
            let cs = self.chunk_size as u64;
            out.extend((r.start / cs) as u32..=((r.end - 1) / cs) as u32);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// The JSON form of a manifest in the sidecar files.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ManifestJson {
    name: String,
    size: u64,
    chunk_size: u32,
    sha256: String,
    chunks: Vec<String>,
}

impl From<&Manifest> for ManifestJson {
    fn from(m: &Manifest) -> ManifestJson {
        ManifestJson {
            name: m.name.clone(),
            size: m.size,
            chunk_size: m.chunk_size,
            sha256: m.sha256.to_hex(),
            chunks: m.chunks.iter().map(Digest::to_hex).collect(),
        }
    }
}

impl TryFrom<ManifestJson> for Manifest {
    type Error = ManifestError;

    fn try_from(j: ManifestJson) -> Result<Manifest, ManifestError> {
        let chunks = j
            .chunks
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<Digest>, _>>()?;
        Manifest::new(j.name, j.size, j.chunk_size, j.sha256.parse()?, chunks)
    }
}

const CACHE_FORMAT: u32 = 1;

/// The manifest cache next to a served file: valid while the file's size and modification time
/// are the ones recorded, so a restarted node does not hash its models again.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    size: u64,
    mtime_ns: u128,
    manifest: ManifestJson,
}

/// `<file>.manifest.json`.
pub fn cache_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".manifest.json");
    PathBuf::from(p)
}

/// The size and modification time (ns since the epoch) the cache is keyed on.
fn stamp(path: &Path) -> Result<(u64, u128), StoreError> {
    let md = std::fs::metadata(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Where the file system keeps no modification time the stamp is 0, and the size alone
    // guards the cache.
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((md.len(), mtime))
}

/// Whether the manifest came from the sidecar cache or was computed by reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cached,
    Computed,
}

/// The manifest of `path`: from its sidecar cache when size, modification time and chunk size
/// match, else computed on a blocking thread and cached. A cache that cannot be written (a
/// read-only model directory) is not an error: the file can still be served.
pub async fn load_or_compute(
    path: &Path,
    name: &str,
    chunk_size: u32,
) -> Result<(Manifest, Origin), StoreError> {
    let path = path.to_path_buf();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || load_or_compute_blocking(&path, &name, chunk_size))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// [`load_or_compute`] for callers already on a blocking thread.
pub fn load_or_compute_blocking(
    path: &Path,
    name: &str,
    chunk_size: u32,
) -> Result<(Manifest, Origin), StoreError> {
    let (size, mtime_ns) = stamp(path)?;
    let cache = cache_path(path);
    if let Some(m) = read_cache(&cache, size, mtime_ns, chunk_size) {
        return Ok((m.with_name(name)?, Origin::Cached));
    }
    let manifest = Manifest::compute(path, name, chunk_size)?;
    // The file may have changed while it was read; such a cache entry would be wrong.
    if stamp(path)? == (size, mtime_ns) {
        let _ = write_cache(path, &manifest);
    }
    Ok((manifest, Origin::Computed))
}

fn read_cache(cache: &Path, size: u64, mtime_ns: u128, chunk_size: u32) -> Option<Manifest> {
    let text = std::fs::read(cache).ok()?;
    let c: CacheFile = serde_json::from_slice(&text).ok()?;
    if c.format != CACHE_FORMAT || c.size != size || c.mtime_ns != mtime_ns {
        return None;
    }
    let m = Manifest::try_from(c.manifest).ok()?;
    (m.size() == size && m.chunk_size() == chunk_size).then_some(m)
}

/// Records `manifest` as the cache of `path` at its current size and modification time: also
/// used after a fetch, so a node can serve a file it has just fetched without hashing it.
pub fn write_cache(path: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let (size, mtime_ns) = stamp(path)?;
    let c = CacheFile {
        format: CACHE_FORMAT,
        size,
        mtime_ns,
        manifest: manifest.into(),
    };
    let text = serde_json::to_vec(&c).map_err(|e| StoreError::Sidecar {
        path: cache_path(path),
        reason: e.to_string(),
    })?;
    write_atomically(&cache_path(path), &text)
}
