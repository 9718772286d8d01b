//! Metal GPUs on macOS: `system_profiler SPDisplaysDataType` (JSON, or the text form that
//! macOS before 10.15 prints) and `sysctl` for the unified-memory size.
//!
//! Budget rule for Apple silicon (unified memory): Metal lets one process wire at most
//! `MTLDevice.recommendedMaxWorkingSetSize`, which Apple does not document as a formula.
//! Measured values: 10.67 GB on a 16 GB M4 (exo-explore/exo pull 1672, i.e. 2/3 of RAM) and
//! 107.52 GiB on 128 GiB hosts (antirez/ds4 pull 893, 84 %); gpustack issue 1375 reports 75 %.
//! hearth takes 2/3 of RAM up to 36 GiB and 3/4 above: never above what was measured, since
//! overestimating fails a load mid-prefill while underestimating only leaves memory idle. A
//! raised `iogpu.wired_limit_mb` (macOS 14+) replaces the rule, as Metal itself then reports it.
//!
//! No temperature or power: IOReport needs private frameworks and `powermetrics` needs root.

use super::{budget, Accelerator, Backend, DeviceKind, Precision, Reading};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// `system_profiler` or `sysctl` output that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppleError {
    #[error("system_profiler output is not JSON: {0}")]
    Json(String),
    #[error("system_profiler JSON has no SPDisplaysDataType list")]
    NoDisplaysList,
    #[error("system_profiler lists no GPU")]
    NoGpu,
    #[error("{field} is not a size: {value:?}")]
    BadSize { field: &'static str, value: String },
    #[error("sysctl line {line}: expected `key: value`, found {text:?}")]
    MalformedLine { line: usize, text: String },
    #[error("sysctl {key} is not a number: {value:?}")]
    BadNumber { key: String, value: String },
    #[error("sysctl output has no hw.memsize")]
    NoMemsize,
    #[error("running {tool}: {detail}")]
    Tool { tool: &'static str, detail: String },
}

/// One GPU as `system_profiler` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayGpu {
    pub name: String,
    pub vendor: Vendor,
    pub cores: Option<u32>,
    /// Normalised: "Metal 3", "Apple 7", "Mac 2", "macOS GPUFamily2 v1".
    pub metal_family: Option<String>,
    /// Own VRAM of a discrete GPU.
    pub vram_bytes: Option<u64>,
    /// What an Intel iGPU may borrow from RAM.
    pub vram_shared_bytes: Option<u64>,
    pub device_id: Option<String>,
    pub builtin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Apple,
    Amd,
    Intel,
    Nvidia,
    Unknown,
}

impl Vendor {
    fn from_text(text: &str) -> Vendor {
        let t = text.to_ascii_lowercase();
        if t.contains("apple") || t.contains("0x106b") {
            Vendor::Apple
        } else if t.contains("amd") || t.contains("ati") || t.contains("0x1002") {
            Vendor::Amd
        } else if t.contains("intel") || t.contains("0x8086") {
            Vendor::Intel
        } else if t.contains("nvidia") || t.contains("0x10de") {
            Vendor::Nvidia
        } else {
            Vendor::Unknown
        }
    }

    fn name(self) -> &'static str {
        match self {
            Vendor::Apple => "Apple",
            Vendor::Amd => "AMD",
            Vendor::Intel => "Intel",
            Vendor::Nvidia => "NVIDIA",
            Vendor::Unknown => "unknown",
        }
    }
}

/// What `sysctl` says about memory and the chip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysctlFacts {
    pub memsize: u64,
    pub brand: Option<String>,
    pub performance_cores: Option<u32>,
    pub efficiency_cores: Option<u32>,
    /// `iogpu.wired_limit_mb`; 0 means the system default.
    pub wired_limit_mb: Option<u64>,
}

/// Parses `"16 GB"`, `"1536 MB"`, and the text form's `"Dynamic, Max: 1536 MB"`.
fn parse_size(field: &'static str, value: &str) -> Result<u64, AppleError> {
    let bad = || AppleError::BadSize {
        field,
        value: value.to_string(),
    };
    let v = value.rsplit(':').next().unwrap_or(value).trim();
    let mut parts = v.split_whitespace();
    let n: u64 = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    let unit = match parts.next() {
        Some("GB") => GIB,
        Some("MB") => MIB,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// `spdisplays_metal3` → "Metal 3", `spdisplays_mtlgpufamilyapple7` → "Apple 7".
fn metal_family(raw: &str) -> Option<String> {
    let r = raw.trim();
    let r = r.strip_prefix("spdisplays_").unwrap_or(r);
    if r.is_empty() || r == "supported" {
        return None;
    }
    if let Some(n) = r.strip_prefix("metal") {
        if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
            return Some(format!("Metal {n}"));
        }
    }
    if let Some(rest) = r.strip_prefix("mtlgpufamily") {
        for (prefix, label) in [("apple", "Apple"), ("mac", "Mac")] {
            if let Some(n) = rest.strip_prefix(prefix) {
                return Some(format!("{label} {n}"));
            }
        }
    }
    // The text form: "Supported, feature set macOS GPUFamily2 v1" or "Metal 3".
    let r = r.rsplit("feature set ").next().unwrap_or(r);
    Some(r.trim_start_matches("Supported, ").trim().to_string())
}

fn field<'a>(entry: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    entry.get(key).and_then(Value::as_str)
}

