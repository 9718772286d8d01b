//! Pure parsers for the kernel files telemetry reads, and thin readers that apply them under
//! a root directory (normally `/`), so that tests and other mounts can point elsewhere.
//!
//! Every reader bounds how much it reads: a file far larger than the kernel ever writes is
//! not the file the parser expects, and must not cost the sampler more than it budgets.

use super::Battery;
use crate::cpu::{self, CpuInfoError, MemFacts};
use crate::thermal::sysfs::{self, Sensor};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The aggregate `cpu` line comes first; the per-core lines after it are not needed.
const STAT_PREFIX_BYTES: usize = 4096;
/// meminfo is about 1.5 KiB; the limit leaves room for future fields.
const MEMINFO_BYTES: usize = 16 * 1024;
/// Attribute files (`type`, `capacity`, `status`, `energy_uj`, frequencies) are a few bytes.
const ATTR_BYTES: usize = 64;
/// Enough for any real machine's power supplies, RAPL domains or cpufreq policies.
const MAX_ENTRIES: usize = 256;

/// A telemetry source that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is longer than {limit} bytes")]
    TooLong { path: PathBuf, limit: usize },
    #[error("{file}: {detail}")]
    Malformed { file: &'static str, detail: String },
    #[error(transparent)]
    Meminfo(#[from] CpuInfoError),
}

fn malformed(file: &'static str, detail: impl Into<String>) -> SourceError {
    SourceError::Malformed {
        file,
        detail: detail.into(),
    }
}

/// Cumulative CPU time of all cores, in clock ticks, from the aggregate `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time doing anything but idling or waiting for I/O.
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    /// The busy fraction of the time between `earlier` and `self`, 0 when no time passed.
    /// Counters that went backwards (a hotplugged core's ticks leaving the sum) count as no
    /// time rather than a huge one.
    pub fn utilisation_since(&self, earlier: &CpuTimes) -> f32 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        let busy = self.busy.saturating_sub(earlier.busy).min(total);
        (busy as f64 / total as f64) as f32
    }
}

