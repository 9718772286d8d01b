//! Compute devices other than the host CPU, one probe per platform.
//!
//! Every probe has the same shape: a thin gatherer that runs a tool, reads sysfs or calls a
//! library loaded at run time, and a pure parser from what was gathered to [`Accelerator`]s,
//! tested on captured outputs under `tests/fixtures/`. A probe whose platform is absent (no
//! driver, no tool, another OS) returns nothing and no warning; a probe whose platform is
//! present but answers nonsense returns a [`ProbeWarning`] that names the source.

pub mod amd;
pub mod command;
pub mod nvidia;

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod android;
pub mod apple;
pub mod vulkan;
pub mod windows;

/// What a device can run hearth's layers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    Rocm,
    Metal,
    Vulkan,
    DirectMl,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Rocm => "rocm",
            Backend::Metal => "metal",
            Backend::Vulkan => "vulkan",
            Backend::DirectMl => "directml",
        }
    }
}

/// Number formats a device computes in natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Precision {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    Bf16,
    /// An 8-bit integer dot-product instruction (tensor cores' int8, VNNI, `sdot`, DP4a).
    #[serde(rename = "int8-dot")]
    Int8Dot,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8Dot => "int8-dot",
        }
    }
}

/// How the device relates to the host's memory, which decides what its memory budget means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// Own memory (VRAM) behind a bus.
    DiscreteGpu,
    /// Shares the host's memory (Apple silicon, laptop and phone GPUs).
    IntegratedGpu,
    VirtualGpu,
    /// A CPU seen through a GPU API (Mesa's lavapipe, SwiftShader).
    SoftwareCpu,
    Other,
}

/// Live readings that came with the probe; each is absent where the source has none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// Busy fraction, 0..=1.
    pub utilisation: Option<f64>,
    /// Battery charge 0..=1 and whether it is charging, for devices that run on one.
    pub battery_level: Option<f64>,
    pub charging: Option<bool>,
}

/// A compute device found by a platform probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accelerator {
    /// Stable across restarts: built from what identifies the hardware (UUID, PCI address,
    /// vendor and device ids), never from an enumeration index alone.
    pub id: String,
    pub name: String,
    pub vendor: String,
    pub kind: DeviceKind,
    pub backends: Vec<Backend>,
    pub precisions: Vec<Precision>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: Option<u64>,
    /// What hearth may use: free memory where known, else the total.
    pub memory_budget_bytes: u64,
    /// e.g. "Hopper", "gfx1100", "Apple M2 Pro".
    pub architecture: Option<String>,
    /// CUDA compute capability ("9.0"), where there is one.
    pub compute_capability: Option<String>,
    pub driver_version: Option<String>,
    /// The runtime API version: CUDA, ROCm, Vulkan or Metal family.
    pub runtime_version: Option<String>,
    pub reading: Reading,
    /// Which gatherer found it: "nvml", "nvidia-smi", "amdgpu-sysfs", "rocm-smi", "vulkan", …
    pub source: String,
}

/// A probe whose platform is present but whose answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeWarning {
    pub source: &'static str,
    pub message: String,
}

impl fmt::Display for ProbeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

/// What all probes found on this machine.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub devices: Vec<Accelerator>,
    pub warnings: Vec<ProbeWarning>,
}

impl Discovery {
    pub(crate) fn absorb<E: fmt::Display>(
        &mut self,
        source: &'static str,
        found: Result<Vec<Accelerator>, E>,
    ) {
        match found {
            Ok(devices) => self.devices.extend(devices),
            Err(e) => self.warnings.push(ProbeWarning {
                source,
                message: e.to_string(),
            }),
        }
    }
}

/// Runs every probe compiled for this platform.
pub fn discover() -> Discovery {
    let mut found = Discovery::default();
    found.absorb("nvidia", nvidia::probe());
    found.absorb("amd", amd::probe());
    found.absorb("vulkan", vulkan::probe());
    #[cfg(target_os = "macos")]
    found.absorb("metal", apple::probe());
    #[cfg(windows)]
    found.absorb("dxgi", windows::probe());
    // Also on Linux: ARM boards expose the same kgsl/mali nodes; elsewhere it finds nothing.
    #[cfg(any(target_os = "android", target_os = "linux"))]
    found.absorb("android-sysfs", android::probe(std::path::Path::new("/")));
    fold_vulkan_twins(&mut found.devices);
    found
}

/// A GPU seen both by its vendor's probe and through Vulkan is one device: the Vulkan entry
/// is dropped and Vulkan added to the vendor entry's backends, which keeps the richer facts
/// (free memory, live readings). Without this a planner would count its memory twice. Matched
/// by hardware UUID, which NVIDIA reports alike to NVML, nvidia-smi and Vulkan (seen on an
/// H200, driver 580); other vendors' ids do not carry it, so their twins stay apart.
pub fn fold_vulkan_twins(devices: &mut Vec<Accelerator>) {
    let uuid_of = |a: &Accelerator| -> Option<String> {
        let hex =
            a.id.strip_prefix("cuda-gpu-")
                .or_else(|| a.id.strip_prefix("vk-"))?;
        let digits: String = hex.chars().filter(|c| *c != '-').collect();
        (digits.len() == 32 && digits.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| digits.to_ascii_lowercase())
    };
    let mut twins = Vec::new();
    for (i, vk) in devices.iter().enumerate() {
        if vk.backends != [Backend::Vulkan] {
            continue;
        }
        let Some(uuid) = uuid_of(vk) else { continue };
        let vendor = devices.iter().position(|d| {
            !d.backends.contains(&Backend::Vulkan) && uuid_of(d) == Some(uuid.clone())
        });
        if let Some(v) = vendor {
            twins.push((i, v));
        }
    }
    for &(_, v) in &twins {
        devices[v].backends.push(Backend::Vulkan);
    }
    let drop: Vec<usize> = twins.iter().map(|&(i, _)| i).collect();
    let mut index = 0;
    devices.retain(|_| {
        let keep = !drop.contains(&index);
        index += 1;
        keep
    });
}

/// `free` when the source reports it, else `total`: the budget a planner may hand out.
pub(crate) fn budget(total: u64, free: Option<u64>) -> u64 {
    free.map_or(total, |f| f.min(total))
}
