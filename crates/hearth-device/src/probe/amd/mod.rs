//! AMD GPUs on the amdgpu driver: sysfs first (always there with the driver, no ROCm needed),
//! enriched with `rocm-smi --json` (product name, gfx target) when ROCm is installed.
//!
//! **Integrated or discrete.** amdgpu reports an APU's BIOS carve-out of system memory as
//! "VRAM", so the size alone does not tell. A device is integrated when its name is that of an
//! APU (a Radeon "... Graphics" without "RX", "Pro" or "Instinct", such as "AMD Radeon
//! Graphics" or "Radeon 780M Graphics"), or, without a name, when it reports no VRAM chip
//! vendor (`mem_info_vram_vendor` absent or "unknown": there is no memory chip of its own) and
//! its VRAM is under 4 GiB. Everything else is discrete. An integrated GPU's budget is still
//! its free carve-out: what else it may borrow through GTT is host memory, which the CPU's
//! record already counts.

pub mod rocm_smi;
pub mod sysfs;

use super::{budget, command, Accelerator, Backend, DeviceKind, Precision, Reading};
use std::path::Path;
use std::time::Duration;

pub use rocm_smi::{parse_rocm_smi, RocmSmiError};
pub use sysfs::{read_sysfs, SysfsProbeError};

/// What one AMD GPU reported, before any derivation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AmdFacts {
    /// The DRM card name ("card0") or the rocm-smi key, for messages only.
    pub card: String,
    /// PCI address, lower-case ("0000:07:00.0").
    pub pci_address: Option<String>,
    /// PCI device id ("0x73df").
    pub device_id: Option<String>,
    /// The 64-bit serial some boards expose (`unique_id`).
    pub unique_id: Option<String>,
    pub name: Option<String>,
    /// gfx target ("gfx1031"), from rocm-smi.
    pub architecture: Option<String>,
    pub vram_total_bytes: u64,
    pub vram_used_bytes: Option<u64>,
    /// The VRAM chip maker ("samsung"); APUs have none.
    pub vram_vendor: Option<String>,
    pub driver_version: Option<String>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// Busy fraction, 0..=1.
    pub utilisation: Option<f64>,
}

