//! Resumable HTTP(S) download into a partial file, hashed while it is written.

use super::verify::{hash_prefix, Sha256Stream};
use super::{CatalogError, HttpSettings, Progress};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

pub(crate) struct Request<'a> {
    pub url: &'a str,
    pub bearer: Option<&'a str>,
    pub expected_size: u64,
    pub settings: &'a HttpSettings,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CHUNK: usize = 256 * 1024;

/// What went wrong in one attempt, and whether another attempt may help.
enum Failure {
    Retry(CatalogError),
    Fatal(CatalogError),
}

/// Downloads `req.url` into `partial`, continuing an existing partial with a `Range` request.
/// Returns the hash of the whole partial file and whether an existing prefix was kept.
/// A server that ignores `Range` makes the download restart from zero. Transient failures
/// (connection errors, timeouts, 408/429/5xx, a body cut short) are retried a bounded number of
/// times, each retry resuming where the previous one stopped.
pub(crate) fn fetch(
    req: &Request<'_>,
    partial: &Path,
    progress: &dyn Progress,
) -> Result<(Sha256Stream, bool), CatalogError> {
    let io_err = |what: &str| {
        let ctx = format!("{what} {}", partial.display());
        move |e| CatalogError::io(ctx, e)
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(partial)
        .map_err(io_err("cannot open"))?;
    let mut have = file.metadata().map_err(io_err("cannot stat"))?.len();
    if have > req.expected_size {
        file.set_len(0).map_err(io_err("cannot truncate"))?;
        have = 0;
    }
    let resumed = have > 0;
    let mut hasher = if resumed {
        progress.message(&format!(
            "resuming {} from {:.1} MB",
            req.url,
            have as f64 / 1e6
        ));
        hash_prefix(&mut file, have).map_err(io_err("cannot read"))?
    } else {
        Sha256Stream::new()
    };
    if hasher.len() == req.expected_size {
        return Ok((hasher, resumed));
    }

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(req.settings.connect_timeout))
        .timeout_recv_response(Some(req.settings.read_timeout))
        .timeout_per_read(Some(req.settings.read_timeout))
        .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();

    progress.start(&format!("downloading {}", req.url), Some(req.expected_size));
    progress.advance(hasher.len());
    let attempts = req.settings.attempts.max(1);
    let mut last = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            let factor = 1u32 << (attempt - 1).min(16);
            let delay = req.settings.backoff.saturating_mul(factor).min(MAX_BACKOFF);
            if let Some(err) = &last {
                progress.message(&format!(
                    "retrying in {:.1} s after: {err}",
                    delay.as_secs_f64()
                ));
            }
            std::thread::sleep(delay);
        }
        match attempt_once(&agent, req, &mut file, &mut hasher, progress) {
            Ok(()) => {
                progress.finish();
                return Ok((hasher, resumed));
            }
            Err(Failure::Fatal(e)) => {
                progress.finish();
                return Err(e);
            }
            Err(Failure::Retry(e)) => last = Some(e),
        }
    }
    progress.finish();
    Err(last.unwrap_or_else(|| CatalogError::Network {
        url: req.url.to_string(),
        message: "no attempt was made".to_string(),
    }))
}

fn attempt_once(
    agent: &ureq::Agent,
    req: &Request<'_>,
    file: &mut File,
    hasher: &mut Sha256Stream,
    progress: &dyn Progress,
) -> Result<(), Failure> {
    let url = req.url;
    let fatal_io = |what: &str, e| Failure::Fatal(CatalogError::io(format!("{what}: {url}"), e));
    let mut get = agent.get(url);
    if let Some(token) = req.bearer {
        get = get.header("Authorization", format!("Bearer {token}"));
    }
    let offset = hasher.len();
    if offset > 0 {
        get = get.header("Range", format!("bytes={offset}-"));
    }
    let resp = get.call().map_err(|e| {
        Failure::Retry(CatalogError::Network {
            url: url.to_string(),
            message: e.to_string(),
        })
    })?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    match status {
        206 if offset > 0 => {
            let range = header("content-range").unwrap_or_default();
            let (start, total) = parse_content_range(&range).ok_or_else(|| {
                Failure::Fatal(CatalogError::Protocol {
                    url: url.to_string(),
                    message: format!("206 with unusable Content-Range {range:?}"),
                })
            })?;
            if start != offset {
                return Err(Failure::Fatal(CatalogError::Protocol {
                    url: url.to_string(),
                    message: format!("asked for bytes from {offset}, got range {range:?}"),
                }));
            }
            check_total(req, total)?;
        }
        200 => {
            if offset > 0 {
                progress.message("server ignored the range request; restarting from the beginning");
                file.set_len(0)
                    .map_err(|e| fatal_io("cannot truncate", e))?;
                *hasher = Sha256Stream::new();
                progress.start(&format!("downloading {url}"), Some(req.expected_size));
            }
            check_total(req, content_length)?;
        }
        // Our prefix is at least as long as the remote file, so it cannot be a prefix of it.
        416 if offset > 0 => {
            file.set_len(0)
                .map_err(|e| fatal_io("cannot truncate", e))?;
            *hasher = Sha256Stream::new();
            return Err(Failure::Retry(CatalogError::HttpStatus {
                url: url.to_string(),
                status,
            }));
        }
        408 | 429 | 500..=599 => {
            return Err(Failure::Retry(CatalogError::HttpStatus {
                url: url.to_string(),
                status,
            }))
        }
        _ => {
            return Err(Failure::Fatal(CatalogError::HttpStatus {
                url: url.to_string(),
                status,
            }))
        }
    }

    file.seek(SeekFrom::Start(hasher.len()))
        .map_err(|e| fatal_io("cannot seek", e))?;
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::Retry(CatalogError::Network {
                    url: url.to_string(),
                    message: format!("reading the body: {e}"),
                }))
            }
        };
        if hasher.len() + n as u64 > req.expected_size {
            return Err(Failure::Fatal(CatalogError::SizeMismatch {
                what: url.to_string(),
                expected: req.expected_size,
                actual: hasher.len() + n as u64,
            }));
        }
        file.write_all(&buf[..n])
            .map_err(|e| fatal_io("cannot write download of", e))?;
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    if hasher.len() < req.expected_size {
        return Err(Failure::Retry(CatalogError::Network {
            url: url.to_string(),
            message: format!(
                "connection closed after {} of {} bytes",
                hasher.len(),
                req.expected_size
            ),
        }));
    }
    Ok(())
}

/// A remote file of another size can never verify, so stop before transferring it.
fn check_total(req: &Request<'_>, total: Option<u64>) -> Result<(), Failure> {
    match total {
        Some(t) if t != req.expected_size => Err(Failure::Fatal(CatalogError::SizeMismatch {
            what: req.url.to_string(),
            expected: req.expected_size,
            actual: t,
        })),
        _ => Ok(()),
    }
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`) into START and TOTAL.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
