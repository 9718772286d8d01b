//! The CPU as a compute device: a pure parser of `/proc/cpuinfo` and `/proc/meminfo` text, the
//! device record built from it, and a thin gatherer that reads the real files.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// A malformed `/proc/cpuinfo` or `/proc/meminfo`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuInfoError {
    #[error("cpuinfo lists no processors")]
    NoProcessors,
    #[error("{file} line {line}: expected `key: value`, found {text:?}")]
    MalformedLine {
        file: &'static str,
        line: usize,
        text: String,
    },
    #[error("{file} line {line}: {key} is not a number: {value:?}")]
    BadNumber {
        file: &'static str,
        line: usize,
        key: String,
        value: String,
    },
    #[error("{file} has no {key}")]
    Missing {
        file: &'static str,
        key: &'static str,
    },
    #[error("meminfo line {line}: unit {unit:?} is not kB")]
    BadUnit { line: usize, unit: String },
}

/// A `/proc` file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] CpuInfoError),
}

/// The instruction-set extensions the kernels care about, as the kernel names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimdFlags {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub avx_vnni: bool,
    pub neon: bool,
    /// aarch64 half-precision arithmetic (`fphp` and `asimdhp`).
    pub fp16: bool,
    /// aarch64 dot-product instructions (`sdot`/`udot`).
    pub asimddp: bool,
}

impl SimdFlags {
    fn from_words<'a>(words: impl Iterator<Item = &'a str>) -> SimdFlags {
        let set: BTreeSet<&str> = words.collect();
        let has = |w: &str| set.contains(w);
        SimdFlags {
            avx2: has("avx2"),
            fma: has("fma"),
            f16c: has("f16c"),
            avx512f: has("avx512f"),
            avx512bw: has("avx512bw"),
            avx512vl: has("avx512vl"),
            // Linux spells it `avx512_vnni`; some tools drop the underscore.
            avx512_vnni: has("avx512_vnni") || has("avx512vnni"),
            avx512_bf16: has("avx512_bf16") || has("avx512bf16"),
            avx_vnni: has("avx_vnni") || has("avxvnni"),
            neon: has("asimd") || has("neon"),
            fp16: has("fphp") && has("asimdhp"),
            asimddp: has("asimddp"),
        }
    }

    /// The names of the flags that are set, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.f16c, "f16c"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512_vnni, "avx512_vnni"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.avx_vnni, "avx_vnni"),
            (self.neon, "neon"),
            (self.fp16, "fp16"),
            (self.asimddp, "asimddp"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// What `/proc` says about the CPU and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model_name: String,
    pub logical_cores: u32,
    pub physical_cores: u32,
    pub simd: SimdFlags,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
}

/// The facts of `/proc/cpuinfo` alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFacts {
    pub model_name: String,
    pub logical_cores: u32,
    pub physical_cores: u32,
    pub simd: SimdFlags,
}

/// The two `/proc/meminfo` figures a memory budget needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFacts {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Default)]
struct Processor {
    physical_id: Option<u32>,
    core_id: Option<u32>,
    cpu_cores: Option<u32>,
}

fn number(file: &'static str, line: usize, key: &str, value: &str) -> Result<u32, CpuInfoError> {
    let v = value.trim();
    // aarch64 kernels print identifiers such as `CPU part` in hex.
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    parsed.ok_or_else(|| CpuInfoError::BadNumber {
        file,
        line,
        key: key.to_string(),
        value: v.to_string(),
    })
}

/// Parses `/proc/cpuinfo` from x86-64 or aarch64 Linux.
pub fn parse_cpuinfo(text: &str) -> Result<CpuFacts, CpuInfoError> {
    const FILE: &str = "cpuinfo";
    let mut procs: Vec<Processor> = Vec::new();
    let mut model_name: Option<String> = None;
    let mut implementer: Option<String> = None;
    let mut part: Option<String> = None;
    let mut flags: Option<SimdFlags> = None;

    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = raw.split_once(':') else {
            return Err(CpuInfoError::MalformedLine {
                file: FILE,
                line,
                text: raw.to_string(),
            });
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "processor" => {
                number(FILE, line, key, value)?;
                procs.push(Processor::default());
            }
            "model name" if model_name.is_none() && !value.is_empty() => {
                model_name = Some(value.to_string())
            }
            "CPU implementer" if implementer.is_none() => implementer = Some(value.to_string()),
            "CPU part" if part.is_none() => part = Some(value.to_string()),
            // x86 calls them `flags`, aarch64 `Features`; all processors of a machine agree.
            "flags" | "Features" if flags.is_none() => {
                flags = Some(SimdFlags::from_words(value.split_whitespace()))
            }
            "physical id" | "core id" | "cpu cores" => {
                let n = number(FILE, line, key, value)?;
                let Some(p) = procs.last_mut() else {
                    return Err(CpuInfoError::MalformedLine {
                        file: FILE,
                        line,
                        text: raw.to_string(),
                    });
                };
                match key {
                    "physical id" => p.physical_id = Some(n),
                    "core id" => p.core_id = Some(n),
                    _ => p.cpu_cores = Some(n),
                }
            }
            _ => {}
        }
    }

    if procs.is_empty() {
        return Err(CpuInfoError::NoProcessors);
    }
    let logical_cores = procs.len() as u32;
    let physical_cores = physical_cores(&procs).unwrap_or(logical_cores);
    let model_name = match (model_name, implementer, part) {
        (Some(name), _, _) => name,
        // aarch64 kernels print no model name; the identifiers are what there is.
        (None, Some(imp), Some(part)) => format!("aarch64 implementer {imp} part {part}"),
        _ => "unknown CPU".to_string(),
    };
    Ok(CpuFacts {
        model_name,
        logical_cores,
        physical_cores,
        simd: flags.unwrap_or_default(),
    })
}

