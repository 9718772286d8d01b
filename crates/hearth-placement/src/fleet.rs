//! Devices and links with their measured figures, parsed and validated from the fleet TOML
//! format of `../shared/fleets/README.md`.

use crate::error::FleetError;
use serde::Deserialize;
use std::fmt;

/// Bitsets of devices are four words wide, which bounds the fleet size.
pub const MAX_DEVICES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Cpu,
    Cuda,
    Rocm,
    Metal,
    Vulkan,
    DirectMl,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        Some(match s {
            "cpu" => Backend::Cpu,
            "cuda" => Backend::Cuda,
            "rocm" => Backend::Rocm,
            "metal" => Backend::Metal,
            "vulkan" => Backend::Vulkan,
            "directml" => Backend::DirectMl,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
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

/// GGUF tensor types the engine can run, per backend. Every backend shares the CPU engine's
/// list today; narrowing one is a one-line change here.
const ENGINE_TYPES: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
];

impl Backend {
    pub fn runs_tensor_type(self, ggml_type: &str) -> bool {
        let table = match self {
            Backend::Cpu
            | Backend::Cuda
            | Backend::Rocm
            | Backend::Metal
            | Backend::Vulkan
            | Backend::DirectMl => ENGINE_TYPES,
        };
        table.iter().any(|t| t.eq_ignore_ascii_case(ggml_type))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "f32" => Precision::F32,
            "f16" => Precision::F16,
            "bf16" => Precision::Bf16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn bytes(self) -> u32 {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    pub backend: Backend,
    pub memory_gib: f64,
    pub bandwidth_gbs: f64,
    pub tflops: f64,
    pub precisions: Vec<Precision>,
    pub thermal_headroom: f64,
    pub on_battery: bool,
}

impl Device {
    /// Bytes the model may use here: `memory_gib × 2^30`, rounded down.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * (1u64 << 30) as f64) as u64
    }

    /// Weight bytes read per second while decoding, thermal headroom applied.
    pub fn read_rate(&self) -> f64 {
        self.bandwidth_gbs * 1e9 * self.thermal_headroom
    }

    /// FLOP/s while prefilling, thermal headroom applied.
    pub fn flop_rate(&self) -> f64 {
        self.tflops * 1e12 * self.thermal_headroom
    }

    pub fn supports(&self, p: Precision) -> bool {
        self.precisions.contains(&p)
    }
}

/// An undirected link between devices `a` and `b` (indices into [`Fleet::devices`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    pub latency_ms: f64,
    pub bandwidth_gbps: f64,
}

impl Link {
    /// Seconds to send `bytes` one way over this link.
    pub fn transfer_s(&self, bytes: f64) -> f64 {
        self.latency_ms / 1e3 + bytes * 8.0 / (self.bandwidth_gbps * 1e9)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    devices: Vec<Device>,
    links: Vec<Link>,
    /// `adjacency[a * n + b]`: index into `links`.
    adjacency: Vec<Option<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default)]
    device: Vec<RawDevice>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: String,
    backend: String,
    memory_gib: f64,
    bandwidth_gbs: f64,
    tflops: f64,
    precisions: Vec<String>,
    thermal_headroom: Option<f64>,
    on_battery: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: String,
    b: String,
    latency_ms: f64,
    bandwidth_gbps: f64,
}

fn positive(owner: &str, field: &'static str, value: f64) -> Result<f64, FleetError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(FleetError::BadFigure {
            owner: owner.to_string(),
            field,
            value,
            rule: "a finite number > 0",
        })
    }
}

