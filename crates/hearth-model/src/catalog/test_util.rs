//! A throwaway HTTP/1.1 server on 127.0.0.1 and temporary directories for the catalog tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Answers `Range` requests with 206.
    HonourRange,
    /// Always sends the whole body with 200.
    IgnoreRange,
    /// Always answers with this status and an empty body.
    Status(u16),
    /// First request: promises the whole body but closes after this many bytes; later requests
    /// behave like `HonourRange`.
    CutFirstAfter(usize),
}

#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

pub struct TestServer {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Serves `body` at every path except those under `/missing/`, which get 404. The accept loop
/// ends after `max_requests` connections so a test never leaves it running unbounded.
pub fn serve(body: Vec<u8>, mode: Mode, max_requests: usize) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().take(max_requests).enumerate() {
            let Ok(stream) = stream else { continue };
            let _ = handle(stream, &body, mode, i, &log);
        }
    });
    TestServer { base, seen }
}

fn handle(
    mut stream: TcpStream,
    body: &[u8],
    mode: Mode,
    index: usize,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let mut seen = Seen {
        path: path.clone(),
        ..Seen::default()
    };
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => seen.range = Some(v.trim().to_string()),
                "authorization" => seen.authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let range_start = seen
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    if let Ok(mut v) = log.lock() {
        v.push(seen);
    }

    let total = body.len();
    let (status, extra, payload, cut) = match mode {
        _ if path.starts_with("/missing/") => (404, String::new(), &body[..0], None),
        Mode::Status(code) => (code, String::new(), &body[..0], None),
        Mode::IgnoreRange => (200, String::new(), body, None),
        Mode::CutFirstAfter(n) if index == 0 => (200, String::new(), body, Some(n)),
        Mode::HonourRange | Mode::CutFirstAfter(_) => match range_start {
            Some(start) if start >= total => (
                416,
                format!("Content-Range: bytes */{total}\r\n"),
                &body[..0],
                None,
            ),
            Some(start) => (
                206,
                format!("Content-Range: bytes {start}-{}/{total}\r\n", total - 1),
                &body[start..],
                None,
            ),
            None => (200, String::new(), body, None),
        },
    };
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        payload.len()
    )?;
    let sent = cut.map_or(payload, |n| &payload[..n.min(payload.len())]);
    stream.write_all(sent)?;
    stream.flush()
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hearth-catalog-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
