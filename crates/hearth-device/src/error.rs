//! Typed errors: each names the file, field or value at fault.

use std::path::PathBuf;
use thiserror::Error;

/// A temperature sensor that cannot be found or read.
#[derive(Debug, Error)]
pub enum SysfsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{path} is longer than {limit} bytes; not a sensor file")]
    TooLong { path: PathBuf, limit: usize },
    #[error("{path}: expected an integer in millidegrees Celsius, got {content:?}")]
    Malformed { path: PathBuf, content: String },
    #[error("{path}: {millidegrees} m°C is outside the plausible range of a sensor")]
    OutOfRange { path: PathBuf, millidegrees: i64 },
    #[error("no sensor of type {wanted:?} under {root} (found: {found:?})")]
    NotFound {
        root: PathBuf,
        wanted: String,
        found: Vec<String>,
    },
}

/// A thermal configuration that would make the governor meaningless or unsafe.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    #[error("`{field}` must be {rule}, got {value}")]
    BadValue {
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
}

/// A telemetry sample the governor refuses, leaving its state unchanged.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SampleError {
    #[error("`{field}` is not a finite number ({value})")]
    NotFinite { field: &'static str, value: f64 },
    #[error("`load` must be within 0..=1, got {0}")]
    LoadOutOfRange(f64),
    #[error("`battery_level` must be within 0..=1, got {0}")]
    BatteryOutOfRange(f64),
    #[error("sample time {now} s does not follow the previous sample at {previous} s")]
    TimeNotIncreasing { previous: f64, now: f64 },
}
