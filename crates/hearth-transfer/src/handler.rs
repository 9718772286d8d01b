//! The two sides of the protocol: [`serve`] answers requests from a [`ModelStore`]; [`Fetch`]
//! pulls a file, or some of its chunks, from one or more [`Source`]s.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::channel::{ChannelError, FrameChannel, Source};
use crate::manifest::{self, Digest, Manifest, ManifestError, MAX_NAME_LEN};
use crate::protocol::{
    chunk_frame, peek_id, ErrorCode, ModelRef, PieceRange, ProtocolError, Request, Response,
    CHUNK_HEADER_LEN,
};
use crate::store::{
    io_err, marker_path, part_path, read_exact_at, write_all_at, ChunkSet, Marker, ModelStore,
    StoreError,
};

// ---------------------------------------------------------------------------------------------
// Serving.

/// What one serving stream did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServeStats {
    pub requests: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// Requests answered with an error response.
    pub refused: u64,
}

/// Why a serving stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("malformed request (answered, then the stream was closed): {0}")]
    Protocol(#[from] ProtocolError),
}

/// Answers requests on `ch` until the peer closes it. Requests for unknown files, chunks or
/// ranges are answered with an error and the stream goes on; a malformed request is answered
/// and ends the stream, since nothing after it can be trusted to be framed as intended.
pub async fn serve<C: FrameChannel>(
    store: &ModelStore,
    ch: &mut C,
) -> Result<ServeStats, ServeError> {
    let mut stats = ServeStats::default();
    while let Some(frame) = ch.recv().await? {
        stats.requests += 1;
        let request = match Request::decode(&frame) {
            Ok(r) => r,
            Err(e) => {
                let reply = Response::Error {
                    id: peek_id(&frame),
                    code: ErrorCode::Unsupported,
                    message: e.to_string(),
                };
                // The peer is told why; if it has gone, the malformed request is still the news.
                let _ = ch.send(&reply.encode()).await;
                return Err(e.into());
            }
        };
        let reply = answer(store, request, ch.max_frame(), &mut stats).await;
        ch.send(&reply).await?;
    }
    Ok(stats)
}

