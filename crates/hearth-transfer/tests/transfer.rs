//! hearth-transfer end to end: the wire format against hostile bytes, fetches over the
//! in-process channel (whole, corrupted, two sources, resumed, ranges, a shard's layers) and
//! over two real hearth-net nodes on loopback.
//!
//! The test model is looked up in `HEARTH_TEST_MODEL_DIR` (default: `<workspace>/models`).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_transfer::manifest::{self, MAX_CHUNKS};
use hearth_transfer::protocol::{
    ErrorCode, ModelRef, PieceRange, ProtocolError, Request, Response, CHUNK_HEADER_LEN, VERSION,
};
use hearth_transfer::{
    fetch_layers, is_complete, local_copy, marker_path, memory_pair, part_path, present_chunks,
    request_manifest, serve, shard_ranges, ChannelError, ChunkSet, Digest, Fetch, FetchConfig,
    FetchError, FetchEvent, FrameChannel, LocalCopy, Manifest, ManifestError, MemoryChannel,
    ModelStore, Origin, ServeError, Source, SourceError, DEFAULT_CHUNK_SIZE, STREAM_TAG,
};

const TEST_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// hearth-net's default frame limit.
const FRAME: usize = 16 * 1024 * 1024;

fn model_path() -> PathBuf {
    let dir = std::env::var_os("HEARTH_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
    let path = dir.join(TEST_MODEL);
    assert!(
        path.is_file(),
        "test model {} not found; run `scripts/fetch-test-models` (or set HEARTH_TEST_MODEL_DIR)",
        path.display()
    );
    path
}

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-transfer-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// SplitMix64: deterministic bytes and choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn random_file(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let bytes = Rng(seed).bytes(size);
    std::fs::write(path, &bytes).expect("file written");
    bytes
}

fn sha_of_file(path: &Path) -> Digest {
    Digest::of(&std::fs::read(path).expect("file reads"))
}

// ---------------------------------------------------------------------------------------------
// A channel that counts chunk requests and corrupts chosen chunk responses once each. It reads
// the documented wire layout: kind at byte 1, chunk index at bytes 6..10 of a chunk response.

#[derive(Default)]
struct Faults {
    corrupt_once: Mutex<HashSet<u32>>,
    chunk_requests: AtomicU64,
    /// Each chunk response is held this long: gives a test time to interrupt a fetch.
    delay: Duration,
}

impl Faults {
    fn requests(&self) -> u64 {
        self.chunk_requests.load(Ordering::Relaxed)
    }
}

struct TestChannel {
    inner: MemoryChannel,
    faults: Arc<Faults>,
}

impl FrameChannel for TestChannel {
    async fn send(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        if frame.get(1) == Some(&0x02) {
            self.faults.chunk_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.send(frame).await
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        let Some(mut frame) = self.inner.recv().await? else {
            return Ok(None);
        };
        if frame.len() > CHUNK_HEADER_LEN && frame[1] == 0x82 {
            let index = u32::from_be_bytes(frame[6..10].try_into().unwrap());
            if self.faults.corrupt_once.lock().unwrap().remove(&index) {
                let last = frame.len() - 1;
                frame[last] ^= 0x55;
            }
            if !self.faults.delay.is_zero() {
                tokio::time::sleep(self.faults.delay).await;
            }
        }
        Ok(Some(frame))
    }

    fn max_frame(&self) -> usize {
        self.inner.max_frame()
    }
}

/// A source whose every channel is a fresh in-process pair served from `store`.
fn source(
    name: &str,
    store: &ModelStore,
    faults: &Arc<Faults>,
    frame: usize,
) -> Source<TestChannel> {
    let (store, faults) = (store.clone(), faults.clone());
    Source::new(name, move || {
        let (store, faults) = (store.clone(), faults.clone());
        async move {
            let (client, mut server) = memory_pair(16, frame);
            tokio::spawn(async move { serve(&store, &mut server).await });
            Ok(TestChannel {
                inner: client,
                faults,
            })
        }
    })
}

fn plain_source(name: &str, store: &ModelStore) -> Source<MemoryChannel> {
    let store = store.clone();
    Source::new(name, move || {
        let store = store.clone();
        async move {
            let (client, mut server) = memory_pair(16, FRAME);
            tokio::spawn(async move { serve(&store, &mut server).await });
            Ok(client)
        }
    })
}

/// A synthetic file of `size` bytes served in `chunk`-byte chunks.
async fn served_file(
    dir: &Path,
    size: usize,
    chunk: u32,
) -> (PathBuf, Vec<u8>, Manifest, ModelStore) {
    let path = dir.join("model.bin");
    let bytes = random_file(&path, size, size as u64 ^ chunk as u64);
    let store = ModelStore::new();
    let (manifest, _) = store.add(&path, "test-model", chunk).await.expect("served");
    (path, bytes, manifest, store)
}

/// The test model's manifest, computed without writing a cache beside the shared model file.
async fn model_manifest() -> (PathBuf, Manifest) {
    let path = model_path();
    let p = path.clone();
    let m = tokio::task::spawn_blocking(move || {
        Manifest::compute(&p, "smollm2-135m", DEFAULT_CHUNK_SIZE)
    })
    .await
    .unwrap()
    .expect("manifest");
    (path, m)
}

fn events() -> (Arc<Mutex<Vec<String>>>, impl FnMut(&FetchEvent) + Send) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (log, move |e: &FetchEvent| {
        l.lock().unwrap().push(format!("{e:?}"))
    })
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

// ---------------------------------------------------------------------------------------------
// Wire format.

fn small_manifest() -> Manifest {
    Manifest::new(
        "m",
        2500,
        1024,
        Digest([7; 32]),
        vec![Digest([1; 32]), Digest([2; 32]), Digest([3; 32])],
    )
    .unwrap()
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::GetManifest {
            id: 1,
            model: ModelRef::Sha256(Digest([9; 32])),
        },
        Request::GetManifest {
            id: 2,
            model: ModelRef::Name("smollm2-135m".into()),
        },
        Request::GetChunk {
            id: 3,
            file: Digest([5; 32]),
            index: 2,
            range: None,
        },
        Request::GetChunk {
            id: u32::MAX,
            file: Digest([5; 32]),
            index: 1,
            range: Some(PieceRange {
                offset: 100,
                len: 200,
            }),
        },
    ]
}

