//! The GPU of a phone or ARM board SoC (Qualcomm Adreno through kgsl, Arm Mali through
//! `mali0`), read from the Linux paths Android shares, under a root directory so that tests
//! and other mounts can point elsewhere.
//!
//! Backend rule: this probe describes the device; it lists `vulkan` only when a Vulkan loader
//! or driver is installed under the root (`system/lib64/libvulkan.so` or
//! `vendor/lib64/hw/vulkan.*.so`), since that is what hearth's Vulkan backend would run on.
//! Without one the device is listed with no backend, for the planner's information only.
//! The GPU shares RAM, so the budget is `MemAvailable`.

use super::{Accelerator, Backend, DeviceKind, Precision, Reading};
use crate::cpu::{self, CpuInfoError};
use crate::telemetry::source::{parse_capacity, parse_status};
use crate::thermal::sysfs::parse_millidegrees;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

const KGSL: &str = "sys/class/kgsl/kgsl-3d0";
const MALI: &str = "sys/class/misc/mali0/device";
/// sysfs attributes are a few bytes; meminfo and cpuinfo a few KiB.
const ATTR_BYTES: u64 = 256;
const FILE_BYTES: u64 = 64 * 1024;
const MAX_ZONES: usize = 256;

/// A kgsl/mali tree whose files cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum AndroidError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {detail}")]
    Malformed { file: &'static str, detail: String },
    #[error(transparent)]
    Meminfo(#[from] CpuInfoError),
}

fn malformed(file: &'static str, detail: impl Into<String>) -> AndroidError {
    AndroidError::Malformed {
        file,
        detail: detail.into(),
    }
}

/// kgsl `gpubusy`: busy and total time of the last window; `None` when the window is empty.
pub fn parse_gpubusy(text: &str) -> Result<Option<f64>, AndroidError> {
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(busy)), Some(Ok(total)), None) => {
            Ok((total > 0).then(|| (busy.min(total)) as f64 / total as f64))
        }
        _ => Err(malformed(
            "gpubusy",
            format!("expected `busy total`, got {text:?}"),
        )),
    }
}

/// A percentage such as Mali's `utilization` (`"37"`) or kgsl's `gpu_busy_percentage`
/// (`"37 %"`), as a fraction.
pub fn parse_percent(file: &'static str, text: &str) -> Result<f64, AndroidError> {
    let t = text.trim().trim_end_matches('%').trim();
    match t.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(f64::from(p) / 100.0),
        _ => Err(malformed(file, format!("{text:?} is not a percentage"))),
    }
}

/// Mali `gpuinfo`: `"Mali-G78 20 cores r1p1 0x9091"` → ("Mali-G78", Some(20)).
pub fn parse_mali_gpuinfo(text: &str) -> Result<(String, Option<u32>), AndroidError> {
    let mut words = text.split_whitespace();
    let name = words
        .next()
        .filter(|w| w.starts_with("Mali"))
        .ok_or_else(|| malformed("gpuinfo", format!("no Mali name in {text:?}")))?;
    let cores = words.next().and_then(|n| n.parse().ok());
    Ok((name.to_string(), cores))
}

/// The `Hardware` line of an ARM `/proc/cpuinfo`, which older kernels fill with the SoC.
pub fn cpuinfo_hardware(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "Hardware" && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

/// Thermal zone types that measure the GPU, then the SoC as a whole, in preference order.
fn zone_rank(kind: &str) -> Option<u8> {
    let k = kind.to_ascii_lowercase();
    if k.contains("gpu") || k.contains("mali") || k.contains("g3d") {
        Some(0)
    } else if k.contains("soc") || k.contains("skin") {
        Some(1)
    } else {
        None
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<String, AndroidError> {
    let err = |source| AndroidError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(limit).read_to_end(&mut buf))
        .map_err(err)?;
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

/// An optional attribute: absent or unreadable (SELinux) is `None`, never an error.
fn attr(root: &Path, rel: &str) -> Option<String> {
    read_bounded(&root.join(rel), ATTR_BYTES)
        .ok()
        .filter(|s| !s.is_empty())
}

/// The GPU or SoC temperature from the best-ranked thermal zone that reads.
fn zone_temperature(root: &Path) -> Option<f64> {
    let dir = fs::read_dir(root.join("sys/class/thermal")).ok()?;
    let mut zones: Vec<(u8, String, PathBuf)> = dir
        .flatten()
        .take(MAX_ZONES)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let kind = read_bounded(&e.path().join("type"), ATTR_BYTES).ok()?;
            Some((
                zone_rank(&kind)?,
                e.file_name().to_string_lossy().into_owned(),
                e.path(),
            ))
        })
        .collect();
    zones.sort();
    zones.into_iter().find_map(|(_, _, p)| {
        let t = read_bounded(&p.join("temp"), ATTR_BYTES).ok()?;
        parse_millidegrees(&t).ok().map(|m| m as f64 / 1000.0)
    })
}

fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Whether a Vulkan loader or ICD is installed under `root` (the backend rule above).
pub fn has_vulkan(root: &Path) -> bool {
    if root.join("system/lib64/libvulkan.so").is_file() {
        return true;
    }
    fs::read_dir(root.join("vendor/lib64/hw"))
        .map(|d| {
            d.flatten().take(1024).any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("vulkan.") && n.ends_with(".so")
            })
        })
        .unwrap_or(false)
}