/// Parses `system_profiler SPDisplaysDataType -json`.
pub fn parse_displays_json(text: &str) -> Result<Vec<DisplayGpu>, AppleError> {
    let root: Value = serde_json::from_str(text).map_err(|e| AppleError::Json(e.to_string()))?;
    let list = root
        .get("SPDisplaysDataType")
        .and_then(Value::as_array)
        .ok_or(AppleError::NoDisplaysList)?;
    let mut gpus = Vec::new();
    for entry in list.iter().filter_map(Value::as_object) {
        let Some(name) = field(entry, "sppci_model").or_else(|| field(entry, "_name")) else {
            continue;
        };
        let vendor_text = field(entry, "spdisplays_vendor").unwrap_or(name);
        // Older macOS names the VRAM key with a leading underscore.
        let vram = field(entry, "spdisplays_vram").or_else(|| field(entry, "_spdisplays_vram"));
        gpus.push(DisplayGpu {
            name: name.to_string(),
            vendor: Vendor::from_text(vendor_text),
            cores: field(entry, "sppci_cores").and_then(|c| c.trim().parse().ok()),
            metal_family: field(entry, "spdisplays_mtlgpufamilysupport")
                .or_else(|| field(entry, "spdisplays_metalfamily"))
                .or_else(|| field(entry, "spdisplays_metal"))
                .and_then(metal_family),
            vram_bytes: vram.map(|v| parse_size("spdisplays_vram", v)).transpose()?,
            vram_shared_bytes: field(entry, "spdisplays_vram_shared")
                .map(|v| parse_size("spdisplays_vram_shared", v))
                .transpose()?,
            device_id: field(entry, "spdisplays_device-id").map(str::to_string),
            builtin: field(entry, "sppci_bus") == Some("spdisplays_builtin"),
        });
    }
    if gpus.is_empty() {
        return Err(AppleError::NoGpu);
    }
    Ok(gpus)
}

/// Parses the text of `system_profiler SPDisplaysDataType`: a GPU starts at each
/// `Chipset Model:` line; its keys are the lines indented like it, displays nest deeper.
pub fn parse_displays_text(text: &str) -> Result<Vec<DisplayGpu>, AppleError> {
    let mut gpus: Vec<DisplayGpu> = Vec::new();
    let mut indent = 0usize;
    for raw in text.lines() {
        let depth = raw.len() - raw.trim_start().len();
        let Some((key, value)) = raw.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "Chipset Model" {
            indent = depth;
            gpus.push(DisplayGpu {
                name: value.to_string(),
                vendor: Vendor::from_text(value),
                cores: None,
                metal_family: None,
                vram_bytes: None,
                vram_shared_bytes: None,
                device_id: None,
                builtin: false,
            });
            continue;
        }
        let Some(gpu) = gpus.last_mut() else {
            continue;
        };
        if depth != indent {
            continue;
        }
        match key {
            "Vendor" => gpu.vendor = Vendor::from_text(value),
            "Bus" => gpu.builtin = value == "Built-In",
            "Total Number of Cores" => gpu.cores = value.parse().ok(),
            "Device ID" => gpu.device_id = Some(value.to_string()),
            "VRAM (Total)" => gpu.vram_bytes = Some(parse_size("VRAM (Total)", value)?),
            "VRAM (Dynamic, Max)" => {
                gpu.vram_shared_bytes = Some(parse_size("VRAM (Dynamic, Max)", value)?)
            }
            "Metal" | "Metal Support" | "Metal Family" => gpu.metal_family = metal_family(value),
            _ => {}
        }
    }
    if gpus.is_empty() {
        return Err(AppleError::NoGpu);
    }
    Ok(gpus)
}

