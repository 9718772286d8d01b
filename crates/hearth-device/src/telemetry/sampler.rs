//! The sampler thread.
//!
//! Samples go into a `sync_channel` of the configured capacity. When the consumer lags and
//! the channel is full, the **new** sample is dropped (a `sync_channel` sender cannot remove
//! what is queued) and counted in [`SamplerStats::dropped`]; the consumer then reads the
//! queued, older samples first. Memory therefore never grows beyond `capacity` samples.
//!
//! Dropping the [`Sampler`] stops the thread: it waits on a stop channel between samples, and
//! the disconnect wakes it at once, so shutdown costs at most one sample's reading time.

use super::source::{self, CpuTimes, EnergyCounter, SourceError};
use super::{Sample, TelemetryConfig};
use crate::thermal::sysfs::Sensor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counters of the sampler thread, readable while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplerStats {
    /// Samples put into the channel.
    pub sent: u64,
    /// Samples dropped because the channel was full.
    pub dropped: u64,
    /// Periods without a sample because `proc/stat` or `proc/meminfo` failed to read.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// The thread's kernel id, so that its CPU time can be read from `/proc`; 0 until known.
    tid: AtomicU64,
}

/// A running sampler; dropping it stops the thread.
pub struct Sampler {
    rx: Receiver<Sample>,
    counters: Arc<Counters>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The state carried from one reading to the next.
struct Reader {
    cfg: TelemetryConfig,
    sensor: Option<Sensor>,
    stat: CpuTimes,
    energy: Vec<EnergyCounter>,
    at: Instant,
}

impl Reader {
    fn new(cfg: TelemetryConfig) -> Result<Reader, SourceError> {
        let stat = source::read_stat(&cfg.root)?;
        // Fail at start rather than in the thread, where the error could only be counted.
        source::read_meminfo(&cfg.root)?;
        Ok(Reader {
            sensor: source::find_cpu_sensor(&cfg.root),
            energy: source::read_energy(&cfg.root).unwrap_or_default(),
            stat,
            at: Instant::now(),
            cfg,
        })
    }

    fn read(&mut self) -> Result<Sample, SourceError> {
        let root: &Path = &self.cfg.root;
        let stat = source::read_stat(root)?;
        let mem = source::read_meminfo(root)?;
        let now = Instant::now();
        let utilisation = stat.utilisation_since(&self.stat);
        let energy = source::read_energy(root).unwrap_or_default();
        let power_w = source::power_w(
            &self.energy,
            &energy,
            now.duration_since(self.at).as_secs_f64(),
        );
        let temperature_c = self
            .sensor
            .as_ref()
            .and_then(|s| s.read_c().ok())
            .map(|c| c as f32);
        let battery = source::read_battery(root).ok().flatten();
        let throttled =
            self.cfg
                .throttle
                .throttled(temperature_c, utilisation, source::read_frequencies(root));
        self.stat = stat;
        self.energy = energy;
        self.at = now;
        Ok(Sample {
            at_unix_ms: unix_ms(),
            memory_total: mem.total_bytes,
            memory_available: mem.available_bytes,
            utilisation,
            temperature_c,
            power_w,
            battery,
            throttled,
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The calling thread's kernel id, from the `/proc/thread-self` link (`<pid>/task/<tid>`).
fn current_tid() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

impl Sampler {
    /// Takes the first `proc/stat` reading now and starts the thread; the first sample comes
    /// one `period` later, its utilisation measured over that period. Fails when memory or
    /// CPU time cannot be read under `cfg.root`.
    pub fn start(cfg: TelemetryConfig) -> Result<Sampler, SourceError> {
        let period = cfg.period.max(Duration::from_millis(1));
        let (tx, rx) = mpsc::sync_channel(cfg.capacity.max(1));
        let (stop_tx, stop_rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let reader = Reader::new(cfg)?;
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("hearth-telemetry".into())
            .spawn(move || run(reader, period, tx, stop_rx, c))
            .map_err(|source| SourceError::Io {
                path: "telemetry thread".into(),
                source,
            })?;
        Ok(Sampler {
            rx,
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The next sample, blocking until one is taken.
    pub fn recv(&self) -> Option<Sample> {
        self.rx.recv().ok()
    }

    /// The next sample, or `None` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Sample> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// A queued sample, without waiting.
    pub fn try_recv(&self) -> Option<Sample> {
        self.rx.try_recv().ok()
    }

    pub fn stats(&self) -> SamplerStats {
        SamplerStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// The sampler thread's kernel id (for `/proc/self/task/<tid>/stat`), once it has started.
    pub fn thread_id(&self) -> Option<u64> {
        match self.counters.tid.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut reader: Reader,
    period: Duration,
    tx: SyncSender<Sample>,
    stop: Receiver<()>,
    c: Arc<Counters>,
) {
    if let Some(tid) = current_tid() {
        c.tid.store(tid, Ordering::Relaxed);
    }
    // Deadlines advance by whole periods so that the rate does not drift with reading time;
    // after a stall the schedule restarts from now instead of bursting to catch up.
    let mut next = reader.at + period;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = Instant::now();
        next = if now >= next + period {
            now + period
        } else {
            next + period
        };
        match reader.read() {
            Ok(sample) => match tx.try_send(sample) {
                Ok(()) => {
                    c.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