fn sample_responses() -> Vec<Response> {
    vec![
        Response::Manifest {
            id: 1,
            manifest: small_manifest(),
        },
        Response::Chunk {
            id: 3,
            index: 2,
            offset: 0,
            data: (0..50).collect(),
        },
        Response::Error {
            id: 4,
            code: ErrorCode::BadRequest,
            message: "chunk 9 does not exist".into(),
        },
    ]
}

#[test]
fn every_message_round_trips_compactly() {
    for r in sample_requests() {
        let bytes = r.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(Request::decode(&bytes).unwrap(), r);
    }
    for r in sample_responses() {
        assert_eq!(Response::decode(r.encode()).unwrap(), r);
    }
    // A whole-chunk request is 43 bytes; a chunk response adds 14 bytes to the data.
    assert_eq!(sample_requests()[2].encode().len(), 43);
    let chunk = &sample_responses()[1];
    assert_eq!(chunk.encode().len(), CHUNK_HEADER_LEN + 50);
}

#[test]
fn malformed_messages_are_typed_errors() {
    let req = sample_requests()[3].encode();
    let mut v = req.clone();
    v[0] = 2;
    assert_eq!(Request::decode(&v), Err(ProtocolError::Version(2)));
    assert_eq!(Request::decode(&[]), Err(ProtocolError::Empty));
    let mut v = req.clone();
    v[1] = 0x33;
    assert_eq!(Request::decode(&v), Err(ProtocolError::UnknownKind(0x33)));
    assert!(matches!(
        Request::decode(&req[..req.len() - 3]),
        Err(ProtocolError::Truncated {
            what: "range length",
            needed: 4,
            available: 1
        })
    ));
    let mut v = req.clone();
    v.push(0);
    assert!(matches!(
        Request::decode(&v),
        Err(ProtocolError::TrailingBytes { extra: 1, .. })
    ));
    let mut v = req.clone();
    v[42] = 7;
    assert_eq!(Request::decode(&v), Err(ProtocolError::BadFlag(7)));
    // A name of length zero, and one that is not UTF-8.
    let mut v = sample_requests()[1].encode();
    v.truncate(7);
    v.push(0);
    assert!(matches!(
        Request::decode(&v),
        Err(ProtocolError::EmptyField { .. })
    ));
    let mut v = sample_requests()[1].encode();
    v[8] = 0xFF;
    assert_eq!(
        Request::decode(&v),
        Err(ProtocolError::BadUtf8("model name"))
    );
    // Each direction refuses the other's messages.
    assert_eq!(
        Request::decode(&sample_responses()[0].encode()),
        Err(ProtocolError::WrongDirection("response"))
    );
    assert_eq!(
        Response::decode(req.clone()),
        Err(ProtocolError::WrongDirection("request"))
    );

    // A manifest whose chunk count disagrees with its size, or claims 2^32 - 1 hashes it does
    // not carry (refused before anything is allocated for them).
    let mut v = sample_responses()[0].encode();
    let count_at = 6 + 8 + 4 + 32 + 1 + 1;
    v[count_at..count_at + 4].copy_from_slice(&2u32.to_be_bytes());
    v.truncate(v.len() - 32);
    assert!(matches!(
        Response::decode(v),
        Err(ProtocolError::Manifest(ManifestError::ChunkCount {
            expected: 3,
            found: 2,
            ..
        }))
    ));
    let mut v = sample_responses()[0].encode();
    v[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Response::decode(v),
        Err(ProtocolError::Truncated {
            what: "chunk hashes",
            ..
        })
    ));
    let mut v = sample_responses()[0].encode();
    v[6 + 8..6 + 12].copy_from_slice(&16u32.to_be_bytes());
    assert!(matches!(
        Response::decode(v),
        Err(ProtocolError::Manifest(ManifestError::ChunkSize(16)))
    ));
    let mut v = sample_responses()[2].encode();
    v[6] = 99;
    assert_eq!(
        Response::decode(v),
        Err(ProtocolError::UnknownErrorCode(99))
    );
    let mut v = sample_responses()[2].encode();
    v[7..9].copy_from_slice(&5000u16.to_be_bytes());
    assert!(matches!(
        Response::decode(v),
        Err(ProtocolError::TooLong { len: 5000, .. })
    ));

    // Positions a peer may ask for are checked against the manifest.
    let m = small_manifest();
    assert_eq!(
        m.chunk_range(u32::MAX),
        Err(ManifestError::ChunkIndex {
            index: u32::MAX as u64,
            count: 3
        })
    );
    assert_eq!(m.chunk_range(2), Ok(2048..2500));
    assert!(matches!(
        m.piece_range(2, Some((400, 100))),
        Err(ManifestError::PieceRange { len: 452, .. })
    ));
    assert!(m.piece_range(0, Some((0, 0))).is_err());
    assert_eq!(m.piece_range(1, Some((24, 1000))), Ok(1048..2048));
    assert!(matches!(
        m.chunks_covering(&[0..2501, 0..1]),
        Err(ManifestError::FileRange { .. })
    ));
    assert_eq!(
        m.chunks_covering(&[1023..1025, 0..1, 5..5]).unwrap(),
        [0, 1]
    );
    assert!(matches!(
        Manifest::new("x", 1 << 40, 1024, Digest([0; 32]), vec![]),
        Err(ManifestError::TooManyChunks { .. })
    ));
    assert!(MAX_CHUNKS * 32 < FRAME as u64);
}

fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 1, 0x7F, 0x80, 0xFF][rng.below(5)];
            }
            2 => b.truncate(rng.below(b.len() + 1)),
            3 => {
                let n = rng.below(40);
                let extra = rng.bytes(n);
                b.extend(extra);
            }
            4 if b.len() >= 4 => {
                // Length and count fields are u32/u16 at various offsets: hit them squarely.
                let i = rng.below(b.len() - 3);
                let v = [0u32, 1, 31, 32, 1024, 0x7FFF_FFFF, u32::MAX][rng.below(7)];
                b[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ if b.len() > 2 => {
                let i = rng.below(b.len());
                let j = rng.below(b.len());
                let (lo, hi) = (i.min(j), i.max(j));
                let dup = b[lo..hi].to_vec();
                b.splice(lo..lo, dup);
            }
            _ => {}
        }
    }
    b
}

#[test]
fn thousands_of_mutated_messages_never_panic() {
    let seeds: Vec<Vec<u8>> = sample_requests()
        .iter()
        .map(Request::encode)
        .chain(sample_responses().iter().map(Response::encode))
        .collect();
    let mut rng = Rng(0x5eed);
    let (mut accepted, mut rejected) = (0, 0);
    let mut kinds = HashSet::new();
    for case in 0..30_000 {
        let bytes = if case % 10 == 0 {
            let n = rng.below(120);
            rng.bytes(n)
        } else {
            mutate(&seeds[rng.below(seeds.len())], &mut rng)
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut results = Vec::new();
            match Request::decode(&bytes) {
                Ok(r) => assert_eq!(Request::decode(&r.encode()).as_ref(), Ok(&r)),
                Err(e) => results.push(e),
            }
            match Response::decode(bytes.clone()) {
                Ok(r) => assert_eq!(Response::decode(r.encode()).as_ref(), Ok(&r)),
                Err(e) => results.push(e),
            }
            results
        }));
        let errors = outcome.unwrap_or_else(|_| panic!("case {case} panicked on {bytes:02x?}"));
        if errors.len() == 2 {
            rejected += 1;
        } else {
            accepted += 1;
        }
        for e in errors {
            assert!(!e.to_string().is_empty());
            kinds.insert(std::mem::discriminant(&e));
        }
    }
    assert!(
        accepted > 1000 && rejected > 1000,
        "{accepted} accepted, {rejected} rejected"
    );
    assert!(
        kinds.len() >= 10,
        "only {} kinds of error reached",
        kinds.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Serving.

async fn ask(ch: &mut MemoryChannel, r: Request) -> Response {
    ch.send(&r.encode()).await.unwrap();
    Response::decode(ch.recv().await.unwrap().expect("an answer")).expect("well-formed")
}

fn refused(r: Response) -> ErrorCode {
    match r {
        Response::Error { code, message, .. } => {
            assert!(!message.is_empty());
            code
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_bad_requests_and_closes_on_garbage() {
    let dir = temp_dir("bad-requests");
    let (_, bytes, m, store) = served_file(&dir, 10_000, 4096).await;
    let (mut client, mut server) = memory_pair(4, 4096 + CHUNK_HEADER_LEN - 1);
    let served = tokio::spawn(async move { serve(&store, &mut server).await });
    let file = m.sha256();
    let chunk = |index, range| Request::GetChunk {
        id: 7,
        file,
        index,
        range,
    };
    let piece = |offset, len| Some(PieceRange { offset, len });

    assert_eq!(
        refused(ask(&mut client, chunk(u32::MAX, None)).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(ask(&mut client, chunk(3, None)).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(ask(&mut client, chunk(2, piece(1800, 9))).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(ask(&mut client, chunk(0, piece(5, 0))).await),
        ErrorCode::BadRequest
    );
    // A whole 4096-byte chunk does not fit this channel's frames; a range of it does.
    assert_eq!(
        refused(ask(&mut client, chunk(0, None)).await),
        ErrorCode::TooLarge
    );
    match ask(&mut client, chunk(2, piece(1000, 808))).await {
        Response::Chunk {
            id: 7,
            index: 2,
            offset: 1000,
            data,
        } => {
            assert_eq!(data, &bytes[8192 + 1000..]);
        }
        other => panic!("{other:?}"),
    }
    let other_file = Request::GetChunk {
        id: 8,
        file: Digest([0; 32]),
        index: 0,
        range: None,
    };
    assert_eq!(
        refused(ask(&mut client, other_file).await),
        ErrorCode::NotFound
    );
    let unknown = Request::GetManifest {
        id: 9,
        model: ModelRef::Name("nope".into()),
    };
    assert_eq!(
        refused(ask(&mut client, unknown).await),
        ErrorCode::NotFound
    );
    let by_name = Request::GetManifest {
        id: 10,
        model: ModelRef::Name("test-model".into()),
    };
    assert_eq!(
        ask(&mut client, by_name).await,
        Response::Manifest {
            id: 10,
            manifest: m.clone()
        }
    );

    // Garbage gets a typed answer carrying the request id it seemed to have, then the end.
    let mut garbage = vec![VERSION, 0x02, 0, 0, 0, 42];
    garbage.extend_from_slice(&[1, 2, 3]);
    client.send(&garbage).await.unwrap();
    let answer = Response::decode(client.recv().await.unwrap().unwrap()).unwrap();
    assert!(matches!(
        answer,
        Response::Error {
            id: 42,
            code: ErrorCode::Unsupported,
            ..
        }
    ));
    assert_eq!(client.recv().await.unwrap(), None, "stream closed");
    match served.await.unwrap() {
        Err(ServeError::Protocol(ProtocolError::Truncated { .. })) => {}
        other => panic!("serve should end on the malformed request: {other:?}"),
    }
}

/// A server that lies in a chosen way.
fn lying_source(lie: u8) -> Source<MemoryChannel> {
    Source::new(format!("liar-{lie}"), move || async move {
        let (client, mut server) = memory_pair(16, FRAME);
        tokio::spawn(async move {
            while let Ok(Some(frame)) = server.recv().await {
                let Ok(Request::GetChunk { id, index, .. }) = Request::decode(&frame) else {
                    break;
                };
                let reply = match lie {
                    // Too short.
                    0 => Response::Chunk {
                        id,
                        index,
                        offset: 0,
                        data: vec![0; 10],
                    }
                    .encode(),
                    // Another chunk than asked.
                    1 => Response::Chunk {
                        id,
                        index: index + 1,
                        offset: 0,
                        data: vec![0; 1024],
                    }
                    .encode(),
                    // Bytes that are no message at all.
                    _ => vec![0xde, 0xad, 0xbe, 0xef],
                };
                if server.send(&reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(client)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_sources_are_typed_errors_not_data() {
    let dir = temp_dir("liars");
    let (_, _, m, _) = served_file(&dir, 5000, 1024).await;
    let dest = dir.join("out.bin");
    let mut sources: Vec<_> = (0..3).map(lying_source).collect();
    let config = FetchConfig {
        source_failures: 2,
        ..FetchConfig::default()
    };
    let err = Fetch::new(m.clone(), &dest)
        .config(config)
        .run(&mut sources, |_| {})
        .await
        .expect_err("nothing true was served");
    let FetchError::SourcesExhausted { errors } = err else {
        panic!("expected SourcesExhausted, got {err:?}");
    };
    assert_eq!(errors.len(), 3);
    assert!(
        matches!(errors[0].1, SourceError::Unexpected(_)),
        "{errors:?}"
    );
    assert!(
        matches!(errors[1].1, SourceError::Unexpected(_)),
        "{errors:?}"
    );
    assert!(
        matches!(
            errors[2].1,
            SourceError::Protocol(ProtocolError::Version(0xde))
        ),
        "{errors:?}"
    );
    // Nothing was accepted as data.
    assert!(present_chunks(&dest, &m).unwrap().is_empty());
    assert!(!is_complete(&dest));

    // No sources, and sources that cannot be reached.
    let mut none: Vec<Source<MemoryChannel>> = Vec::new();
    assert!(matches!(
        Fetch::new(m.clone(), &dest).run(&mut none, |_| {}).await,
        Err(FetchError::NoSources)
    ));
    let mut down = vec![Source::<MemoryChannel>::new("down", || async {
        Err(ChannelError::Other("unreachable".into()))
    })];
    match Fetch::new(m, &dest).run(&mut down, |_| {}).await {
        Err(FetchError::SourcesExhausted { errors }) => {
            assert!(matches!(errors[0].1, SourceError::Open(_)))
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests.

#[tokio::test(flavor = "current_thread")]
async fn manifest_is_hashed_off_the_runtime_and_cached_by_size_and_mtime() {
    let dir = temp_dir("manifest-cache");
    let path = dir.join("model.bin");
    let bytes = random_file(&path, 64 << 20, 3);
    // On this single-threaded runtime the ticker only runs while the hashing is elsewhere.
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let (m, origin) = manifest::load_or_compute(&path, "x", 1 << 20)
        .await
        .unwrap();
    let hashing = start.elapsed();
    let ticked = ticks.load(Ordering::Relaxed);
    ticker.abort();
    assert_eq!(origin, Origin::Computed);
    // Hashing on the runtime thread would leave the ticker at 0 or 1; the bound is loose
    // because other work on the machine delays timers.
    assert!(
        ticked >= 3,
        "runtime stalled: {ticked} ticks in {hashing:?}"
    );
    assert_eq!(m.sha256(), Digest::of(&bytes));
    assert_eq!(m.n_chunks(), 64);
    assert_eq!(m.chunk_hashes()[5], Digest::of(&bytes[5 << 20..6 << 20]));
    eprintln!(
        "manifest of 64 MiB: {hashing:?} ({:.0} MB/s)",
        mb_per_s(64 << 20, hashing)
    );

    let start = Instant::now();
    let (cached, origin) = manifest::load_or_compute(&path, "y", 1 << 20)
        .await
        .unwrap();
    assert_eq!(origin, Origin::Cached);
    assert!(
        start.elapsed() < hashing,
        "the cache was slower than hashing"
    );
    assert_eq!(cached, m.clone().with_name("y").unwrap());
    // Another chunk size is another manifest.
    let (other, origin) = manifest::load_or_compute(&path, "y", 1 << 21)
        .await
        .unwrap();
    assert_eq!((origin, other.n_chunks()), (Origin::Computed, 32));
    // A changed file is hashed again: same size, new contents, new mtime.
    std::thread::sleep(Duration::from_millis(20));
    let mut changed = bytes.clone();
    changed[0] ^= 1;
    std::fs::write(&path, &changed).unwrap();
    let (fresh, origin) = manifest::load_or_compute(&path, "y", 1 << 21)
        .await
        .unwrap();
    assert_eq!(origin, Origin::Computed);
    assert_eq!(fresh.sha256(), Digest::of(&changed));
    // A cache that is not JSON is ignored, not an error.
    std::fs::write(manifest::cache_path(&path), b"{nope").unwrap();
    let (_, origin) = manifest::load_or_compute(&path, "y", 1 << 21)
        .await
        .unwrap();
    assert_eq!(origin, Origin::Computed);
}

// ---------------------------------------------------------------------------------------------
// Fetching over the in-process channel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_model_over_the_memory_channel_is_identical() {
    let dir = temp_dir("whole");
    let (path, m) = model_manifest().await;
    let store = ModelStore::new();
    store.insert(&path, m.clone()).unwrap();

    // The manifest travels by hash and by name.
    let (mut client, mut server) = memory_pair(4, FRAME);
    let s = store.clone();
    tokio::spawn(async move { serve(&s, &mut server).await });
    let by_sha = request_manifest(&mut client, &ModelRef::Sha256(m.sha256()))
        .await
        .unwrap();
    let by_name = request_manifest(&mut client, &ModelRef::Name("smollm2-135m".into()))
        .await
        .unwrap();
    assert_eq!((&by_sha, &by_name), (&m, &m));
    assert!(matches!(
        request_manifest(&mut client, &ModelRef::Sha256(Digest([0; 32]))).await,
        Err(SourceError::Refused {
            code: ErrorCode::NotFound,
            ..
        })
    ));

    // Names that cannot travel are refused before anything is sent.
    assert!(matches!(
        request_manifest(&mut client, &ModelRef::Name(String::new())).await,
        Err(SourceError::Protocol(ProtocolError::EmptyField { .. }))
    ));
    assert!(matches!(
        request_manifest(&mut client, &ModelRef::Name("é".repeat(200))).await,
        Err(SourceError::Protocol(ProtocolError::TooLong {
            len: 400,
            ..
        }))
    ));

    let dest = dir.join("model.gguf");
    let fetch = Fetch::new(by_sha, &dest);
    let mut progress = fetch.progress();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress.changed().await.is_ok() {
            seen.push(*progress.borrow_and_update());
        }
        seen
    });
    let mut sources = vec![plain_source("peer", &store)];
    let start = Instant::now();
    let report = fetch.run(&mut sources, |_| {}).await.expect("fetch");
    let took = start.elapsed();
    eprintln!(
        "whole model over the memory channel: {} bytes in {took:?} ({:.0} MB/s)",
        m.size(),
        mb_per_s(m.size(), took)
    );
    let seen = watcher.await.unwrap();
    assert!(report.complete && report.path == dest);
    assert_eq!(report.fetched_chunks, m.n_chunks());
    assert_eq!(report.requests, m.n_chunks() as u64);
    assert_eq!(report.bytes_received, m.size());
    assert_eq!(report.corrupt_chunks, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap());
    assert!(is_complete(&dest));
    assert!(!part_path(&dest).exists() && !marker_path(&dest).exists());
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.done, last.total), (m.size(), m.size()));
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    // The fetched file is served at once: its manifest was cached beside it.
    let (_, origin) = ModelStore::new()
        .add(&dest, "smollm2-135m", DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    assert_eq!(origin, Origin::Cached);
    // Fetching again finds the finished file and asks nobody.
    let again = Fetch::new(m, &dest)
        .run(&mut sources, |_| {})
        .await
        .unwrap();
    assert!(again.complete && again.requests == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_once_is_detected_and_fetched_again() {
    let dir = temp_dir("corrupt-once");
    let (path, _, m, store) = served_file(&dir, 3_000_000, 64 * 1024).await;
    let faults = Arc::new(Faults::default());
    faults.corrupt_once.lock().unwrap().insert(5);
    let mut sources = vec![source("only", &store, &faults, FRAME)];
    let dest = dir.join("out.bin");
    let (log, on_event) = events();
    let report = Fetch::new(m.clone(), &dest)
        .run(&mut sources, on_event)
        .await
        .expect("fetch recovers");
    assert!(report.complete);
    assert_eq!(report.corrupt_chunks, 1);
    assert_eq!(report.source_failures, 1);
    assert_eq!(
        faults.requests(),
        m.n_chunks() as u64 + 1,
        "one chunk asked twice"
    );
    assert_eq!(sha_of_file(&dest), sha_of_file(&path));
    let log = log.lock().unwrap();
    let corrupt: Vec<_> = log
        .iter()
        .filter(|e| e.starts_with("ChunkCorrupt"))
        .collect();
    assert_eq!(corrupt.len(), 1, "{log:?}");
    assert!(corrupt[0].contains("chunk: 5") && corrupt[0].contains("attempt: 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_serving_a_corrupted_file_loses_to_a_good_one() {
    let dir = temp_dir("two-sources");
    let (path, bytes, m, good) = served_file(&dir, 2_000_000, 64 * 1024).await;
    // The bad peer's copy rotted after its manifest was made.
    let rotten = dir.join("rotten.bin");
    let mut b = bytes.clone();
    b[700_000] ^= 0x01;
    std::fs::write(&rotten, &b).unwrap();
    let bad = ModelStore::new();
    bad.insert(&rotten, m.clone()).unwrap();

    let (fa, fb) = (Arc::new(Faults::default()), Arc::new(Faults::default()));
    let mut sources = vec![
        source("rotten", &bad, &fa, FRAME),
        source("good", &good, &fb, FRAME),
    ];
    let dest = dir.join("out.bin");
    let (log, on_event) = events();
    let report = Fetch::new(m.clone(), &dest)
        .run(&mut sources, on_event)
        .await
        .expect("the good source finishes the file");
    assert!(report.complete);
    assert_eq!(report.corrupt_chunks, 1);
    assert_eq!(sha_of_file(&dest), sha_of_file(&path));
    // The bad source was dropped at the bad chunk; the good one served the rest.
    let bad_chunk = 700_000 / (64 * 1024);
    assert!(fa.requests() > bad_chunk as u64 && fa.requests() < m.n_chunks() as u64);
    assert!(fb.requests() >= 1);
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|e| e.starts_with("ChunkCorrupt")
        && e.contains(&format!("chunk: {bad_chunk}"))
        && e.contains("rotten")));
    assert!(log
        .iter()
        .any(|e| e.starts_with("SourceFailed") && e.contains("rotten")));

    // With only the rotten source the chunk fails every attempt and the fetch says so.
    let _ = std::fs::remove_file(&dest);
    let mut only_bad = vec![source("rotten", &bad, &fa, FRAME)];
    let config = FetchConfig {
        chunk_attempts: 3,
        source_failures: 10,
        ..FetchConfig::default()
    };
    let err = Fetch::new(m, dir.join("out2.bin"))
        .config(config)
        .run(&mut only_bad, |_| {})
        .await
        .expect_err("no good copy anywhere");
    assert!(
        matches!(err, FetchError::ChunkFailed { chunk, attempts: 3 } if chunk == bad_chunk),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fetch_resumes_without_fetching_verified_chunks_again() {
    let dir = temp_dir("resume");
    let (path, _, m, store) = served_file(&dir, 8 << 20, 64 * 1024).await;
    let n = m.n_chunks() as u64;
    let dest = dir.join("out.bin");

    let slow = Arc::new(Faults {
        delay: Duration::from_millis(3),
        ..Faults::default()
    });
    let fetch = Fetch::new(m.clone(), &dest);
    let mut progress = fetch.progress();
    let mut sources = vec![source("slow", &store, &slow, FRAME)];
    let task = tokio::spawn(async move { fetch.run(&mut sources, |_| {}).await });
    progress
        .wait_for(|p| p.total > 0 && p.done * 5 >= p.total * 2)
        .await
        .unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // Blocking writes already started run to their end; let them, so the marker is still.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let LocalCopy::Partial {
        present,
        path: part,
        ..
    } = local_copy(&dest).unwrap()
    else {
        panic!("an interrupted fetch leaves a partial copy");
    };
    assert!(!is_complete(&dest));
    assert!(present.len() as u64 >= n * 2 / 5 && (present.len() as u64) < n);
    // A torn write in one recorded chunk: the resumed fetch must notice it.
    let torn = present.iter().nth(3).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xAB; 100], torn as u64 * 65536 + 10)
        .unwrap();
    drop(file);

    let counted = Arc::new(Faults::default());
    let mut sources = vec![source("again", &store, &counted, FRAME)];
    let (log, on_event) = events();
    let report = Fetch::new(m.clone(), &dest)
        .run(&mut sources, on_event)
        .await
        .expect("resumed fetch");
    assert!(report.complete);
    assert_eq!(report.resumed_bad, 1);
    assert_eq!(report.resumed_chunks as usize, present.len() - 1);
    assert_eq!(counted.requests(), n - report.resumed_chunks as u64);
    assert_eq!(
        report.fetched_chunks as u64,
        n - report.resumed_chunks as u64
    );
    assert_eq!(sha_of_file(&dest), sha_of_file(&path));
    let log = log.lock().unwrap();
    assert!(
        log.contains(&format!("ResumedChunkBad {{ chunk: {torn} }}")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_leave_a_marked_sparse_file_that_a_later_fetch_completes() {
    let dir = temp_dir("ranges");
    let (path, bytes, m, store) = served_file(&dir, 4 << 20, 64 * 1024).await;
    let dest = dir.join("out.bin");
    let ranges = vec![100_000..200_000, 3_000_000..3_000_001];
    let faults = Arc::new(Faults::default());
    let mut sources = vec![source("peer", &store, &faults, FRAME)];
    let report = Fetch::new(m.clone(), &dest)
        .ranges(ranges.clone())
        .run(&mut sources, |_| {})
        .await
        .unwrap();
    let wanted: ChunkSet = m.chunks_covering(&ranges).unwrap().into_iter().collect();
    assert_eq!(wanted.iter().collect::<Vec<_>>(), [1, 2, 3, 45]);
    assert!(!report.complete && report.path == part_path(&dest));
    assert_eq!(report.present, wanted);
    assert_eq!(faults.requests(), 4);
    assert!(!dest.exists() && !is_complete(&dest));
    assert_eq!(present_chunks(&dest, &m).unwrap(), wanted);
    assert!(wanted.covers(&m, &ranges).unwrap());
    let part = std::fs::read(part_path(&dest)).unwrap();
    assert_eq!(part.len(), bytes.len());
    for r in &ranges {
        assert_eq!(
            part[r.start as usize..r.end as usize],
            bytes[r.start as usize..r.end as usize]
        );
    }
    // Unfetched chunks are holes, not written zeros.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(part_path(&dest)).unwrap().blocks() * 512;
    assert!(
        allocated < bytes.len() as u64 / 4,
        "{allocated} bytes allocated"
    );

    // The rest, later: only the missing chunks are asked for.
    let report = Fetch::new(m.clone(), &dest)
        .run(&mut sources, |_| {})
        .await
        .unwrap();
    assert!(report.complete && report.resumed_chunks == 4);
    assert_eq!(faults.requests(), m.n_chunks() as u64);
    assert_eq!(sha_of_file(&dest), sha_of_file(&path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_larger_than_a_frame_arrive_in_pieces() {
    let dir = temp_dir("pieces");
    let (path, _, m, store) = served_file(&dir, 1_000_000, 256 * 1024).await;
    let faults = Arc::new(Faults::default());
    faults.corrupt_once.lock().unwrap().insert(2);
    // 100 000-byte frames: each 256 KiB chunk takes three requests.
    let mut sources = vec![source("small-frames", &store, &faults, 100_000)];
    let dest = dir.join("out.bin");
    let report = Fetch::new(m.clone(), &dest)
        .config(FetchConfig {
            window: 2,
            ..FetchConfig::default()
        })
        .run(&mut sources, |_| {})
        .await
        .unwrap();
    assert!(report.complete);
    assert_eq!(report.corrupt_chunks, 1);
    // Three pieces for every chunk (the last has 213 568 bytes), and chunk 2 twice.
    let pieces = |len: u64| len.div_ceil(100_000 - CHUNK_HEADER_LEN as u64);
    let expected: u64 = (0..m.n_chunks())
        .map(|c| {
            let r = m.chunk_range(c).unwrap();
            pieces(r.end - r.start)
        })
        .sum::<u64>()
        + pieces(256 * 1024);
    assert_eq!(report.requests, expected);
    assert_eq!(sha_of_file(&dest), sha_of_file(&path));
}

// ---------------------------------------------------------------------------------------------
// A shard's layers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_10_to_20_from_a_sparse_file_compute_what_the_full_file_does() {
    use hearth_engine::LogitRows;
    use hearth_engine::{Shard, ShardInput, ShardOptions, ShardOutput};
    use hearth_model::gguf::{parse_header, GgufFile};

    let dir = temp_dir("layers");
    let (path, m) = model_manifest().await;
    let store = ModelStore::new();
    store.insert(&path, m.clone()).unwrap();
    let dest = dir.join("model.gguf");
    let faults = Arc::new(Faults::default());
    let mut sources = vec![source("peer", &store, &faults, FRAME)];
    let config = FetchConfig::default();
    let got = fetch_layers(&m, &dest, 10..20, &mut sources, &config, |_| {})
        .await
        .expect("layers fetched");
    assert!(!got.report.complete);
    let part = got.report.path.clone();
    let present = got.report.present.len() as u64;
    eprintln!(
        "layers [10, 20): {present} of {} chunks, {} requests",
        m.n_chunks(),
        faults.requests()
    );
    assert!(
        present < m.n_chunks() as u64 * 2 / 3,
        "fetched {present} chunks"
    );
    assert_eq!(faults.requests(), present, "no chunk was asked twice");

    // Which tensors each end of the model brings along.
    let full = std::fs::read(&path).unwrap();
    let header = parse_header(&full).unwrap();
    let data = |name: &str| {
        let t = header.tensors.iter().find(|t| t.name == name).unwrap();
        header.data_offset + t.offset..header.data_offset + t.offset + t.bytes
    };
    let covered = |ranges: &[std::ops::Range<u64>], r: std::ops::Range<u64>| {
        ranges.iter().any(|x| x.start <= r.start && r.end <= x.end)
    };
    let n_layers = 30;
    let mid = shard_ranges(&header, 10..20).unwrap();
    assert_eq!(mid, got.ranges);
    assert!(covered(&mid, 0..header.data_offset));
    assert!(
        covered(&mid, data("blk.10.attn_q.weight"))
            && covered(&mid, data("blk.19.ffn_down.weight"))
    );
    assert!(
        !covered(&mid, data("blk.9.ffn_down.weight"))
            && !covered(&mid, data("blk.20.attn_q.weight"))
    );
    assert!(
        !covered(&mid, data("token_embd.weight")) && !covered(&mid, data("output_norm.weight"))
    );
    let first = shard_ranges(&header, 0..1).unwrap();
    assert!(
        covered(&first, data("token_embd.weight")) && !covered(&first, data("output_norm.weight"))
    );
    // SmolLM2 ties its head to the embedding: the last shard needs the embedding too.
    assert!(header.tensors.iter().all(|t| t.name != "output.weight"));
    let last = shard_ranges(&header, 29..n_layers).unwrap();
    assert!(
        covered(&last, data("output_norm.weight")) && covered(&last, data("token_embd.weight"))
    );
    let all = shard_ranges(&header, 0..n_layers).unwrap();
    assert_eq!(
        all,
        vec![
            0..header.data_offset
                + header
                    .tensors
                    .iter()
                    .map(|t| t.offset + t.bytes)
                    .max()
                    .unwrap()
        ]
    );
    assert!(shard_ranges(&header, 20..31).is_err() && shard_ranges(&header, 5..5).is_err());

    // The same shard from both files, on the same hidden states.
    let run = |file: &Path| -> Vec<u32> {
        let file = Arc::new(GgufFile::open(file).expect("opens"));
        let options = ShardOptions {
            context: 16,
            threads: 2,
            ..ShardOptions::default()
        };
        let mut shard = Shard::load(file, 10..20, options).expect("shard loads");
        let n_embd = shard.config().n_embd;
        let hidden: Vec<f32> = (0..3 * n_embd)
            .map(|i| ((i as f32) * 0.37).sin() * 0.5)
            .collect();
        let id = shard.new_sequence().unwrap();
        match shard
            .forward(id, ShardInput::Hidden(&hidden), LogitRows::Last)
            .unwrap()
        {
            ShardOutput::Hidden(h) => h.iter().map(|x| x.to_bits()).collect(),
            ShardOutput::Logits(_) => panic!("a middle shard returns hidden states"),
        }
    };
    let from_sparse = run(&part);
    let from_full = run(&path);
    assert_eq!(from_sparse.len(), 3 * 576);
    assert!(from_sparse.iter().any(|&b| b != 0));
    assert_eq!(from_sparse, from_full, "hidden states differ");
    // And it really is sparse on disk.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&part).unwrap().blocks() * 512;
    assert!(
        allocated < m.size() * 2 / 3,
        "{allocated} of {} bytes allocated",
        m.size()
    );
}

// ---------------------------------------------------------------------------------------------
// Two real nodes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_model_between_two_hearth_net_nodes_on_loopback() {
    use hearth_net::{start, ClusterKey, LinkProbeConfig, NetConfig, NetEvent};

    let dir = temp_dir("net");
    let key = ClusterKey::generate();
    let config = |name: &str, peers| {
        let mut c = NetConfig::new(dir.join(name), key.clone());
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        c.peers = peers;
        c.mdns = false;
        c.node_name = name.into();
        c.link_probe = LinkProbeConfig {
            enabled: false,
            ..LinkProbeConfig::default()
        };
        c
    };
    let (a, mut a_events) = start(config("a", vec![])).await.expect("a starts");
    let a_addr = loop {
        if let Some(addr) = a.listen_addrs().first() {
            break addr.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (b, _b_events) = start(config("b", vec![a_addr])).await.expect("b starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.is_admitted(&b.local_id()) && b.is_admitted(&a.local_id())) {
        assert!(Instant::now() < deadline, "nodes did not admit each other");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Node a serves; the opening frame says which protocol a data stream is for.
    let (path, m) = model_manifest().await;
    let store = ModelStore::new();
    store.insert(&path, m.clone()).unwrap();
    tokio::spawn(async move {
        while let Some(event) = a_events.recv().await {
            if let NetEvent::Stream { mut stream, .. } = event {
                let store = store.clone();
                tokio::spawn(async move {
                    if let Ok(Some(tag)) = stream.recv().await {
                        if tag == STREAM_TAG {
                            let _ = serve(&store, &mut stream).await;
                        }
                    }
                });
            }
        }
    });

    let peer = a.local_id();
    let net = b.clone();
    let mut sources = vec![Source::new(peer.to_string(), move || {
        let net = net.clone();
        async move {
            let mut s = net.open_stream(peer).await?;
            s.send(STREAM_TAG).await?;
            Ok(s)
        }
    })];
    let manifest = {
        let mut s = b.open_stream(peer).await.unwrap();
        s.send(STREAM_TAG).await.unwrap();
        request_manifest(&mut s, &ModelRef::Sha256(m.sha256()))
            .await
            .unwrap()
    };
    assert_eq!(manifest, m);
    let dest = dir.join("model.gguf");
    let start = Instant::now();
    let report = Fetch::new(manifest, &dest)
        .run(&mut sources, |_| {})
        .await
        .expect("fetch");
    let took = start.elapsed();
    eprintln!(
        "whole model between two hearth-net nodes (TCP, Noise, Yamux): {} bytes in {took:?} ({:.0} MB/s)",
        m.size(),
        mb_per_s(m.size(), took)
    );
    assert!(report.complete && report.corrupt_chunks == 0);
    assert_eq!(sha_of_file(&dest), m.sha256());
    a.shutdown().await;
    b.shutdown().await;
}