/// Parses `sysctl <names>` output (`key: value` lines; `sysctl -a` works too).
pub fn parse_sysctl(text: &str) -> Result<SysctlFacts, AppleError> {
    let mut facts = SysctlFacts::default();
    let mut memsize = None;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = raw.split_once(':') else {
            return Err(AppleError::MalformedLine {
                line: i + 1,
                text: raw.to_string(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        let num = || -> Result<u64, AppleError> {
            value.parse().map_err(|_| AppleError::BadNumber {
                key: key.to_string(),
                value: value.to_string(),
            })
        };
        let small = || -> Result<u32, AppleError> {
            u32::try_from(num()?).map_err(|_| AppleError::BadNumber {
                key: key.to_string(),
                value: value.to_string(),
            })
        };
        match key {
            "hw.memsize" => memsize = Some(num()?),
            "machdep.cpu.brand_string" => facts.brand = Some(value.to_string()),
            "hw.perflevel0.physicalcpu" => facts.performance_cores = Some(small()?),
            "hw.perflevel1.physicalcpu" => facts.efficiency_cores = Some(small()?),
            "iogpu.wired_limit_mb" => facts.wired_limit_mb = Some(num()?),
            _ => {}
        }
    }
    facts.memsize = memsize.ok_or(AppleError::NoMemsize)?;
    Ok(facts)
}

/// The share of unified memory Metal lets one process wire (rule in the module docs).
pub fn metal_budget(memsize: u64, wired_limit_mb: Option<u64>) -> u64 {
    if let Some(mb) = wired_limit_mb.filter(|&mb| mb > 0) {
        return mb.saturating_mul(MIB).min(memsize);
    }
    if memsize <= 36 * GIB {
        memsize / 3 * 2
    } else {
        memsize / 4 * 3
    }
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

/// Maps what `system_profiler` and `sysctl` said to accelerators.
pub fn accelerators(gpus: &[DisplayGpu], sys: &SysctlFacts) -> Vec<Accelerator> {
    gpus.iter()
        .map(|g| {
            let unified = g.vendor == Vendor::Apple;
            let (kind, total, limit) = match (unified, g.vram_bytes) {
                (true, _) => (
                    DeviceKind::IntegratedGpu,
                    sys.memsize,
                    metal_budget(sys.memsize, sys.wired_limit_mb),
                ),
                (false, Some(vram)) => (DeviceKind::DiscreteGpu, vram, vram),
                (false, None) => {
                    let shared = g.vram_shared_bytes.unwrap_or(0);
                    (DeviceKind::IntegratedGpu, shared, shared)
                }
            };
            let id = match (&g.device_id, g.cores) {
                (Some(dev), _) => format!("metal-{}-{}", slug(g.vendor.name()), slug(dev)),
                (None, Some(cores)) => format!("metal-{}-{cores}c", slug(&g.name)),
                (None, None) => format!("metal-{}", slug(&g.name)),
            };
            Accelerator {
                id,
                name: g.name.clone(),
                vendor: g.vendor.name().to_string(),
                kind,
                backends: vec![Backend::Metal],
                precisions: vec![Precision::F32, Precision::F16],
                memory_total_bytes: total,
                memory_free_bytes: None,
                memory_budget_bytes: budget(limit, None),
                architecture: match (unified, &sys.brand) {
                    (true, Some(brand)) => Some(brand.clone()),
                    _ => Some(g.name.clone()),
                },
                compute_capability: None,
                driver_version: None,
                runtime_version: g.metal_family.clone(),
                reading: Reading::default(),
                source: "system_profiler".to_string(),
            }
        })
        .collect()
}

#[cfg(target_os = "macos")]
mod gather {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// system_profiler can take seconds on a cold start; longer means something is wrong.
    const TIMEOUT: Duration = Duration::from_secs(20);
    const OUTPUT_LIMIT: u64 = 4 << 20;

    fn run(tool: &'static str, args: &[&str]) -> Result<String, AppleError> {
        let err = |detail: String| AppleError::Tool { tool, detail };
        let mut child = Command::new(tool)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        let mut stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
        // Read on a thread so a full pipe cannot stall the child while the deadline runs.
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stdout).take(OUTPUT_LIMIT).read_to_end(&mut buf);
            buf
        });
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!("no answer within {} s", TIMEOUT.as_secs())));
                }
                Err(e) => return Err(err(e.to_string())),
            }
        }
        let bytes = reader.join().map_err(|_| err("reader panicked".into()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn probe() -> Result<Vec<Accelerator>, AppleError> {
        // Without `-n` each line names its key; an unknown one (iogpu on macOS < 14) only
        // adds a message on stderr, so the exit status is not checked.
        let sys = parse_sysctl(&run(
            "sysctl",
            &[
                "hw.memsize",
                "machdep.cpu.brand_string",
                "hw.perflevel0.physicalcpu",
                "hw.perflevel1.physicalcpu",
                "iogpu.wired_limit_mb",
            ],
        )?)?;
        let json = run("system_profiler", &["SPDisplaysDataType", "-json"])?;
        let gpus = match parse_displays_json(&json) {
            Ok(g) => g,
            // macOS before 10.15 has no -json.
            Err(AppleError::Json(_)) => {
                parse_displays_text(&run("system_profiler", &["SPDisplaysDataType"])?)?
            }
            Err(e) => return Err(e),
        };
        Ok(accelerators(&gpus, &sys))
    }
}

/// Finds the Metal GPUs of this Mac.
#[cfg(target_os = "macos")]
pub fn probe() -> Result<Vec<Accelerator>, AppleError> {
    gather::probe()
}
