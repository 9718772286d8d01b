//! Files on this node's disk: the models it serves ([`ModelStore`]), and the layout of a fetch
//! in progress or of a partial copy (`<dest>.part` plus the marker `<dest>.part.json`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::manifest::{self, Digest, Manifest, ManifestError, Origin};
use crate::protocol::ModelRef;

/// Failures on the local disk.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid sidecar file: {reason}")]
    Sidecar { path: PathBuf, reason: String },
    #[error("{path} has {actual} bytes but its manifest says {expected}")]
    SizeMismatch {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("a blocking task failed: {0}")]
    Task(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn read_exact_at(
    file: &File,
    mut buf: &mut [u8],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Serving.

struct Entry {
    path: PathBuf,
    manifest: Manifest,
    file: Arc<File>,
}

#[derive(Default)]
struct Inner {
    by_sha: HashMap<Digest, Arc<Entry>>,
    by_name: HashMap<String, Digest>,
}

/// The files this node serves, by whole-file SHA-256 and by name. Cheap to clone; shared by
/// every serving stream.
#[derive(Clone, Default)]
pub struct ModelStore {
    inner: Arc<RwLock<Inner>>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("models", &self.list().len())
            .finish()
    }
}

/// A served file, found for a request.
pub(crate) struct Served {
    pub manifest: Manifest,
    pub file: Arc<File>,
}

impl ModelStore {
    pub fn new() -> ModelStore {
        ModelStore::default()
    }

    /// Serves `path` under `name`, with its manifest from the sidecar cache or computed on a
    /// blocking thread.
    pub async fn add(
        &self,
        path: impl AsRef<Path>,
        name: &str,
        chunk_size: u32,
    ) -> Result<(Manifest, Origin), StoreError> {
        let path = path.as_ref();
        let (manifest, origin) = manifest::load_or_compute(path, name, chunk_size).await?;
        self.insert(path, manifest.clone())?;
        Ok((manifest, origin))
    }

    /// Serves `path` with a manifest the caller already has (say, from the fetch that wrote
    /// the file). Only the size is checked here; the fetcher checks every chunk.
    pub fn insert(&self, path: impl AsRef<Path>, manifest: Manifest) -> Result<(), StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(io_err(&path))?;
        let actual = file.metadata().map_err(io_err(&path))?.len();
        if actual != manifest.size() {
            return Err(StoreError::SizeMismatch {
                path,
                actual,
                expected: manifest.size(),
            });
        }
        let sha = manifest.sha256();
        let name = manifest.name().to_string();
        let entry = Arc::new(Entry {
            path,
            manifest,
            file: Arc::new(file),
        });
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.by_sha.insert(sha, entry);
        if !name.is_empty() {
            inner.by_name.insert(name, sha);
        }
        Ok(())
    }

    /// Stops serving a file; streams already reading it finish their current request.
    pub fn remove(&self, sha: &Digest) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let removed = inner.by_sha.remove(sha).is_some();
        inner.by_name.retain(|_, s| s != sha);
        removed
    }

    pub fn manifest(&self, model: &ModelRef) -> Option<Manifest> {
        self.find(model).map(|s| s.manifest)
    }

    /// Every served file: path and manifest.
    pub fn list(&self) -> Vec<(PathBuf, Manifest)> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .by_sha
            .values()
            .map(|e| (e.path.clone(), e.manifest.clone()))
            .collect()
    }

    pub(crate) fn find(&self, model: &ModelRef) -> Option<Served> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let sha = match model {
            ModelRef::Sha256(d) => *d,
            ModelRef::Name(n) => *inner.by_name.get(n)?,
        };
        inner.by_sha.get(&sha).map(|e| Served {
            manifest: e.manifest.clone(),
            file: e.file.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Local copies: complete, partial, or absent.

/// A set of chunk indices, stored as runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet(BTreeSet<u32>);

impl ChunkSet {
    pub fn new() -> ChunkSet {
        ChunkSet::default()
    }

    pub fn all(n: u32) -> ChunkSet {
        ChunkSet((0..n).collect())
    }

    pub fn insert(&mut self, i: u32) -> bool {
        self.0.insert(i)
    }

    pub fn remove(&mut self, i: u32) -> bool {
        self.0.remove(&i)
    }

    pub fn contains(&self, i: u32) -> bool {
        self.0.contains(&i)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Maximal runs of consecutive indices.
    pub fn runs(&self) -> Vec<Range<u32>> {
        let mut out: Vec<Range<u32>> = Vec::new();
        for i in self.iter() {
            match out.last_mut() {
                Some(r) if r.end == i => r.end += 1,
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// Whether every byte of `ranges` lies in a chunk of this set.
    pub fn covers(
        &self,
        manifest: &Manifest,
        ranges: &[Range<u64>],
    ) -> Result<bool, ManifestError> {
        Ok(manifest
            .chunks_covering(ranges)?
            .into_iter()
            .all(|c| self.contains(c)))
    }
}

impl FromIterator<u32> for ChunkSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> ChunkSet {
        ChunkSet(iter.into_iter().collect())
    }
}

/// `<dest>.part`: the file being fetched, or a partial copy.
pub fn part_path(dest: &Path) -> PathBuf {
    suffixed(dest, ".part")
}

/// `<dest>.part.json`: which chunks of `<dest>.part` were verified, and against what file.
pub fn marker_path(dest: &Path) -> PathBuf {
    suffixed(dest, ".part.json")
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

const MARKER_FORMAT: u32 = 1;

/// The marker beside a partial file. It names the file by hash, size and chunk size rather than
/// holding the manifest, so rewriting it after every chunk stays cheap for any file size.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    format: u32,
    sha256: String,
    size: u64,
    chunk_size: u32,
    /// Verified chunks as half-open runs `[start, end)`.
    present: Vec<(u32, u32)>,
}

impl Marker {
    pub(crate) fn new(manifest: &Manifest, present: &ChunkSet) -> Marker {
        Marker {
            format: MARKER_FORMAT,
            sha256: manifest.sha256().to_hex(),
            size: manifest.size(),
            chunk_size: manifest.chunk_size(),
            present: present
                .runs()
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect(),
        }
    }

    pub(crate) fn matches(&self, manifest: &Manifest) -> bool {
        self.format == MARKER_FORMAT
            && self.sha256 == manifest.sha256().to_hex()
            && self.size == manifest.size()
            && self.chunk_size == manifest.chunk_size()
    }

    fn present(&self) -> Result<ChunkSet, String> {
        let n = manifest::chunk_count(self.size, self.chunk_size).map_err(|e| e.to_string())?;
        let mut set = ChunkSet::new();
        for &(start, end) in &self.present {
            if start >= end || end > n {
                return Err(format!(
                    "run [{start}, {end}) outside the file's {n} chunks"
                ));
            }
            set.0.extend(start..end);
        }
        Ok(set)
    }

    pub(crate) fn read(path: &Path) -> Result<Option<Marker>, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let m: Marker = serde_json::from_slice(&bytes).map_err(|e| StoreError::Sidecar {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        m.present().map_err(|reason| StoreError::Sidecar {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Some(m))
    }

    pub(crate) fn present_set(&self) -> ChunkSet {
        self.present().unwrap_or_default()
    }

    pub(crate) fn write(&self, path: &Path) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(self).map_err(|e| StoreError::Sidecar {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_atomically(path, &bytes)
    }
}

/// What this node holds for a destination path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalCopy {
    /// Nothing.
    Absent,
    /// `dest` exists. The fetcher only ever creates it by renaming a file whose whole SHA-256
    /// matched, and never while a marker says it is partial.
    Complete { path: PathBuf },
    /// `<dest>.part` with the chunks its marker lists as verified (re-verified by the next
    /// fetch before it trusts them).
    Partial {
        path: PathBuf,
        sha256: Digest,
        size: u64,
        chunk_size: u32,
        present: ChunkSet,
    },
}

/// Looks at what is on disk for `dest` without reading file contents.
pub fn local_copy(dest: &Path) -> Result<LocalCopy, StoreError> {
    if dest.is_file() {
        return Ok(LocalCopy::Complete {
            path: dest.to_path_buf(),
        });
    }
    let part = part_path(dest);
    let Some(marker) = Marker::read(&marker_path(dest))? else {
        return Ok(LocalCopy::Absent);
    };
    if !part.is_file() {
        return Ok(LocalCopy::Absent);
    }
    let sha256 = marker
        .sha256
        .parse()
        .map_err(|e: ManifestError| StoreError::Sidecar {
            path: marker_path(dest),
            reason: e.to_string(),
        })?;
    Ok(LocalCopy::Partial {
        path: part,
        sha256,
        size: marker.size,
        chunk_size: marker.chunk_size,
        present: marker.present_set(),
    })
}

/// Whether `dest` holds the whole, verified file.
pub fn is_complete(dest: &Path) -> bool {
    matches!(local_copy(dest), Ok(LocalCopy::Complete { .. }))
}

/// The chunks present for `dest`: every chunk of a complete copy (given its manifest), the
/// verified ones of a partial copy, none when there is nothing or it belongs to another file.
pub fn present_chunks(dest: &Path, manifest: &Manifest) -> Result<ChunkSet, StoreError> {
    Ok(match local_copy(dest)? {
        LocalCopy::Complete { .. } => ChunkSet::all(manifest.n_chunks()),
        LocalCopy::Partial {
            sha256, present, ..
        } if sha256 == manifest.sha256() => present,
        _ => ChunkSet::new(),
    })
}