impl Fleet {
    /// Parses and validates a fleet file's text.
    pub fn from_toml(text: &str) -> Result<Fleet, FleetError> {
        let raw: RawFleet = toml::from_str(text).map_err(|e| FleetError::Syntax(e.to_string()))?;
        let mut devices = Vec::with_capacity(raw.device.len());
        for (index, d) in raw.device.into_iter().enumerate() {
            if d.name.trim().is_empty() {
                return Err(FleetError::EmptyName { index });
            }
            let owner = format!("device `{}`", d.name);
            let backend = Backend::parse(&d.backend).ok_or_else(|| FleetError::UnknownBackend {
                device: d.name.clone(),
                value: d.backend.clone(),
            })?;
            let precisions = d
                .precisions
                .iter()
                .map(|p| {
                    Precision::parse(p).ok_or_else(|| FleetError::UnknownPrecision {
                        device: d.name.clone(),
                        value: p.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            devices.push(Device {
                backend,
                memory_gib: positive(&owner, "memory_gib", d.memory_gib)?,
                bandwidth_gbs: positive(&owner, "bandwidth_gbs", d.bandwidth_gbs)?,
                tflops: positive(&owner, "tflops", d.tflops)?,
                precisions,
                thermal_headroom: d.thermal_headroom.unwrap_or(1.0),
                on_battery: d.on_battery.unwrap_or(false),
                name: d.name,
            });
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].iter().any(|o| o.name == d.name) {
                return Err(FleetError::DuplicateDevice {
                    name: d.name.clone(),
                });
            }
        }
        let index_of = |name: &str| devices.iter().position(|d| d.name == name);
        let mut links = Vec::with_capacity(raw.link.len());
        for (index, l) in raw.link.iter().enumerate() {
            let a = index_of(&l.a).ok_or_else(|| FleetError::UnknownDevice {
                index,
                field: "a",
                name: l.a.clone(),
            })?;
            let b = index_of(&l.b).ok_or_else(|| FleetError::UnknownDevice {
                index,
                field: "b",
                name: l.b.clone(),
            })?;
            links.push(Link {
                a,
                b,
                latency_ms: l.latency_ms,
                bandwidth_gbps: l.bandwidth_gbps,
            });
        }
        Fleet::new(devices, links)
    }

    /// Validates devices and links built in code (tests, probes) the same way as a file.
    pub fn new(devices: Vec<Device>, links: Vec<Link>) -> Result<Fleet, FleetError> {
        if devices.is_empty() {
            return Err(FleetError::NoDevices);
        }
        if devices.len() > MAX_DEVICES {
            return Err(FleetError::TooManyDevices {
                count: devices.len(),
                max: MAX_DEVICES,
            });
        }
        for (i, d) in devices.iter().enumerate() {
            if d.name.trim().is_empty() {
                return Err(FleetError::EmptyName { index: i });
            }
            if devices[..i].iter().any(|o| o.name == d.name) {
                return Err(FleetError::DuplicateDevice {
                    name: d.name.clone(),
                });
            }
            let owner = format!("device `{}`", d.name);
            positive(&owner, "memory_gib", d.memory_gib)?;
            positive(&owner, "bandwidth_gbs", d.bandwidth_gbs)?;
            positive(&owner, "tflops", d.tflops)?;
            let h = d.thermal_headroom;
            if !(h.is_finite() && h > 0.0 && h <= 1.0) {
                return Err(FleetError::BadFigure {
                    owner,
                    field: "thermal_headroom",
                    value: h,
                    rule: "in (0, 1]",
                });
            }
            if d.precisions.is_empty() {
                return Err(FleetError::NoPrecisions {
                    device: d.name.clone(),
                });
            }
        }
        let n = devices.len();
        let mut adjacency = vec![None; n * n];
        for (index, l) in links.iter().enumerate() {
            for (field, i) in [("a", l.a), ("b", l.b)] {
                if i >= n {
                    return Err(FleetError::UnknownDevice {
                        index,
                        field,
                        name: format!("#{i}"),
                    });
                }
            }
            if l.a == l.b {
                return Err(FleetError::SelfLink {
                    index,
                    name: devices[l.a].name.clone(),
                });
            }
            let owner = format!(
                "link #{index} ({} - {})",
                devices[l.a].name, devices[l.b].name
            );
            positive(&owner, "latency_ms", l.latency_ms)?;
            positive(&owner, "bandwidth_gbps", l.bandwidth_gbps)?;
            if adjacency[l.a * n + l.b].is_some() {
                return Err(FleetError::DuplicateLink {
                    index,
                    a: devices[l.a].name.clone(),
                    b: devices[l.b].name.clone(),
                });
            }
            adjacency[l.a * n + l.b] = Some(index as u32);
            adjacency[l.b * n + l.a] = Some(index as u32);
        }
        Ok(Fleet {
            devices,
            links,
            adjacency,
        })
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn link(&self, a: usize, b: usize) -> Option<&Link> {
        let n = self.devices.len();
        self.adjacency
            .get(a * n + b)
            .copied()
            .flatten()
            .map(|i| &self.links[i as usize])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[device]]
name = "a"
backend = "cuda"
memory_gib = 8.0
bandwidth_gbs = 500.0
tflops = 20.0
precisions = ["f32", "f16"]

[[device]]
name = "b"
backend = "cpu"
memory_gib = 16.0
bandwidth_gbs = 50.0
tflops = 1.0
precisions = ["f32"]
thermal_headroom = 0.5
on_battery = true

[[link]]
a = "a"
b = "b"
latency_ms = 1.0
bandwidth_gbps = 1.0
"#;

    #[test]
    fn parses_devices_links_and_defaults() {
        let f = Fleet::from_toml(TWO).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.devices()[0].thermal_headroom, 1.0);
        assert!(!f.devices()[0].on_battery);
        assert!(f.devices()[1].on_battery);
        assert_eq!(f.devices()[0].memory_bytes(), 8 << 30);
        assert!(f.link(1, 0).is_some());
        assert!((f.link(0, 1).unwrap().transfer_s(125.0) - (1e-3 + 1e-6)).abs() < 1e-12);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = TWO.replace("memory_gib = 8.0", "memory_gib = -1.0");
        let e = Fleet::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("device `a`") && e.contains("memory_gib"), "{e}");
        let bad = TWO.replace("b = \"b\"", "b = \"c\"");
        let e = Fleet::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown device `c`"), "{e}");
        let bad = TWO.replace("name = \"b\"", "name = \"a\"");
        assert!(matches!(
            Fleet::from_toml(&bad),
            Err(FleetError::DuplicateDevice { .. })
        ));
        let bad = TWO.replace("thermal_headroom = 0.5", "thermal_headroom = 1.5");
        let e = Fleet::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("thermal_headroom"), "{e}");
        let bad = TWO.replace("latency_ms = 1.0", "latency_ms = 0.0");
        let e = Fleet::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("latency_ms"), "{e}");
        let bad = TWO.replace("\"cuda\"", "\"tpu\"");
        assert!(matches!(
            Fleet::from_toml(&bad),
            Err(FleetError::UnknownBackend { .. })
        ));
        assert!(matches!(Fleet::from_toml(""), Err(FleetError::NoDevices)));
    }
}