/// Distinct (package, core) pairs where every processor names both, else `cpu cores` per
/// package; `None` where the file says nothing about topology (aarch64, most VMs' ARM guests).
fn physical_cores(procs: &[Processor]) -> Option<u32> {
    let pairs: Option<BTreeSet<(u32, u32)>> = procs
        .iter()
        .map(|p| Some((p.physical_id?, p.core_id?)))
        .collect();
    if let Some(pairs) = pairs {
        return Some(pairs.len() as u32);
    }
    let packages: BTreeSet<u32> = procs.iter().filter_map(|p| p.physical_id).collect();
    let per_package = procs.iter().find_map(|p| p.cpu_cores)?;
    Some(per_package * (packages.len().max(1) as u32))
}

/// Parses `MemTotal` and `MemAvailable` from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemFacts, CpuInfoError> {
    const FILE: &str = "meminfo";
    let mut total = None;
    let mut available = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = raw.split_once(':') else {
            return Err(CpuInfoError::MalformedLine {
                file: FILE,
                line,
                text: raw.to_string(),
            });
        };
        let key = key.trim();
        if key != "MemTotal" && key != "MemAvailable" {
            continue;
        }
        let mut parts = value.split_whitespace();
        let num = parts.next().unwrap_or("");
        let kib: u64 = num.parse().map_err(|_| CpuInfoError::BadNumber {
            file: FILE,
            line,
            key: key.to_string(),
            value: num.to_string(),
        })?;
        match parts.next() {
            Some("kB") => {}
            other => {
                return Err(CpuInfoError::BadUnit {
                    line,
                    unit: other.unwrap_or("").to_string(),
                })
            }
        }
        let bytes = kib.saturating_mul(1024);
        if key == "MemTotal" {
            total = Some(bytes);
        } else {
            available = Some(bytes);
        }
    }
    Ok(MemFacts {
        total_bytes: total.ok_or(CpuInfoError::Missing {
            file: FILE,
            key: "MemTotal",
        })?,
        available_bytes: available.ok_or(CpuInfoError::Missing {
            file: FILE,
            key: "MemAvailable",
        })?,
    })
}

/// Parses both files into one [`CpuInfo`].
pub fn parse(cpuinfo: &str, meminfo: &str) -> Result<CpuInfo, CpuInfoError> {
    let cpu = parse_cpuinfo(cpuinfo)?;
    let mem = parse_meminfo(meminfo)?;
    Ok(CpuInfo {
        model_name: cpu.model_name,
        logical_cores: cpu.logical_cores,
        physical_cores: cpu.physical_cores,
        simd: cpu.simd,
        mem_total_bytes: mem.total_bytes,
        mem_available_bytes: mem.available_bytes,
    })
}

/// Reads `cpuinfo` and `meminfo` under `proc_dir` (normally `/proc`) and parses them.
pub fn probe_at(proc_dir: &Path) -> Result<CpuInfo, ProbeError> {
    let read = |name: &str| {
        let path = proc_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ProbeError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    Ok(parse(&read("cpuinfo")?, &read("meminfo")?)?)
}

/// This machine's CPU.
pub fn probe() -> Result<CpuInfo, ProbeError> {
    probe_at(Path::new("/proc"))
}

/// FNV-1a: a hash whose value is fixed by its definition, so ids survive toolchain upgrades
/// (std's `DefaultHasher` promises no such thing).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A compute device as the rest of hearth sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Stable across restarts and memory changes: the CPU model and its core count.
    pub id: String,
    pub name: String,
    pub backends: Vec<String>,
    pub logical_cores: u32,
    pub physical_cores: u32,
    pub simd: Vec<String>,
    pub precisions: Vec<String>,
    pub memory_total_bytes: u64,
    /// What the device may use: memory available now, not installed memory.
    pub memory_budget_bytes: u64,
}

impl CpuInfo {
    pub fn device_id(&self) -> String {
        let key = format!("{}\u{0}{}", self.model_name, self.logical_cores);
        format!("cpu-{:016x}", fnv1a(key.as_bytes()))
    }

    /// The number formats the CPU computes in natively; `int8-dot` means an 8-bit integer dot
    /// product instruction (VNNI or `sdot`), which the quantized kernels lean on.
    pub fn precisions(&self) -> Vec<String> {
        let s = &self.simd;
        let mut p = vec!["f32"];
        if s.f16c || s.fp16 {
            p.push("f16");
        }
        if s.avx512_bf16 {
            p.push("bf16");
        }
        if s.avx512_vnni || s.avx_vnni || s.asimddp {
            p.push("int8-dot");
        }
        p.into_iter().map(String::from).collect()
    }

    /// Changes whenever a measurement taken on the old hardware might no longer hold.
    pub fn fingerprint(&self) -> String {
        let gib = (self.mem_total_bytes + (1 << 29)) >> 30;
        format!(
            "{}|{} threads|{} GiB|{}",
            self.model_name,
            self.logical_cores,
            gib,
            self.simd.names().join(",")
        )
    }

    pub fn record(&self) -> DeviceRecord {
        DeviceRecord {
            id: self.device_id(),
            name: self.model_name.clone(),
            backends: vec!["cpu".to_string()],
            logical_cores: self.logical_cores,
            physical_cores: self.physical_cores,
            simd: self.simd.names().into_iter().map(String::from).collect(),
            precisions: self.precisions(),
            memory_total_bytes: self.mem_total_bytes,
            memory_budget_bytes: self.mem_available_bytes,
        }
    }
}
