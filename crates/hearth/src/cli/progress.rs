//! A download progress bar on stderr.

use super::model::mb;
use hearth_model::catalog::Progress;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
