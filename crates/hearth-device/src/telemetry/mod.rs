//! Live telemetry of the CPU device: a bounded stream of [`Sample`]s taken every `period` by a
//! background thread ([`sampler`]) from the kernel's files ([`source`]).
//!
//! Sources, all under a root directory (`/` on a real machine):
//!
//! | field | source |
//! |---|---|
//! | memory | `proc/meminfo` `MemTotal`, `MemAvailable` |
//! | utilisation | busy share of `proc/stat`'s aggregate `cpu` line between two readings |
//! | temperature | best CPU sensor under `sys/class/thermal` and `sys/class/hwmon` |
//! | power | RAPL `sys/class/powercap/intel-rapl:N/energy_uj` deltas, when readable |
//! | battery | first `sys/class/power_supply/*` of `type` `Battery`: `capacity`, `status` |
//! | throttled | the rule in [`ThrottleRule`] |
//!
//! Memory and utilisation are required: a sampler does not start without them. The others
//! are `None` where the machine lacks them or a reading fails, so that one broken sensor does
//! not stop the stream.

pub mod sampler;
pub mod source;

pub use sampler::{Sampler, SamplerStats};
pub use source::SourceError;

use std::path::PathBuf;
use std::time::Duration;

/// A battery's charge and whether it is charging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Battery {
    /// Charge, 0..=1.
    pub level: f32,
    pub charging: bool,
}

/// One telemetry reading of the CPU device.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Wall-clock time of the reading, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Bytes.
    pub memory_total: u64,
    /// Bytes the kernel estimates can be allocated without swapping.
    pub memory_available: u64,
    /// Busy fraction of all cores over the period before this sample, 0..=1.
    pub utilisation: f32,
    pub temperature_c: Option<f32>,
    /// Mean package power over the period before this sample.
    pub power_w: Option<f32>,
    pub battery: Option<Battery>,
    pub throttled: bool,
}

impl Sample {
    pub fn memory_used(&self) -> u64 {
        self.memory_total.saturating_sub(self.memory_available)
    }
}

/// When a sample counts as throttled. Either condition suffices:
///
/// - the CPU temperature is at or above `temperature_c` (the point where firmware typically
///   starts clock throttling; 90 °C by default);
/// - the cores are busy (utilisation ≥ `busy_utilisation`, 0.8) yet run below `slow_ratio`
///   (0.6) of their hardware maximum (`scaling_cur_freq` / `cpuinfo_max_freq`, summed over
///   the cpufreq policies). A low clock on an idle machine is power saving, not throttling,
///   which is why the frequency alone does not count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleRule {
    pub temperature_c: f32,
    pub busy_utilisation: f32,
    pub slow_ratio: f32,
}

impl Default for ThrottleRule {
    fn default() -> Self {
        ThrottleRule {
            temperature_c: 90.0,
            busy_utilisation: 0.8,
            slow_ratio: 0.6,
        }
    }
}

impl ThrottleRule {
    /// `freq_khz` is (current, hardware maximum) as [`source::read_frequencies`] gives them.
    pub fn throttled(
        &self,
        temperature_c: Option<f32>,
        utilisation: f32,
        freq_khz: Option<(u64, u64)>,
    ) -> bool {
        let hot = temperature_c.is_some_and(|t| t >= self.temperature_c);
        let slow = match freq_khz {
            Some((cur, max)) if max > 0 => {
                utilisation >= self.busy_utilisation
                    && (cur as f64) < self.slow_ratio as f64 * max as f64
            }
            _ => false,
        };
        hot || slow
    }
}

/// How and where to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The directory holding `proc/` and `sys/`.
    pub root: PathBuf,
    pub period: Duration,
    /// Samples the channel holds before new ones are dropped.
    pub capacity: usize,
    pub throttle: ThrottleRule,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            root: PathBuf::from("/"),
            period: Duration::from_secs(1),
            capacity: 64,
            throttle: ThrottleRule::default(),
        }
    }
}
