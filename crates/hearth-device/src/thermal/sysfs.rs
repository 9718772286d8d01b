//! Temperature sensors under a sysfs-like root.
//!
//! Linux exposes thermal zones as `/sys/class/thermal/thermal_zoneN/{type,temp}` and hwmon
//! chips as `/sys/class/hwmon/hwmonN/{name,temp1_input}`, temperatures in millidegrees
//! Celsius. The root is a parameter so that tests (and other mounts) can point elsewhere.
//! Parsing is split from reading: [`parse_millidegrees`] is pure.

use crate::error::SysfsError;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Sensor files are a few bytes; anything longer is not a sensor file.
const MAX_FILE_BYTES: usize = 64;
/// A machine with more zones than this is not one the scan should walk in full.
const MAX_SENSORS: usize = 256;
/// Below absolute zero or hotter than any silicon survives: a broken sensor.
const PLAUSIBLE_MILLIDEG: std::ops::RangeInclusive<i64> = -273_000..=200_000;

/// One temperature sensor: its kind (`type` or `name`) and the file holding its reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sensor {
    pub kind: String,
    pub temp_path: PathBuf,
}

impl Sensor {
    /// The current reading, °C.
    pub fn read_c(&self) -> Result<f64, SysfsError> {
        read_temp_c(&self.temp_path)
    }
}

/// The sensors under `root`: `thermal_zone*` (with `type` and `temp`) and `hwmon*` (with
/// `name` and `temp1_input`), sorted by directory name. Entries without a readable kind
/// are skipped: a half-populated zone is common and not an error.
pub fn list_sensors(root: &Path) -> Result<Vec<Sensor>, SysfsError> {
    let entries = fs::read_dir(root).map_err(|source| SysfsError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries.flatten().take(MAX_SENSORS * 4) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("thermal_zone") || name.starts_with("hwmon") {
            dirs.push((name, entry.path()));
        }
    }
    dirs.sort();
    let mut sensors = Vec::new();
    for (name, dir) in dirs.into_iter().take(MAX_SENSORS) {
        let (kind_file, temp_file) = if name.starts_with("thermal_zone") {
            ("type", "temp")
        } else {
            ("name", "temp1_input")
        };
        if let Ok(kind) = read_small(&dir.join(kind_file)) {
            let kind = kind.trim();
            if !kind.is_empty() {
                sensors.push(Sensor {
                    kind: kind.to_string(),
                    temp_path: dir.join(temp_file),
                });
            }
        }
    }
    Ok(sensors)
}

/// The first sensor under `root` whose kind is `wanted` (e.g. `x86_pkg_temp`, `k10temp`).
pub fn find_sensor(root: &Path, wanted: &str) -> Result<Sensor, SysfsError> {
    let sensors = list_sensors(root)?;
    let found: Vec<String> = sensors.iter().map(|s| s.kind.clone()).collect();
    sensors
        .into_iter()
        .find(|s| s.kind == wanted)
        .ok_or_else(|| SysfsError::NotFound {
            root: root.to_path_buf(),
            wanted: wanted.to_string(),
            found,
        })
}

/// Reads a millidegree file, °C.
pub fn read_temp_c(path: &Path) -> Result<f64, SysfsError> {
    let text = read_small(path)?;
    let mdeg = parse_millidegrees(&text).map_err(|e| match e {
        ParseError::Empty => SysfsError::Empty {
            path: path.to_path_buf(),
        },
        ParseError::Malformed => SysfsError::Malformed {
            path: path.to_path_buf(),
            content: text.clone(),
        },
        ParseError::OutOfRange(millidegrees) => SysfsError::OutOfRange {
            path: path.to_path_buf(),
            millidegrees,
        },
    })?;
    Ok(mdeg as f64 / 1000.0)
}

/// Why a millidegree text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    Malformed,
    OutOfRange(i64),
}

/// Parses the content of a sysfs temperature file: one integer in millidegrees Celsius,
/// optionally followed by a newline.
pub fn parse_millidegrees(text: &str) -> Result<i64, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::Empty);
    }
    let v: i64 = t.parse().map_err(|_| ParseError::Malformed)?;
    if !PLAUSIBLE_MILLIDEG.contains(&v) {
        return Err(ParseError::OutOfRange(v));
    }
    Ok(v)
}

fn read_small(path: &Path) -> Result<String, SysfsError> {
    let io = |source| SysfsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut buf = Vec::with_capacity(MAX_FILE_BYTES);
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() > MAX_FILE_BYTES {
        return Err(SysfsError::TooLong {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    match String::from_utf8(buf) {
        Ok(s) => Ok(s),
        Err(e) => Err(SysfsError::Malformed {
            path: path.to_path_buf(),
            content: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }),
    }
}
