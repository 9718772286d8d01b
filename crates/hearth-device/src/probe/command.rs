//! Running a vendor tool with a deadline and a cap on what it may print.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tool that exists but could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{program}: could not start: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program}: no answer within {timeout:?}; killed")]
    TimedOut { program: String, timeout: Duration },
    #[error("{program}: exited with {status}")]
    Failed { program: String, status: String },
    #[error("{program}: printed more than {limit} bytes")]
    TooLong { program: String, limit: usize },
    #[error("{program}: output is not UTF-8")]
    NotUtf8 { program: String },
    #[error("{program}: reading its output: {source}")]
    Read {
        program: String,
        source: std::io::Error,
    },
}

/// How often the deadline is checked while the tool runs.
const POLL: Duration = Duration::from_millis(10);

/// Runs `program args`, returning its standard output, or `Ok(None)` when the program is not
/// installed (which a probe treats as "platform absent", not as a fault).
pub fn run(
    program: &str,
    args: &[&str],
    timeout: Duration,
    limit: usize,
) -> Result<Option<String>, CommandError> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CommandError::Spawn {
                program: program.to_string(),
                source,
            })
        }
    };
    // The pipe is drained on its own thread: a tool that fills the pipe buffer would
    // otherwise block forever while we wait for it to exit.
    let reader = child.stdout.take().map(|stdout| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            // One byte past the limit tells "exactly at the limit" from "over it".
            let res = stdout.take(limit as u64 + 1).read_to_end(&mut buf);
            res.map(|_| buf)
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::TimedOut {
                    program: program.to_string(),
                    timeout,
                });
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Read {
                    program: program.to_string(),
                    source,
                });
            }
        }
    };
    let bytes = match reader.map(|r| r.join()) {
        Some(Ok(Ok(bytes))) => bytes,
        Some(Ok(Err(source))) => {
            return Err(CommandError::Read {
                program: program.to_string(),
                source,
            })
        }
        Some(Err(_)) | None => Vec::new(),
    };
    if !status.success() {
        return Err(CommandError::Failed {
            program: program.to_string(),
            status: status.to_string(),
        });
    }
    if bytes.len() > limit {
        return Err(CommandError::TooLong {
            program: program.to_string(),
            limit,
        });
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CommandError::NotUtf8 {
            program: program.to_string(),
        })
}
