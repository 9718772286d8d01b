//! amdgpu's sysfs files, read from a root passed in (`/sys/class/drm`, or a test tree).
//!
//! The reader is thin; [`parse_u64`] and [`parse_uevent_slot`] are the pure parts. A card
//! whose `vendor` is not AMD, or that has no `mem_info_vram_total` (the older `radeon`
//! driver), is skipped. Optional files that cannot be read are absent values, since amdgpu
//! refuses some reads while a GPU is runtime-suspended; files that read but hold nonsense are
//! errors.

use super::AmdFacts;
use std::io::Read;
use std::path::{Path, PathBuf};

const AMD_VENDOR: &str = "0x1002";
/// sysfs attributes are one short line; anything longer is not one.
const MAX_FILE: u64 = 4096;
/// No machine has more GPUs than this; a bound on what a strange tree can make us read.
const MAX_CARDS: usize = 64;

/// amdgpu sysfs that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SysfsProbeError {
    #[error("listing {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: longer than {MAX_FILE} bytes")]
    TooLong { path: PathBuf },
    #[error("{path}: not a number: {value:?}")]
    Malformed { path: PathBuf, value: String },
    #[error("{path}: {value} is out of range")]
    OutOfRange { path: PathBuf, value: u64 },
}

/// Parses one integer attribute ("12868124672\n"); `None` for empty or non-numeric text.
pub fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// `PCI_SLOT_NAME=0000:07:00.0` from a device's `uevent`, lower-cased.
pub fn parse_uevent_slot(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.trim().strip_prefix("PCI_SLOT_NAME="))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

/// Every amdgpu device below `drm_root`, in card order. A missing root is an empty list (no
/// DRM at all, or not Linux).
pub fn read_sysfs(drm_root: &Path) -> Result<Vec<AmdFacts>, SysfsProbeError> {
    let entries = match std::fs::read_dir(drm_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SysfsProbeError::List {
                path: drm_root.to_path_buf(),
                source,
            })
        }
    };
    let mut cards: Vec<(u32, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // `card0-DP-1` and friends are connectors of a card, not cards.
            let n: u32 = name.strip_prefix("card")?.parse().ok()?;
            Some((n, name))
        })
        .collect();
    cards.sort();
    cards.truncate(MAX_CARDS);
    let mut out = Vec::new();
    for (_, card) in cards {
        if let Some(facts) = read_card(&drm_root.join(&card).join("device"), &card)? {
            out.push(facts);
        }
    }
    Ok(out)
}

fn read_card(dev: &Path, card: &str) -> Result<Option<AmdFacts>, SysfsProbeError> {
    let vendor = optional(&dev.join("vendor"))?;
    if vendor.as_deref().map(str::trim) != Some(AMD_VENDOR) {
        return Ok(None);
    }
    let Some(vram_total_bytes) = number(&dev.join("mem_info_vram_total"))? else {
        return Ok(None);
    };
    let hwmon = first_hwmon(&dev.join("hwmon"));
    let hw = |file: &str| hwmon.as_ref().map(|h| h.join(file));
    let micro = |file: &str| -> Result<Option<f64>, SysfsProbeError> {
        match hw(file) {
            Some(p) => Ok(number(&p)?.map(|v| v as f64 / 1e6)),
            None => Ok(None),
        }
    };
    let temperature_c = match hw("temp1_input") {
        Some(p) => millidegrees(&p)?,
        None => None,
    };
    // power1_average on most boards; RDNA 3 and later expose only power1_input.
    let power_w = match micro("power1_average")? {
        Some(w) => Some(w),
        None => micro("power1_input")?,
    };
    let busy_path = dev.join("gpu_busy_percent");
    let utilisation = match number(&busy_path)? {
        Some(pct) if pct <= 100 => Some(pct as f64 / 100.0),
        Some(value) => {
            return Err(SysfsProbeError::OutOfRange {
                path: busy_path,
                value,
            })
        }
        None => None,
    };
    let text = |file: &str| -> Result<Option<String>, SysfsProbeError> {
        Ok(optional(&dev.join(file))?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()))
    };
    Ok(Some(AmdFacts {
        card: card.to_string(),
        pci_address: text("uevent")?.as_deref().and_then(parse_uevent_slot),
        device_id: text("device")?.map(|d| d.to_ascii_lowercase()),
        unique_id: text("unique_id")?,
        name: text("product_name")?,
        architecture: None,
        vram_total_bytes,
        vram_used_bytes: number(&dev.join("mem_info_vram_used"))?,
        vram_vendor: text("mem_info_vram_vendor")?,
        driver_version: None,
        temperature_c,
        power_w,
        power_limit_w: micro("power1_cap")?,
        utilisation,
    }))
}

/// The first `hwmonN` directory, by number.
fn first_hwmon(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("hwmon")?.parse().ok()?;
            Some((n, e.path()))
        })
        .min()
        .map(|(_, p)| p)
}

/// The contents of a small file, `None` when it cannot be read.
fn optional(path: &Path) -> Result<Option<String>, SysfsProbeError> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    if file.take(MAX_FILE + 1).read_to_end(&mut buf).is_err() {
        return Ok(None);
    }
    if buf.len() as u64 > MAX_FILE {
        return Err(SysfsProbeError::TooLong {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn number(path: &Path) -> Result<Option<u64>, SysfsProbeError> {
    match optional(path)? {
        None => Ok(None),
        Some(text) => parse_u64(&text)
            .map(Some)
            .ok_or_else(|| SysfsProbeError::Malformed {
                path: path.to_path_buf(),
                value: text.trim().chars().take(64).collect(),
            }),
    }
}

/// hwmon temperatures are signed millidegrees; anything outside -50..=200 °C is a broken
/// sensor, not a reading.
fn millidegrees(path: &Path) -> Result<Option<f64>, SysfsProbeError> {
    let Some(text) = optional(path)? else {
        return Ok(None);
    };
    let malformed = || SysfsProbeError::Malformed {
        path: path.to_path_buf(),
        value: text.trim().chars().take(64).collect(),
    };
    let v: i64 = text.trim().parse().map_err(|_| malformed())?;
    if !(-50_000..=200_000).contains(&v) {
        return Err(SysfsProbeError::OutOfRange {
            path: path.to_path_buf(),
            value: v.unsigned_abs(),
        });
    }
    Ok(Some(v as f64 / 1000.0))
}