/// Parses the aggregate `cpu` line of `/proc/stat`: user nice system idle [iowait irq softirq
/// steal guest guest_nice]. Kernels before 2.6 print only the first four. `guest` and
/// `guest_nice` are already included in `user` and `nice`, so they are not added again.
pub fn parse_stat(text: &str) -> Result<CpuTimes, SourceError> {
    const FILE: &str = "stat";
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .ok_or_else(|| malformed(FILE, "no aggregate `cpu` line"))?;
    let mut fields = Vec::with_capacity(10);
    for word in line.split_whitespace().skip(1) {
        let v: u64 = word
            .parse()
            .map_err(|_| malformed(FILE, format!("`cpu` field {word:?} is not a number")))?;
        fields.push(v);
    }
    if fields.len() < 4 {
        return Err(malformed(
            FILE,
            format!(
                "`cpu` line has {} fields, at least 4 expected",
                fields.len()
            ),
        ));
    }
    let counted = &fields[..fields.len().min(8)];
    let total = counted.iter().fold(0u64, |a, &v| a.saturating_add(v));
    let idle = fields[3].saturating_add(fields.get(4).copied().unwrap_or(0));
    Ok(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// `MemTotal` and `MemAvailable`, the same parser the CPU probe uses.
pub fn parse_meminfo(text: &str) -> Result<MemFacts, SourceError> {
    Ok(cpu::parse_meminfo(text)?)
}

/// A power supply's `capacity` file: a percentage, as a fraction in 0..=1.
pub fn parse_capacity(text: &str) -> Result<f32, SourceError> {
    const FILE: &str = "capacity";
    let t = text.trim();
    let pct: u32 = t
        .parse()
        .map_err(|_| malformed(FILE, format!("{t:?} is not a percentage")))?;
    if pct > 100 {
        return Err(malformed(FILE, format!("{pct} % is above 100")));
    }
    Ok(pct as f32 / 100.0)
}

/// A power supply's `status` file: whether the battery is charging. `Full` and `Not charging`
/// (on mains, held below full) are not charging; an unknown word is an error rather than a
/// guess.
pub fn parse_status(text: &str) -> Result<bool, SourceError> {
    match text.trim() {
        "Charging" => Ok(true),
        "Discharging" | "Not charging" | "Full" | "Unknown" => Ok(false),
        other => Err(malformed("status", format!("unknown status {other:?}"))),
    }
}

/// A single unsigned integer, as in `energy_uj` or a frequency in kHz.
pub fn parse_u64(file: &'static str, text: &str) -> Result<u64, SourceError> {
    let t = text.trim();
    t.parse()
        .map_err(|_| malformed(file, format!("{t:?} is not an unsigned integer")))
}

/// `/proc/[pid]/task/[tid]/stat`: the thread's user and system time in clock ticks. The
/// command name may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_task_cpu_ticks(text: &str) -> Result<(u64, u64), SourceError> {
    const FILE: &str = "task stat";
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or_else(|| malformed(FILE, "no `)` closing the command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the state (field 3) comes first here.
    let get = |i: usize| -> Result<u64, SourceError> {
        let w = fields
            .get(i)
            .ok_or_else(|| malformed(FILE, format!("only {} fields", fields.len() + 2)))?;
        parse_u64(FILE, w)
    };
    Ok((get(11)?, get(12)?))
}

pub(crate) fn read_limited(path: &Path, limit: usize) -> Result<String, SourceError> {
    let bytes = read_bytes(path, limit)?;
    if bytes.len() > limit {
        return Err(SourceError::TooLong {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_bytes(path: &Path, limit: usize) -> Result<Vec<u8>, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut buf = Vec::with_capacity(limit.min(4096) + 1);
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(buf)
}

/// Reads and parses `<root>/proc/stat`. Only a prefix is read: the aggregate line is first.
pub fn read_stat(root: &Path) -> Result<CpuTimes, SourceError> {
    let path = root.join("proc/stat");
    let bytes = read_bytes(&path, STAT_PREFIX_BYTES)?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// Reads and parses `<root>/proc/meminfo`.
pub fn read_meminfo(root: &Path) -> Result<MemFacts, SourceError> {
    parse_meminfo(&read_limited(&root.join("proc/meminfo"), MEMINFO_BYTES)?)
}

/// The subdirectories of `dir`, sorted by name; an absent directory has none.
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .take(MAX_ENTRIES)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// The first power supply under `<root>/sys/class/power_supply` whose `type` is `Battery`;
/// `None` on a machine without one. A battery whose files are unreadable or malformed is an
/// error, not `None`, so that a broken reading is not mistaken for mains power.
pub fn read_battery(root: &Path) -> Result<Option<Battery>, SourceError> {
    for (_, dir) in subdirs(&root.join("sys/class/power_supply")) {
        let Ok(kind) = read_limited(&dir.join("type"), ATTR_BYTES) else {
            continue;
        };
        if kind.trim() != "Battery" {
            continue;
        }
        let level = parse_capacity(&read_limited(&dir.join("capacity"), ATTR_BYTES)?)?;
        let charging = parse_status(&read_limited(&dir.join("status"), ATTR_BYTES)?)?;
        return Ok(Some(Battery { level, charging }));
    }
    Ok(None)
}

/// One RAPL package counter: cumulative energy and the value at which it wraps to zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnergyCounter {
    pub domain: String,
    pub energy_uj: u64,
    pub max_range_uj: Option<u64>,
}

/// The top-level RAPL domains (`intel-rapl:N`, one per package; AMD kernels use the same
/// name) under `<root>/sys/class/powercap`. Subdomains (`intel-rapl:N:M`, cores, DRAM) are
/// left out because the package counter already includes the cores. An empty list means no
/// RAPL; an unreadable counter (mode 0400 since Linux 5.10) is an error.
pub fn read_energy(root: &Path) -> Result<Vec<EnergyCounter>, SourceError> {
    let mut out = Vec::new();
    for (name, dir) in subdirs(&root.join("sys/class/powercap")) {
        let top_level = name
            .strip_prefix("intel-rapl:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !top_level {
            continue;
        }
        let energy_uj = parse_u64(
            "energy_uj",
            &read_limited(&dir.join("energy_uj"), ATTR_BYTES)?,
        )?;
        let max_range_uj = read_limited(&dir.join("max_energy_range_uj"), ATTR_BYTES)
            .ok()
            .and_then(|t| parse_u64("max_energy_range_uj", &t).ok());
        out.push(EnergyCounter {
            domain: name,
            energy_uj,
            max_range_uj,
        });
    }
    Ok(out)
}

/// Mean power in watts between two readings of the same domains `seconds` apart; `None` when
/// the domains differ or a counter wrapped without a known range.
pub fn power_w(earlier: &[EnergyCounter], later: &[EnergyCounter], seconds: f64) -> Option<f32> {
    if earlier.is_empty() || earlier.len() != later.len() || seconds <= 0.0 {
        return None;
    }
    let mut uj: u64 = 0;
    for (a, b) in earlier.iter().zip(later) {
        if a.domain != b.domain {
            return None;
        }
        let delta = if b.energy_uj >= a.energy_uj {
            b.energy_uj - a.energy_uj
        } else {
            b.max_range_uj?.checked_sub(a.energy_uj)? + b.energy_uj
        };
        uj = uj.saturating_add(delta);
    }
    Some((uj as f64 / 1e6 / seconds) as f32)
}

/// How a sensor's kind ranks as the CPU's temperature: lower is better, `None` is not a CPU
/// sensor. Package sensors come before per-core or SoC-wide ones.
fn cpu_sensor_rank(kind: &str) -> Option<usize> {
    const PREFERRED: [&str; 9] = [
        "x86_pkg_temp",
        "k10temp",
        "zenpower",
        "coretemp",
        "cpu-thermal",
        "cpu_thermal",
        "cpu0-thermal",
        "soc_thermal",
        "soc-thermal",
    ];
    if let Some(i) = PREFERRED.iter().position(|p| *p == kind) {
        return Some(i);
    }
    let k = kind.to_ascii_lowercase();
    (k.contains("cpu") || k.contains("soc")).then_some(PREFERRED.len())
}

/// The best CPU temperature sensor under `<root>/sys/class/thermal` and
/// `<root>/sys/class/hwmon`, or `None` where there is none.
pub fn find_cpu_sensor(root: &Path) -> Option<Sensor> {
    let mut all = Vec::new();
    for dir in ["sys/class/thermal", "sys/class/hwmon"] {
        if let Ok(s) = sysfs::list_sensors(&root.join(dir)) {
            all.extend(s);
        }
    }
    all.into_iter()
        .filter_map(|s| cpu_sensor_rank(&s.kind).map(|r| (r, s)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, s)| s)
}

/// Current and hardware-maximum frequency (kHz) summed over the cpufreq policies under
/// `<root>/sys/devices/system/cpu/cpufreq`; `None` without cpufreq (most VMs).
pub fn read_frequencies(root: &Path) -> Option<(u64, u64)> {
    let mut cur = 0u64;
    let mut max = 0u64;
    for (name, dir) in subdirs(&root.join("sys/devices/system/cpu/cpufreq")) {
        if !name.starts_with("policy") {
            continue;
        }
        let read = |f: &'static str| {
            read_limited(&dir.join(f), ATTR_BYTES)
                .ok()
                .and_then(|t| parse_u64(f, &t).ok())
        };
        if let (Some(c), Some(m)) = (read("scaling_cur_freq"), read("cpuinfo_max_freq")) {
            cur = cur.saturating_add(c);
            max = max.saturating_add(m);
        }
    }
    (max > 0).then_some((cur, max))
}