async fn answer(
    store: &ModelStore,
    request: Request,
    max_frame: usize,
    stats: &mut ServeStats,
) -> Vec<u8> {
    let mut refuse = |id, code, message: String| {
        stats.refused += 1;
        Response::Error { id, code, message }.encode()
    };
    match request {
        Request::GetManifest { id, model } => match store.find(&model) {
            None => refuse(id, ErrorCode::NotFound, format!("no model {model:?}")),
            Some(s) => {
                let frame = Response::Manifest {
                    id,
                    manifest: s.manifest,
                }
                .encode();
                if frame.len() > max_frame {
                    let msg = format!("manifest of {} bytes exceeds the frame", frame.len());
                    refuse(id, ErrorCode::TooLarge, msg)
                } else {
                    frame
                }
            }
        },
        Request::GetChunk {
            id,
            file,
            index,
            range,
        } => {
            let Some(s) = store.find(&ModelRef::Sha256(file)) else {
                return refuse(id, ErrorCode::NotFound, format!("no file {file}"));
            };
            let bytes = match s
                .manifest
                .piece_range(index, range.map(|r| (r.offset, r.len)))
            {
                Ok(b) => b,
                Err(e) => return refuse(id, ErrorCode::BadRequest, e.to_string()),
            };
            let len = (bytes.end - bytes.start) as usize;
            if CHUNK_HEADER_LEN + len > max_frame {
                let msg = format!("{len} bytes do not fit in a {max_frame}-byte frame");
                return refuse(id, ErrorCode::TooLarge, msg);
            }
            let mut frame = chunk_frame(id, index, range.map_or(0, |r| r.offset), len);
            let handle = s.file.clone();
            let read = tokio::task::spawn_blocking(move || {
                read_exact_at(&handle, &mut frame[CHUNK_HEADER_LEN..], bytes.start).map(|()| frame)
            })
            .await;
            match read {
                Ok(Ok(frame)) => {
                    stats.chunks += 1;
                    stats.bytes += len as u64;
                    frame
                }
                Ok(Err(e)) => refuse(id, ErrorCode::Internal, format!("cannot read: {e}")),
                Err(e) => refuse(id, ErrorCode::Internal, format!("read task failed: {e}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fetching.

/// Why one source was given up on (for now).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open a channel: {0}")]
    Open(ChannelError),
    #[error("channel failed: {0}")]
    Channel(ChannelError),
    #[error("malformed response: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("closed the channel with {0} requests unanswered")]
    Closed(usize),
    #[error("refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected response: {0}")]
    Unexpected(String),
    #[error("chunk {chunk} failed verification")]
    Corrupt { chunk: u32 },
}

/// Asks for a manifest on an open channel. When asked by hash, a manifest for any other file
/// is refused. A manifest asked for by name is only as trustworthy as the peer that sent it:
/// compare its hash with the catalog's where there is one.
pub async fn request_manifest<C: FrameChannel>(
    ch: &mut C,
    model: &ModelRef,
) -> Result<Manifest, SourceError> {
    if let ModelRef::Name(name) = model {
        if name.is_empty() {
            return Err(ProtocolError::EmptyField { what: "model name" }.into());
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ProtocolError::TooLong {
                what: "model name",
                len: name.len(),
                max: MAX_NAME_LEN,
            }
            .into());
        }
    }
    let id = 1;
    let request = Request::GetManifest {
        id,
        model: model.clone(),
    };
    ch.send(&request.encode())
        .await
        .map_err(SourceError::Channel)?;
    let frame = ch
        .recv()
        .await
        .map_err(SourceError::Channel)?
        .ok_or(SourceError::Closed(1))?;
    match Response::decode(frame)? {
        Response::Manifest { id: got, manifest } if got == id => match model {
            ModelRef::Sha256(want) if manifest.sha256() != *want => {
                Err(SourceError::Unexpected(format!(
                    "asked for {want}, got the manifest of {}",
                    manifest.sha256()
                )))
            }
            _ => Ok(manifest),
        },
        Response::Error { code, message, .. } => Err(SourceError::Refused { code, message }),
        other => Err(SourceError::Unexpected(format!(
            "{} where a manifest for request {id} was expected",
            describe(&other)
        ))),
    }
}

fn describe(r: &Response) -> String {
    match r {
        Response::Manifest { id, .. } => format!("a manifest for request {id}"),
        Response::Chunk {
            id,
            index,
            offset,
            data,
        } => format!(
            "request {id}: chunk {index} bytes [{offset}, +{})",
            data.len()
        ),
        Response::Error { id, code, .. } => format!("an error {code:?} for request {id}"),
    }
}

/// Tuning and bounds of a fetch.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Requests in flight on one channel; pipelining hides the round trip.
    pub window: usize,
    /// Largest piece asked for at once (also capped by the channel's frame size); chunks larger
    /// than this are fetched as several ranges.
    pub max_piece: usize,
    /// A chunk that fails verification this many times ends the fetch.
    pub chunk_attempts: u32,
    /// A source that fails this many times in a row, with no verified chunk in between, is not
    /// tried again in this fetch.
    pub source_failures: u32,
    /// Longest wait for a channel to open or for a response.
    pub request_timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> FetchConfig {
        FetchConfig {
            window: 4,
            max_piece: 8 * 1024 * 1024,
            chunk_attempts: 4,
            source_failures: 3,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Bytes of the needed chunks that are verified and on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What happened during a fetch, as it happens.
#[derive(Debug)]
pub enum FetchEvent {
    /// Chunks from an earlier run were verified again and kept.
    Resumed { chunks: u32, bytes: u64 },
    /// A chunk the marker listed failed its re-check (a torn write, a disk fault): fetched again.
    ResumedChunkBad { chunk: u32 },
    /// A marker for another file, or one that could not be read, was replaced: starting over.
    Restarted { reason: String },
    /// A chunk arrived with the wrong hash; `attempt` counts its failures so far.
    ChunkCorrupt {
        chunk: u32,
        source: String,
        attempt: u32,
    },
    /// A source failed; the fetch goes on with the next one.
    SourceFailed { source: String, error: SourceError },
}

/// What a finished fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// The whole file is at `path` (= the destination), checked against the whole-file hash.
    pub complete: bool,
    /// Where the bytes are: the destination when complete, else `<dest>.part`.
    pub path: PathBuf,
    /// Every verified chunk on disk, needed by this fetch or not.
    pub present: ChunkSet,
    pub resumed_chunks: u32,
    pub resumed_bad: u32,
    pub fetched_chunks: u32,
    /// Chunk requests sent (pieces, when chunks are split).
    pub requests: u64,
    pub bytes_received: u64,
    pub corrupt_chunks: u32,
    pub source_failures: u32,
    pub elapsed: Duration,
}

/// Why a fetch stopped.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("chunks are missing and no source was given")]
    NoSources,
    #[error("chunk {chunk} failed verification {attempts} times")]
    ChunkFailed { chunk: u32, attempts: u32 },
    #[error("every source failed: {}", summarize(.errors))]
    SourcesExhausted { errors: Vec<(String, SourceError)> },
    #[error("the whole file hashes to {actual}, the manifest says {expected}")]
    FileHash { expected: Digest, actual: Digest },
    #[error("frames of {max_frame} bytes leave no room for chunk data")]
    FrameTooSmall { max_frame: usize },
}

fn summarize(errors: &[(String, SourceError)]) -> String {
    errors
        .iter()
        .map(|(s, e)| format!("{s}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One fetch of a file, or of the chunks that hold some byte ranges of it, into `dest`.
///
/// Chunks land in `<dest>.part` (sized to the whole file, so ranges land at their offsets and
/// the rest stays a hole), each checked against the manifest before it is written and recorded
/// in `<dest>.part.json`. Once every chunk is present the whole-file hash is checked and the
/// file renamed to `dest`; otherwise the partial file and its marker stay (see
/// [`crate::local_copy`]). A later fetch to the same `dest` re-checks and keeps what is there;
/// when `dest` itself exists (a finished fetch) nothing is fetched. Only one fetch may write a
/// given `dest` at a time.
pub struct Fetch {
    manifest: Manifest,
    dest: PathBuf,
    needed: Option<Vec<Range<u64>>>,
    config: FetchConfig,
    progress: watch::Sender<Progress>,
}

impl Fetch {
    pub fn new(manifest: Manifest, dest: impl Into<PathBuf>) -> Fetch {
        Fetch {
            manifest,
            dest: dest.into(),
            needed: None,
            config: FetchConfig::default(),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Fetches only the chunks holding these byte ranges.
    pub fn ranges(mut self, ranges: Vec<Range<u64>>) -> Fetch {
        self.needed = Some(ranges);
        self
    }

    pub fn config(mut self, config: FetchConfig) -> Fetch {
        self.config = config;
        self
    }

    /// Follows the bytes done of the bytes needed.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs the fetch, trying `sources` in turn: after a failure or a corrupted chunk the next
    /// source is asked. `on_event` hears what happens (called on the fetching task; keep it
    /// short).
    pub async fn run<C: FrameChannel>(
        self,
        sources: &mut [Source<C>],
        mut on_event: impl FnMut(&FetchEvent) + Send,
    ) -> Result<FetchReport, FetchError> {
        let started = Instant::now();
        let manifest = Arc::new(self.manifest);
        let needed: Vec<u32> = match &self.needed {
            None => (0..manifest.n_chunks()).collect(),
            Some(r) => manifest.chunks_covering(r)?,
        };
        let part = part_path(&self.dest);
        let marker = marker_path(&self.dest);
        if let Some(report) = already_complete(&manifest, &self.dest, started)? {
            self.progress.send_replace(Progress {
                done: manifest.size(),
                total: manifest.size(),
            });
            return Ok(report);
        }
        let opened = {
            let (m, p, mk) = (manifest.clone(), part.clone(), marker.clone());
            tokio::task::spawn_blocking(move || open_part(&m, &p, &mk))
                .await
                .map_err(task_failed)??
        };
        if let Some(reason) = opened.restarted {
            on_event(&FetchEvent::Restarted { reason });
        }
        for &chunk in &opened.bad {
            on_event(&FetchEvent::ResumedChunkBad { chunk });
        }
        let len = |c: u32| manifest.chunk_range(c).map_or(0, |r| r.end - r.start);
        let present = opened.present;
        if !present.is_empty() {
            on_event(&FetchEvent::Resumed {
                chunks: present.len() as u32,
                bytes: present.iter().map(len).sum(),
            });
        }
        let total = needed.iter().map(|&c| len(c)).sum();
        let done = needed
            .iter()
            .filter(|&&c| present.contains(c))
            .map(|&c| len(c))
            .sum();
        self.progress.send_replace(Progress { done, total });
        let todo: VecDeque<u32> = needed
            .iter()
            .copied()
            .filter(|&c| !present.contains(c))
            .collect();
        let mut run = Run {
            report: FetchReport {
                complete: false,
                path: part.clone(),
                present: ChunkSet::new(),
                resumed_chunks: present.len() as u32,
                resumed_bad: opened.bad.len() as u32,
                fetched_chunks: 0,
                requests: 0,
                bytes_received: 0,
                corrupt_chunks: 0,
                source_failures: 0,
                elapsed: Duration::ZERO,
            },
            manifest,
            file: Arc::new(opened.file),
            part,
            marker,
            config: self.config,
            present,
            todo,
            attempts: HashMap::new(),
            verifying: JoinSet::new(),
            progress: self.progress,
            names: sources.iter().map(|s| s.name().to_string()).collect(),
            failures: vec![0; sources.len()],
            fault: None,
            on_event: &mut on_event,
        };
        if !run.todo.is_empty() {
            run.fetch_all(sources).await?;
        }
        let mut report = run.finish_file(&self.dest).await?;
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// A destination that exists is a finished fetch (the fetcher creates it only after the
/// whole-file check), so it is not fetched again; one of another size is someone else's file.
fn already_complete(
    manifest: &Manifest,
    dest: &Path,
    started: Instant,
) -> Result<Option<FetchReport>, FetchError> {
    let Ok(md) = std::fs::metadata(dest) else {
        return Ok(None);
    };
    if md.len() != manifest.size() {
        return Err(FetchError::Store(StoreError::SizeMismatch {
            path: dest.to_owned(),
            actual: md.len(),
            expected: manifest.size(),
        }));
    }
    Ok(Some(FetchReport {
        complete: true,
        path: dest.to_owned(),
        present: ChunkSet::all(manifest.n_chunks()),
        resumed_chunks: 0,
        resumed_bad: 0,
        fetched_chunks: 0,
        requests: 0,
        bytes_received: 0,
        corrupt_chunks: 0,
        source_failures: 0,
        elapsed: started.elapsed(),
    }))
}

fn task_failed(e: JoinError) -> StoreError {
    StoreError::Task(e.to_string())
}

struct Opened {
    file: File,
    present: ChunkSet,
    bad: Vec<u32>,
    restarted: Option<String>,
}

/// Opens `<dest>.part` for a fetch: keeps the chunks the marker lists that still hash right, or
/// starts an empty file of the full size.
fn open_part(manifest: &Manifest, part: &Path, marker: &Path) -> Result<Opened, StoreError> {
    let restarted = match Marker::read(marker) {
        Ok(Some(m)) if m.matches(manifest) => match resume(manifest, part, &m)? {
            Ok(opened) => {
                if !opened.bad.is_empty() {
                    Marker::new(manifest, &opened.present).write(marker)?;
                }
                return Ok(opened);
            }
            Err(reason) => Some(reason),
        },
        Ok(Some(_)) => Some("the marker describes another file".to_string()),
        Ok(None) => None,
        Err(e) => Some(e.to_string()),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(io_err(part))?;
    // Sized up front: ranges land at their offsets and the rest stays a hole.
    file.set_len(manifest.size()).map_err(io_err(part))?;
    Marker::new(manifest, &ChunkSet::new()).write(marker)?;
    Ok(Opened {
        file,
        present: ChunkSet::new(),
        bad: Vec::new(),
        restarted,
    })
}

/// `Ok(Err(reason))` when the partial file cannot be resumed and the fetch starts over.
fn resume(
    manifest: &Manifest,
    part: &Path,
    marker: &Marker,
) -> Result<Result<Opened, String>, StoreError> {
    let file = match OpenOptions::new().read(true).write(true).open(part) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("{}: {e}", part.display()))),
    };
    let len = file.metadata().map_err(io_err(part))?.len();
    if len != manifest.size() {
        return Ok(Err(format!(
            "{} has {len} bytes, expected {}",
            part.display(),
            manifest.size()
        )));
    }
    let mut present = marker.present_set();
    let mut bad = Vec::new();
    let mut buf = Vec::new();
    for c in present.iter().collect::<Vec<_>>() {
        let r = manifest.chunk_range(c)?;
        buf.resize((r.end - r.start) as usize, 0);
        read_exact_at(&file, &mut buf, r.start).map_err(io_err(part))?;
        if Digest::of(&buf) != manifest.chunk_hashes()[c as usize] {
            present.remove(c);
            bad.push(c);
        }
    }
    Ok(Ok(Opened {
        file,
        present,
        bad,
        restarted: None,
    }))
}

/// A chunk request: the whole chunk, or a piece of it.
#[derive(Debug, Clone, Copy)]
struct Piece {
    chunk: u32,
    offset: u32,
    len: u32,
    whole: bool,
}

/// A chunk whose pieces are arriving.
struct Assembly {
    data: Vec<u8>,
    len: usize,
    missing: usize,
}

/// A chunk checked (and, when good, written) on a blocking thread.
struct Verified {
    chunk: u32,
    source: usize,
    ok: bool,
}

/// How a session with one source ended.
enum End {
    /// Try the next source.
    Source(SourceError),
    /// Stop the fetch.
    Fatal(FetchError),
}

impl From<ManifestError> for End {
    fn from(e: ManifestError) -> End {
        End::Fatal(e.into())
    }
}

struct Run<'e> {
    manifest: Arc<Manifest>,
    file: Arc<File>,
    part: PathBuf,
    marker: PathBuf,
    config: FetchConfig,
    present: ChunkSet,
    /// Needed chunks not yet present nor in flight, in the order they are asked for.
    todo: VecDeque<u32>,
    /// Verification failures per chunk.
    attempts: HashMap<u32, u32>,
    verifying: JoinSet<Result<Verified, StoreError>>,
    progress: watch::Sender<Progress>,
    report: FetchReport,
    names: Vec<String>,
    /// Failures in a row per source.
    failures: Vec<u32>,
    /// Set when the current source sent a corrupted chunk: the session stops asking for new
    /// chunks, takes in what is already on its way, then gives way to the next source.
    fault: Option<SourceError>,
    on_event: &'e mut (dyn FnMut(&FetchEvent) + Send),
}

impl Run<'_> {
    async fn fetch_all<C: FrameChannel>(
        &mut self,
        sources: &mut [Source<C>],
    ) -> Result<(), FetchError> {
        if sources.is_empty() {
            return Err(FetchError::NoSources);
        }
        let mut last: Vec<Option<SourceError>> = sources.iter().map(|_| None).collect();
        let mut next = 0;
        while !self.todo.is_empty() {
            let n = sources.len();
            let usable = (0..n)
                .map(|k| (next + k) % n)
                .find(|&s| self.failures[s] < self.config.source_failures);
            let Some(s) = usable else {
                let errors = self
                    .names
                    .iter()
                    .cloned()
                    .zip(last)
                    .filter_map(|(name, e)| e.map(|e| (name, e)))
                    .collect();
                return Err(FetchError::SourcesExhausted { errors });
            };
            let timeout = self.config.request_timeout;
            let ended = match tokio::time::timeout(timeout, sources[s].open()).await {
                Err(_) => Err(End::Source(SourceError::Timeout(timeout))),
                Ok(Err(e)) => Err(End::Source(SourceError::Open(e))),
                Ok(Ok(mut ch)) => self.session(&mut ch, s).await,
            };
            match ended {
                Ok(()) => {}
                Err(End::Fatal(e)) => return Err(e),
                Err(End::Source(error)) => {
                    self.failures[s] += 1;
                    self.report.source_failures += 1;
                    let event = FetchEvent::SourceFailed {
                        source: self.names[s].clone(),
                        error,
                    };
                    (self.on_event)(&event);
                    if let FetchEvent::SourceFailed { error, .. } = event {
                        last[s] = Some(error);
                    }
                    next = s + 1;
                }
            }
        }
        Ok(())
    }

    /// Fetches from one open channel until nothing is left or something fails. Chunks asked
    /// for but not received go back to the front of the queue for the next source.
    async fn session<C: FrameChannel>(&mut self, ch: &mut C, s: usize) -> Result<(), End> {
        let mut taken = Vec::new();
        self.fault = None;
        let mut outcome = self.exchange(ch, s, &mut taken).await;
        // Chunks already received are checked and kept whatever happened to the channel.
        while let Some(joined) = self.verifying.join_next().await {
            if let Err(e) = self.finish(joined).await {
                outcome = match (outcome, e) {
                    (_, End::Fatal(f)) => Err(End::Fatal(f)),
                    (Ok(()), e) => Err(e),
                    (Err(first), _) => Err(first),
                };
            }
        }
        if let Some(fault) = self.fault.take() {
            if outcome.is_ok() {
                outcome = Err(End::Source(fault));
            }
        }
        if outcome.is_err() {
            for c in taken.into_iter().rev() {
                self.todo.push_front(c);
            }
        }
        outcome
    }

    async fn exchange<C: FrameChannel>(
        &mut self,
        ch: &mut C,
        s: usize,
        taken: &mut Vec<u32>,
    ) -> Result<(), End> {
        let max_frame = ch.max_frame();
        let piece_max = self
            .config
            .max_piece
            .min(max_frame.saturating_sub(CHUNK_HEADER_LEN))
            .min(u32::MAX as usize);
        if piece_max == 0 {
            return Err(End::Fatal(FetchError::FrameTooSmall { max_frame }));
        }
        let window = self.config.window.max(1);
        let timeout = self.config.request_timeout;
        let file = self.manifest.sha256();
        let mut to_send: VecDeque<Piece> = VecDeque::new();
        let mut outstanding: VecDeque<(u32, Piece)> = VecDeque::new();
        let mut assembling: HashMap<u32, Assembly> = HashMap::new();
        let mut next_id: u32 = 1;
        loop {
            while let Some(joined) = self.verifying.try_join_next() {
                self.finish(joined).await?;
            }
            while outstanding.len() < window {
                if to_send.is_empty() {
                    // Chunks being assembled or checked hold memory: at most 2 × window.
                    let full = assembling.len() + self.verifying.len() >= 2 * window;
                    if full || self.fault.is_some() {
                        break;
                    }
                    let Some(c) = self.todo.pop_front() else {
                        break;
                    };
                    let range = self.manifest.chunk_range(c)?;
                    let len = (range.end - range.start) as usize;
                    taken.push(c);
                    assembling.insert(
                        c,
                        Assembly {
                            data: Vec::new(),
                            len,
                            missing: len,
                        },
                    );
                    let mut offset = 0;
                    while offset < len {
                        let n = (len - offset).min(piece_max);
                        to_send.push_back(Piece {
                            chunk: c,
                            offset: offset as u32,
                            len: n as u32,
                            whole: n == len,
                        });
                        offset += n;
                    }
                }
                let Some(p) = to_send.pop_front() else {
                    break;
                };
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                let request = Request::GetChunk {
                    id,
                    file,
                    index: p.chunk,
                    range: (!p.whole).then_some(PieceRange {
                        offset: p.offset,
                        len: p.len,
                    }),
                };
                ch.send(&request.encode())
                    .await
                    .map_err(|e| End::Source(SourceError::Channel(e)))?;
                self.report.requests += 1;
                outstanding.push_back((id, p));
            }
            let Some(&(id, p)) = outstanding.front() else {
                if let Some(fault) = self.fault.take() {
                    return Err(End::Source(fault));
                }
                // Nothing in flight: either chunks are still being checked, or all is done.
                match self.verifying.join_next().await {
                    Some(joined) => {
                        self.finish(joined).await?;
                        continue;
                    }
                    None => return Ok(()),
                }
            };
            let frame = match tokio::time::timeout(timeout, ch.recv()).await {
                Err(_) => return Err(End::Source(SourceError::Timeout(timeout))),
                Ok(Err(e)) => return Err(End::Source(SourceError::Channel(e))),
                Ok(Ok(None)) => return Err(End::Source(SourceError::Closed(outstanding.len()))),
                Ok(Ok(Some(f))) => f,
            };
            outstanding.pop_front();
            let response = Response::decode(frame).map_err(|e| End::Source(e.into()))?;
            let Response::Chunk {
                id: got,
                index,
                offset,
                data,
            } = response
            else {
                return Err(End::Source(match response {
                    Response::Error { code, message, .. } => SourceError::Refused { code, message },
                    other => SourceError::Unexpected(describe(&other)),
                }));
            };
            if got != id || index != p.chunk || offset != p.offset || data.len() != p.len as usize {
                return Err(End::Source(SourceError::Unexpected(format!(
                    "asked for request {id}: chunk {} bytes [{}, +{}); got request {got}: chunk \
                     {index} bytes [{offset}, +{})",
                    p.chunk,
                    p.offset,
                    p.len,
                    data.len()
                ))));
            }
            self.report.bytes_received += data.len() as u64;
            let Some(a) = assembling.get_mut(&index) else {
                return Err(End::Source(SourceError::Unexpected(format!(
                    "chunk {index} was not being assembled"
                ))));
            };
            if p.whole {
                a.data = data;
            } else {
                if a.data.is_empty() {
                    a.data = vec![0; a.len];
                }
                let start = offset as usize;
                a.data[start..start + data.len()].copy_from_slice(&data);
            }
            a.missing -= p.len as usize;
            if a.missing == 0 {
                if let Some(a) = assembling.remove(&index) {
                    taken.retain(|&c| c != index);
                    self.verify(index, s, a.data);
                }
            }
        }
    }

    /// Hashes a received chunk and, when it matches, writes it, on a blocking thread.
    fn verify(&mut self, chunk: u32, source: usize, data: Vec<u8>) {
        let file = self.file.clone();
        let part = self.part.clone();
        let expected = self.manifest.chunk_hashes()[chunk as usize];
        let offset = chunk as u64 * self.manifest.chunk_size() as u64;
        self.verifying.spawn_blocking(move || {
            let ok = Digest::of(&data) == expected;
            if ok {
                write_all_at(&file, &data, offset).map_err(io_err(&part))?;
            }
            Ok(Verified { chunk, source, ok })
        });
    }

    /// Records a checked chunk: present and in the marker, or counted, queued again and held
    /// against the source.
    async fn finish(
        &mut self,
        joined: Result<Result<Verified, StoreError>, JoinError>,
    ) -> Result<(), End> {
        let v = joined
            .map_err(|e| End::Fatal(task_failed(e).into()))?
            .map_err(|e| End::Fatal(e.into()))?;
        if v.ok {
            self.present.insert(v.chunk);
            self.report.fetched_chunks += 1;
            self.failures[v.source] = 0;
            let marker = Marker::new(&self.manifest, &self.present);
            let path = self.marker.clone();
            tokio::task::spawn_blocking(move || marker.write(&path))
                .await
                .map_err(|e| End::Fatal(task_failed(e).into()))?
                .map_err(|e| End::Fatal(e.into()))?;
            let r = self.manifest.chunk_range(v.chunk)?;
            self.progress.send_modify(|p| p.done += r.end - r.start);
            return Ok(());
        }
        self.report.corrupt_chunks += 1;
        let attempts = self.attempts.entry(v.chunk).or_insert(0);
        *attempts += 1;
        let attempt = *attempts;
        (self.on_event)(&FetchEvent::ChunkCorrupt {
            chunk: v.chunk,
            source: self.names[v.source].clone(),
            attempt,
        });
        if attempt >= self.config.chunk_attempts {
            return Err(End::Fatal(FetchError::ChunkFailed {
                chunk: v.chunk,
                attempts: attempt,
            }));
        }
        self.todo.push_front(v.chunk);
        self.fault
            .get_or_insert(SourceError::Corrupt { chunk: v.chunk });
        Ok(())
    }

    /// Makes the data durable; when every chunk is present, checks the whole file and moves it
    /// to `dest`.
    async fn finish_file(mut self, dest: &Path) -> Result<FetchReport, FetchError> {
        let complete = self.present.len() == self.manifest.n_chunks() as usize;
        let file = self.file.clone();
        let part = self.part.clone();
        let synced = tokio::task::spawn_blocking(move || file.sync_all().map_err(io_err(&part)));
        synced.await.map_err(task_failed)??;
        self.report.present = self.present.clone();
        if !complete {
            return Ok(self.report);
        }
        let (file, part) = (self.file.clone(), self.part.clone());
        let size = self.manifest.size();
        let actual = tokio::task::spawn_blocking(move || hash_file(&file, size, &part))
            .await
            .map_err(task_failed)??;
        if actual != self.manifest.sha256() {
            // Every chunk matched but the whole does not: the manifest contradicts itself, so
            // nothing here can be trusted or resumed.
            let _ = std::fs::remove_file(&self.marker);
            let _ = std::fs::remove_file(&self.part);
            return Err(FetchError::FileHash {
                expected: self.manifest.sha256(),
                actual,
            });
        }
        let (part, marker, dest_buf) = (self.part.clone(), self.marker.clone(), dest.to_owned());
        let manifest = self.manifest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            std::fs::rename(&part, &dest_buf).map_err(io_err(&dest_buf))?;
            let _ = std::fs::remove_file(&marker);
            // So this node can serve the file at once, without hashing it again.
            let _ = manifest::write_cache(&dest_buf, &manifest);
            Ok(())
        })
        .await
        .map_err(task_failed)??;
        self.report.complete = true;
        self.report.path = dest.to_owned();
        Ok(self.report)
    }
}

fn hash_file(file: &File, size: u64, path: &Path) -> Result<Digest, StoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        read_exact_at(file, &mut buf[..n], offset).map_err(io_err(path))?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(Digest(hasher.finalize().into()))
}
