//! The audit log: `audit.jsonl` in the node's data dir, one JSON object per line with `at`
//! (RFC 3339, UTC, milliseconds), `kind` and the event's fields.
//!
//! Writing goes through a bounded channel to one writer thread rather than a `Mutex<File>`:
//! `record` is called from the node loop and from every API request, and a write to a slow or
//! stalled disk must not hold up either of them. `record` never waits; when the queue is full
//! (the disk has stopped keeping up) the line is counted and the writer reports the count in an
//! `audit.dropped` line once it catches up, so a gap is visible in the log itself.
//!
//! The file is opened with `O_APPEND` and every line goes out in one `write_all`, so lines from
//! the node and from `hearth token` commands run beside it do not interleave, and a line is
//! never split by another writer.

use super::SecurityError;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

pub const AUDIT_FILE: &str = "audit.jsonl";
/// Lines that may wait for the writer.
const QUEUE: usize = 4096;

/// A cheap, cloneable handle to the audit log.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<SyncSender<Msg>>,
    dropped: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
}

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
}

impl Audit {
    /// Opens (creating it if needed) `audit.jsonl` in `data_dir` for appending.
    pub fn open(data_dir: &Path) -> Result<Audit, SecurityError> {
        let path = data_dir.join(AUDIT_FILE);
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|e| SecurityError::io("cannot open the audit log", &path, e))?;
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = {
            let dropped = Arc::clone(&dropped);
            let for_writer = path.clone();
            std::thread::Builder::new()
                .name("hearth-audit".into())
                .spawn(move || write_lines(file, &for_writer, rx, &dropped))
                .map_err(|e| SecurityError::io("cannot start the audit writer for", &path, e))?
        };
        Ok(Audit {
            inner: Arc::new(Inner {
                tx: Some(tx),
                dropped,
                writer: Some(writer),
            }),
        })
    }

    /// Queues one line: `at` and `kind` first, then the members of `fields` (an object; any
    /// other value goes under `fields`). Never blocks.
    pub fn record(&self, kind: &str, fields: Value) {
        let line = line(crate::node::driver::now_ms(), kind, fields);
        let Some(tx) = &self.inner.tx else { return };
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits until every line recorded before this call is written (or could not be). Blocks:
    /// for the end of a command or of the node, not for request paths.
    pub fn flush(&self) {
        let Some(tx) = &self.inner.tx else { return };
        let (done_tx, done_rx) = sync_channel(1);
        if tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

impl Drop for Inner {
    /// The last handle gone: let the writer drain the queue and finish, so a command's lines
    /// are on disk when it exits.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_lines(mut file: File, path: &Path, rx: Receiver<Msg>, dropped: &AtomicU64) {
    let mut failing = false;
    let mut write = |file: &mut File, line: &str| match file.write_all(line.as_bytes()) {
        Ok(()) => failing = false,
        Err(e) => {
            // One warning per run of failures, not one per line.
            if !failing {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the audit log");
            }
            failing = true;
        }
    };
    for msg in rx {
        let n = dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            let note = line(
                crate::node::driver::now_ms(),
                "audit.dropped",
                serde_json::json!({ "lines": n, "reason": "the audit queue was full" }),
            );
            write(&mut file, &note);
        }
        match msg {
            Msg::Line(l) => write(&mut file, &l),
            Msg::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// One line of the log, newline included. serde_json escapes control characters inside
/// strings, so the only newline is the last byte.
fn line(at_ms: u64, kind: &str, fields: Value) -> String {
    let json = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut s = String::with_capacity(160);
    s.push_str("{\"at\":\"");
    s.push_str(&rfc3339_ms(at_ms));
    s.push_str("\",\"kind\":");
    s.push_str(&json(&Value::String(kind.to_string())));
    match fields {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "at" || k == "kind" {
                    continue;
                }
                s.push(',');
                s.push_str(&json(&Value::String(k)));
                s.push(':');
                s.push_str(&json(&v));
            }
        }
        Value::Null => {}
        other => {
            s.push_str(",\"fields\":");
            s.push_str(&json(&other));
        }
    }
    s.push_str("}\n");
    s
}

/// `YYYY-MM-DDThh:mm:ss.mmmZ` for milliseconds since the Unix epoch.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let day = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        unix_ms % 1000
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn a_line_is_one_object_with_at_and_kind_first() {
        let l = line(
            1_700_000_000_123,
            "api.refused",
            json!({"reason": "bad\ntoken", "kind": "ignored", "status": 401}),
        );
        assert!(l.ends_with("}\n") && l.matches('\n').count() == 1, "{l:?}");
        assert!(l.starts_with(r#"{"at":"2023-11-14T22:13:20.123Z","kind":"api.refused","#));
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["kind"], "api.refused");
        assert_eq!(v["reason"], "bad\ntoken");
        assert_eq!(v["status"], 401);
        let other = line(0, "x", json!([1, 2]));
        assert_eq!(
            serde_json::from_str::<Value>(&other).unwrap()["fields"],
            json!([1, 2])
        );
        let bare = line(0, "x", Value::Null);
        assert_eq!(serde_json::from_str::<Value>(&bare).unwrap()["kind"], "x");
    }

    #[test]
    fn lines_reach_the_file_in_order_from_many_threads() {
        let dir = std::env::temp_dir().join(format!("hearth-audit-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let audit = Audit::open(&dir).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let audit = audit.clone();
                s.spawn(move || {
                    for i in 0..200 {
                        audit.record("test", json!({"thread": t, "i": i}));
                    }
                });
            }
        });
        // A second writer on the same file, as `hearth token` beside a running node.
        let other = Audit::open(&dir).unwrap();
        other.record("other", json!({}));
        drop(other);
        audit.flush();
        let text = std::fs::read_to_string(dir.join(AUDIT_FILE)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 801);
        for t in 0..4 {
            let seen: Vec<u64> = lines
                .iter()
                .filter(|v| v["thread"] == t)
                .map(|v| v["i"].as_u64().unwrap())
                .collect();
            assert_eq!(seen, (0..200).collect::<Vec<_>>());
        }
        drop(audit);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