/// The SoC's name: `soc0` (newer kernels), then cpuinfo's `Hardware`, then `props`
/// (`ro.soc.model`, `ro.board.platform` from getprop, where the caller has them).
fn soc_name(root: &Path, props: &[(String, String)]) -> Option<String> {
    let soc0 = |f: &str| attr(root, &format!("sys/devices/soc0/{f}"));
    if let Some(machine) = soc0("machine") {
        return Some(match soc0("family") {
            Some(family) if !machine.contains(&family) => format!("{family} {machine}"),
            _ => machine,
        });
    }
    if let Some(hw) = read_bounded(&root.join("proc/cpuinfo"), FILE_BYTES)
        .ok()
        .and_then(|t| cpuinfo_hardware(&t))
    {
        return Some(hw);
    }
    ["ro.soc.model", "ro.board.platform"].iter().find_map(|k| {
        props
            .iter()
            .find(|(pk, v)| pk == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    })
}

/// Describes the SoC GPU under `root`; nothing when there is no kgsl or mali node.
/// `props` are Android system properties where known (empty in tests and on boards).
pub fn probe_with(
    root: &Path,
    props: &[(String, String)],
) -> Result<Vec<Accelerator>, AndroidError> {
    let kgsl = root.join(KGSL);
    let mali = root.join(MALI);
    let (name, vendor, utilisation, temp) = if kgsl.is_dir() {
        let model = attr(root, &format!("{KGSL}/gpu_model"))
            .ok_or_else(|| malformed("gpu_model", "kgsl-3d0 has no readable gpu_model"))?;
        let busy = match attr(root, &format!("{KGSL}/gpubusy")) {
            Some(t) => parse_gpubusy(&t)?,
            None => None,
        };
        let temp = match attr(root, &format!("{KGSL}/temp")) {
            Some(t) => Some(
                parse_millidegrees(&t).map_err(|e| malformed("kgsl temp", format!("{e:?}")))?
                    as f64
                    / 1000.0,
            ),
            None => None,
        };
        (model, "Qualcomm", busy, temp)
    } else if mali.is_dir() {
        let info = attr(root, &format!("{MALI}/gpuinfo"))
            .ok_or_else(|| malformed("gpuinfo", "mali0 has no readable gpuinfo"))?;
        let (name, cores) = parse_mali_gpuinfo(&info)?;
        let busy = match attr(root, &format!("{MALI}/utilization")) {
            Some(t) => Some(parse_percent("utilization", &t)?),
            None => None,
        };
        // Arm's own naming for a configuration: "Mali-G78 MP20".
        let name = match cores {
            Some(n) => format!("{name} MP{n}"),
            None => name,
        };
        (name, "Arm", busy, None)
    } else {
        return Ok(Vec::new());
    };
    let mem = cpu::parse_meminfo(&read_bounded(&root.join("proc/meminfo"), FILE_BYTES)?)?;
    let soc = soc_name(root, props);
    let battery = root.join("sys/class/power_supply/battery");
    let battery_level = match attr(&battery, "capacity") {
        // The shared parser answers in f32; whole percents are what the file holds.
        Some(t) => Some(
            (f64::from(parse_capacity(&t).map_err(|e| malformed("capacity", e.to_string()))?)
                * 100.0)
                .round()
                / 100.0,
        ),
        None => None,
    };
    let charging = match attr(&battery, "status") {
        Some(t) => Some(parse_status(&t).map_err(|e| malformed("status", e.to_string()))?),
        None => None,
    };
    let id = match &soc {
        Some(s) => format!("soc-gpu-{}-{}", slug(s), slug(&name)),
        None => format!("soc-gpu-{}", slug(&name)),
    };
    Ok(vec![Accelerator {
        id,
        name: name.clone(),
        vendor: vendor.to_string(),
        kind: DeviceKind::IntegratedGpu,
        backends: if has_vulkan(root) {
            vec![Backend::Vulkan]
        } else {
            Vec::new()
        },
        precisions: vec![Precision::F32, Precision::F16],
        memory_total_bytes: mem.total_bytes,
        memory_free_bytes: Some(mem.available_bytes),
        memory_budget_bytes: super::budget(mem.total_bytes, Some(mem.available_bytes)),
        architecture: soc,
        compute_capability: None,
        driver_version: None,
        runtime_version: None,
        reading: Reading {
            temperature_c: temp.or_else(|| zone_temperature(root)),
            power_w: None,
            power_limit_w: None,
            utilisation,
            battery_level,
            charging,
        },
        source: "android-sysfs".to_string(),
    }])
}

/// [`probe_with`] on a live system: asks `getprop` where Android has it.
pub fn probe(root: &Path) -> Result<Vec<Accelerator>, AndroidError> {
    let mut props = Vec::new();
    if root == Path::new("/") && Path::new("/system/bin/getprop").is_file() {
        for key in ["ro.soc.model", "ro.board.platform"] {
            if let Ok(out) = std::process::Command::new("/system/bin/getprop")
                .arg(key)
                .output()
            {
                let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
                props.push((key.to_string(), v));
            }
        }
    }
    probe_with(root, &props)
}