/// The AMD probe failed although the platform is present.
#[derive(Debug, thiserror::Error)]
pub enum AmdError {
    #[error("amdgpu sysfs: {0}")]
    Sysfs(#[from] SysfsProbeError),
    #[error(transparent)]
    Command(#[from] command::CommandError),
    #[error("rocm-smi: {0}")]
    RocmSmi(#[from] RocmSmiError),
}

const ROCM_SMI_TIMEOUT: Duration = Duration::from_secs(10);
const ROCM_SMI_LIMIT: usize = 4 << 20;
const ROCM_SMI_ARGS: &[&str] = &[
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showtemp",
    "--showpower",
    "--showuse",
    "--showdriverversion",
    "--showuniqueid",
    "--showbus",
    "--json",
];

/// Finds AMD GPUs under `/sys/class/drm`, adding what rocm-smi knows when it is installed.
/// No amdgpu device is `Ok(vec![])`, and rocm-smi is then not run.
pub fn probe() -> Result<Vec<Accelerator>, AmdError> {
    let found = read_sysfs(Path::new("/sys/class/drm"))?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let extra = match command::run("rocm-smi", ROCM_SMI_ARGS, ROCM_SMI_TIMEOUT, ROCM_SMI_LIMIT)? {
        Some(json) => parse_rocm_smi(&json)?,
        None => Vec::new(),
    };
    let source = if extra.is_empty() {
        "amdgpu-sysfs"
    } else {
        "amdgpu-sysfs+rocm-smi"
    };
    Ok(merge(found, &extra)
        .iter()
        .map(|f| to_accelerator(f, source))
        .collect())
}

/// Fills what sysfs lacks (name, gfx target, unique id, driver version) from the rocm-smi
/// entry at the same PCI address; sysfs readings win where both have one.
pub fn merge(mut sysfs: Vec<AmdFacts>, rocm: &[AmdFacts]) -> Vec<AmdFacts> {
    for dev in &mut sysfs {
        let Some(addr) = dev.pci_address.as_deref() else {
            continue;
        };
        let Some(other) = rocm.iter().find(|r| r.pci_address.as_deref() == Some(addr)) else {
            continue;
        };
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut dev.name, &other.name);
        fill(&mut dev.architecture, &other.architecture);
        fill(&mut dev.unique_id, &other.unique_id);
        fill(&mut dev.driver_version, &other.driver_version);
        fill(&mut dev.vram_vendor, &other.vram_vendor);
    }
    sysfs
}

/// Whether the device shares the host's memory; the rule is in the module documentation.
pub fn is_integrated(f: &AmdFacts) -> bool {
    if let Some(name) = f.name.as_deref() {
        let lower = name.to_ascii_lowercase();
        let dgpu_word = [
            "rx ",
            "rx\u{a0}",
            " pro ",
            "instinct",
            "radeon pro",
            "[radeon rx",
        ]
        .iter()
        .any(|w| lower.contains(w));
        if lower.ends_with("graphics") && !dgpu_word {
            return true;
        }
    }
    let no_chip = f
        .vram_vendor
        .as_deref()
        .is_none_or(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("unknown"));
    no_chip && f.vram_total_bytes < 4 << 30
}

/// Formats by gfx target: f16 on every GPU amdgpu drives; int8 dot products (`v_dot4_i32_i8`)
/// from gfx906 (Vega 20), CDNA and RDNA 2 on; bf16 arithmetic on CDNA 2+ and RDNA 3+.
/// Without a target only what every amdgpu device has is claimed.
pub fn precisions_for_gfx(gfx: Option<&str>) -> Vec<Precision> {
    let mut out = vec![Precision::F32, Precision::F16];
    let Some(target) = gfx.and_then(|g| g.strip_prefix("gfx")) else {
        return out;
    };
    // gfx targets are a major version followed by two hex digits (stepping and minor).
    let split = target.len().saturating_sub(2);
    let (major, minor) = (target.get(..split), target.get(split..));
    let (Some(Ok(major)), Some(minor)) = (major.map(str::parse::<u32>), minor) else {
        return out;
    };
    let minor = u32::from_str_radix(minor, 16).unwrap_or(0);
    let bf16 = (major == 9 && minor >= 0x0a) || major >= 11;
    let int8 = (major == 9 && minor >= 0x06) || (major == 10 && minor >= 0x11) || major >= 11;
    if bf16 {
        out.push(Precision::Bf16);
    }
    if int8 {
        out.push(Precision::Int8Dot);
    }
    out
}

/// The one conversion both sources share.
pub fn to_accelerator(f: &AmdFacts, source: &str) -> Accelerator {
    // unique_id is the board's serial where present; the PCI address is stable while the card
    // stays in its slot; the device id and card name only as a last resort.
    let id = match (&f.unique_id, &f.pci_address) {
        (Some(u), _) => format!("rocm-{}", u.to_ascii_lowercase()),
        (None, Some(addr)) => format!("rocm-pci-{addr}"),
        (None, None) => format!(
            "rocm-{}-{}",
            f.device_id.as_deref().unwrap_or("unknown"),
            f.card
        ),
    };
    let name = f.name.clone().unwrap_or_else(|| {
        format!(
            "AMD GPU {}",
            f.device_id.as_deref().unwrap_or(f.card.as_str())
        )
    });
    let free = f
        .vram_used_bytes
        .map(|used| f.vram_total_bytes.saturating_sub(used));
    Accelerator {
        id,
        name,
        vendor: "AMD".to_string(),
        kind: if is_integrated(f) {
            DeviceKind::IntegratedGpu
        } else {
            DeviceKind::DiscreteGpu
        },
        backends: vec![Backend::Rocm],
        precisions: precisions_for_gfx(f.architecture.as_deref()),
        memory_total_bytes: f.vram_total_bytes,
        memory_free_bytes: free,
        memory_budget_bytes: budget(f.vram_total_bytes, free),
        architecture: f.architecture.clone(),
        compute_capability: None,
        driver_version: f.driver_version.clone(),
        runtime_version: None,
        reading: Reading {
            temperature_c: f.temperature_c,
            power_w: f.power_w,
            power_limit_w: f.power_limit_w,
            utilisation: f.utilisation,
            battery_level: None,
            charging: None,
        },
        source: source.to_string(),
    }
}
