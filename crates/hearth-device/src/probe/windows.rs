//! DirectML / DirectX 12 adapters on Windows.
//!
//! The gatherer enumerates DXGI adapters (`IDXGIFactory1::EnumAdapters1` →
//! `DXGI_ADAPTER_DESC1`) through a few hand-declared COM vtable slots, so no bindings crate
//! is needed. When DXGI fails it falls back to the text of `dxdiag /t`, which is slow (seconds)
//! and has no LUID or flags. Both land in [`AdapterDesc`], mapped to [`Accelerator`] by a pure
//! function. Free VRAM (`IDXGIAdapter3::QueryVideoMemoryInfo`) is not read: the budget is the
//! adapter's size.

use super::{Accelerator, Backend, DeviceKind, Precision, Reading};

const MIB: u64 = 1 << 20;
/// iGPUs report a small carve-out (typically 128 MiB) as dedicated memory; cards have GiBs.
const DISCRETE_MIN_DEDICATED: u64 = 512 * MIB;
/// `DXGI_ADAPTER_FLAG_REMOTE` and `DXGI_ADAPTER_FLAG_SOFTWARE`.
pub const FLAG_REMOTE: u32 = 1;
pub const FLAG_SOFTWARE: u32 = 2;
/// Microsoft's vendor id and the Basic Render Driver (WARP), which dxdiag lists without flags.
const MICROSOFT: u32 = 0x1414;
const BASIC_RENDER: u32 = 0x008c;

/// A DXGI or dxdiag answer that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowsError {
    #[error("dxdiag output has no Display Devices section")]
    NoDisplaySection,
    #[error("dxdiag line {line}: {key} is not valid: {value:?}")]
    BadValue {
        line: usize,
        key: &'static str,
        value: String,
    },
    #[error("dxdiag display device ending at line {line} has no {key}")]
    Missing { line: usize, key: &'static str },
    #[error("DXGI {call} failed with HRESULT {hresult:#010x}")]
    Dxgi { call: &'static str, hresult: u32 },
    #[error("running dxdiag: {0}")]
    Tool(String),
}

/// The fields of `DXGI_ADAPTER_DESC1` hearth uses, plus the driver version dxdiag adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterDesc {
    pub description: String,
    pub vendor_id: u32,
    pub device_id: u32,
    pub subsys_id: u32,
    pub revision: u32,
    pub dedicated_video_memory: u64,
    pub dedicated_system_memory: u64,
    pub shared_system_memory: u64,
    /// Changes at every boot: used only to tell identical adapters apart within one run.
    pub luid: Option<u64>,
    pub flags: u32,
    pub driver_version: Option<String>,
}

impl AdapterDesc {
    pub fn is_software(&self) -> bool {
        self.flags & FLAG_SOFTWARE != 0
            || (self.vendor_id == MICROSOFT && self.device_id == BASIC_RENDER)
    }
}

fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 | 0x1022 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x5143 => "Qualcomm".into(),
        MICROSOFT => "Microsoft".into(),
        other => format!("{other:#06x}"),
    }
}

/// 64-bit FNV-1a, so the description enters the id in fixed width.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Maps one adapter to an accelerator; `id` ignores the LUID, which changes at every boot.
pub fn to_accelerator(d: &AdapterDesc) -> Accelerator {
    let kind = if d.is_software() {
        DeviceKind::SoftwareCpu
    } else if d.flags & FLAG_REMOTE != 0 {
        DeviceKind::VirtualGpu
    } else if d.dedicated_video_memory >= DISCRETE_MIN_DEDICATED {
        DeviceKind::DiscreteGpu
    } else {
        DeviceKind::IntegratedGpu
    };
    // A discrete card computes from its VRAM; everything else from what it may borrow.
    let total = match kind {
        DeviceKind::DiscreteGpu => d.dedicated_video_memory,
        _ => d
            .dedicated_video_memory
            .saturating_add(d.shared_system_memory),
    };
    Accelerator {
        id: format!(
            "dxgi-{:04x}-{:04x}-{:08x}-{:02x}-{:08x}",
            d.vendor_id,
            d.device_id,
            d.subsys_id,
            d.revision,
            fnv(&d.description) as u32
        ),
        name: d.description.clone(),
        vendor: vendor_name(d.vendor_id),
        kind,
        backends: vec![Backend::DirectMl],
        precisions: vec![Precision::F32, Precision::F16],
        memory_total_bytes: total,
        memory_free_bytes: None,
        memory_budget_bytes: total,
        architecture: None,
        compute_capability: None,
        driver_version: d.driver_version.clone(),
        runtime_version: None,
        reading: Reading::default(),
        source: if d.luid.is_some() { "dxgi" } else { "dxdiag" }.to_string(),
    }
}

/// Maps all adapters; identical ones get `#2`, `#3` … in enumeration order.
pub fn accelerators(adapters: &[AdapterDesc]) -> Vec<Accelerator> {
    let mut out: Vec<Accelerator> = Vec::new();
    for d in adapters {
        let mut a = to_accelerator(d);
        let same = out
            .iter()
            .filter(|o| o.id == a.id || o.id.starts_with(&format!("{}#", a.id)))
            .count();
        if same > 0 {
            a.id = format!("{}#{}", a.id, same + 1);
        }
        out.push(a);
    }
    out
}

fn is_rule(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && t.bytes().all(|b| b == b'-')
}

fn hex(line: usize, key: &'static str, value: &str) -> Result<u32, WindowsError> {
    let v = value.trim();
    v.strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| WindowsError::BadValue {
            line,
            key,
            value: v.to_string(),
        })
}

/// `"6052 MB"`; `n/a` and `Unknown` (virtual adapters) count as none.
fn megabytes(line: usize, key: &'static str, value: &str) -> Result<u64, WindowsError> {
    let v = value.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("n/a") || v.eq_ignore_ascii_case("unknown") {
        return Ok(0);
    }
    let bad = || WindowsError::BadValue {
        line,
        key,
        value: v.to_string(),
    };
    let n: u64 = v
        .strip_suffix(" MB")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(bad)?;
    n.checked_mul(MIB).ok_or_else(bad)
}

#[derive(Default)]
struct Partial {
    name: Option<String>,
    chip: Option<String>,
    vendor: Option<u32>,
    device: Option<u32>,
    subsys: u32,
    revision: u32,
    dedicated: u64,
    shared: u64,
    driver: Option<String>,
}

impl Partial {
    fn finish(self, line: usize) -> Result<AdapterDesc, WindowsError> {
        let missing = |key| WindowsError::Missing { line, key };
        Ok(AdapterDesc {
            description: self
                .name
                .or(self.chip)
                .ok_or_else(|| missing("Card name"))?,
            vendor_id: self.vendor.ok_or_else(|| missing("Vendor ID"))?,
            device_id: self.device.ok_or_else(|| missing("Device ID"))?,
            subsys_id: self.subsys,
            revision: self.revision,
            dedicated_video_memory: self.dedicated,
            dedicated_system_memory: 0,
            shared_system_memory: self.shared,
            luid: None,
            flags: 0,
            driver_version: self.driver,
        })
    }
}

/// Parses the Display Devices section of `dxdiag /t`. dxdiag repeats an adapter for each
/// monitor it drives, so repeats (same ids and name) are dropped; two identical cards are
/// therefore one here, which only DXGI can tell apart.
pub fn parse_dxdiag(text: &str) -> Result<Vec<AdapterDesc>, WindowsError> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .windows(3)
        .position(|w| is_rule(w[0]) && w[1].trim() == "Display Devices" && is_rule(w[2]))
        .ok_or(WindowsError::NoDisplaySection)?
        + 3;
    let mut out: Vec<AdapterDesc> = Vec::new();
    let mut cur: Option<Partial> = None;
    let mut end = lines.len();
    for (i, raw) in lines.iter().enumerate().skip(start) {
        let line = i + 1;
        if is_rule(raw) {
            end = i;
            break;
        }
        let Some((key, value)) = raw.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let key = key.trim();
        if key == "Card name" {
            if let Some(p) = cur.take() {
                out.push(p.finish(line)?);
            }
            cur = Some(Partial {
                name: Some(value.to_string()),
                ..Partial::default()
            });
            continue;
        }
        let Some(p) = cur.as_mut() else { continue };
        match key {
            "Chip type" => p.chip = Some(value.to_string()),
            "Dedicated Memory" => p.dedicated = megabytes(line, "Dedicated Memory", value)?,
            "Shared Memory" => p.shared = megabytes(line, "Shared Memory", value)?,
            "Driver Version" => p.driver = Some(value.to_string()),
            "Vendor ID" => p.vendor = Some(hex(line, "Vendor ID", value)?),
            "Device ID" => p.device = Some(hex(line, "Device ID", value)?),
            "SubSys ID" => p.subsys = hex(line, "SubSys ID", value)?,
            "Revision ID" => p.revision = hex(line, "Revision ID", value)?,
            _ => {}
        }
    }
    if let Some(p) = cur.take() {
        out.push(p.finish(end)?);
    }
    let mut unique: Vec<AdapterDesc> = Vec::new();
    for d in out {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    Ok(unique)
}

/// Decodes dxdiag's file: UTF-16 LE with a BOM on some versions, ANSI on others.
pub fn decode_dxdiag(bytes: &[u8]) -> String {
    match bytes {
        [0xff, 0xfe, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(windows)]
mod dxgi {
    //! The slots of `IDXGIFactory1` and `IDXGIAdapter1` that are called; the others are
    //! kept as placeholders so the offsets match the vtables in dxgi.h.
    use super::{AdapterDesc, WindowsError};
    use std::ffi::c_void;

    #[repr(C)]
    struct Guid(u32, u16, u16, [u8; 8]);

    #[repr(C)]
    struct Desc1 {
        description: [u16; 128],
        vendor_id: u32,
        device_id: u32,
        sub_sys_id: u32,
        revision: u32,
        dedicated_video_memory: usize,
        dedicated_system_memory: usize,
        shared_system_memory: usize,
        luid_low: u32,
        luid_high: i32,
        flags: u32,
    }

    type Release = unsafe extern "system" fn(*mut c_void) -> u32;

    #[repr(C)]
    struct FactoryVtbl {
        _query_interface: usize,
        _add_ref: usize,
        release: Release,
        _object: [usize; 4],
        _factory: [usize; 5],
        enum_adapters1: unsafe extern "system" fn(*mut c_void, u32, *mut *mut c_void) -> i32,
        _is_current: usize,
    }

    #[repr(C)]
    struct AdapterVtbl {
        _query_interface: usize,
        _add_ref: usize,
        release: Release,
        _object: [usize; 4],
        _adapter: [usize; 3],
        get_desc1: unsafe extern "system" fn(*mut c_void, *mut Desc1) -> i32,
    }

    #[link(name = "dxgi")]
    extern "system" {
        fn CreateDXGIFactory1(riid: *const Guid, factory: *mut *mut c_void) -> i32;
    }

    const IID_IDXGI_FACTORY1: Guid = Guid(
        0x770a_ae78,
        0xf26f,
        0x4dba,
        [0xa8, 0x29, 0x25, 0x3c, 0x83, 0xd1, 0xb3, 0x87],
    );
    const DXGI_ERROR_NOT_FOUND: i32 = 0x887a_0002_u32 as i32;
    /// More adapters than any machine has: a broken driver cannot loop us forever.
    const MAX_ADAPTERS: u32 = 64;

    fn failed(call: &'static str, hr: i32) -> WindowsError {
        WindowsError::Dxgi {
            call,
            hresult: hr as u32,
        }
    }

    pub fn enumerate() -> Result<Vec<AdapterDesc>, WindowsError> {
        let mut factory: *mut c_void = std::ptr::null_mut();
        // SAFETY: a valid IID and out-pointer; on success `factory` is an IDXGIFactory1.
        let hr = unsafe { CreateDXGIFactory1(&IID_IDXGI_FACTORY1, &mut factory) };
        if hr < 0 || factory.is_null() {
            return Err(failed("CreateDXGIFactory1", hr));
        }
        // SAFETY: a COM object starts with a pointer to its vtable.
        let fvt = unsafe { &**(factory as *mut *const FactoryVtbl) };
        let mut out = Vec::new();
        let mut result = Ok(());
        for index in 0..MAX_ADAPTERS {
            let mut adapter: *mut c_void = std::ptr::null_mut();
            // SAFETY: the factory is alive until released below.
            let hr = unsafe { (fvt.enum_adapters1)(factory, index, &mut adapter) };
            if hr == DXGI_ERROR_NOT_FOUND {
                break;
            }
            if hr < 0 || adapter.is_null() {
                result = Err(failed("EnumAdapters1", hr));
                break;
            }
            // SAFETY: `adapter` is an IDXGIAdapter1 we own one reference to.
            let avt = unsafe { &**(adapter as *mut *const AdapterVtbl) };
            // SAFETY: Desc1 is plain data; all-zero is a valid value.
            let mut desc: Desc1 = unsafe { std::mem::zeroed() };
            // SAFETY: `desc` is a writable DXGI_ADAPTER_DESC1.
            let hr = unsafe { (avt.get_desc1)(adapter, &mut desc) };
            // SAFETY: releases the reference EnumAdapters1 gave us.
            unsafe { (avt.release)(adapter) };
            if hr < 0 {
                result = Err(failed("GetDesc1", hr));
                break;
            }
            let len = desc.description.iter().position(|&c| c == 0).unwrap_or(128);
            out.push(AdapterDesc {
                description: String::from_utf16_lossy(&desc.description[..len]),
                vendor_id: desc.vendor_id,
                device_id: desc.device_id,
                subsys_id: desc.sub_sys_id,
                revision: desc.revision,
                dedicated_video_memory: desc.dedicated_video_memory as u64,
                dedicated_system_memory: desc.dedicated_system_memory as u64,
                shared_system_memory: desc.shared_system_memory as u64,
                luid: Some((u64::from(desc.luid_high as u32) << 32) | u64::from(desc.luid_low)),
                flags: desc.flags,
                driver_version: None,
            });
        }
        // SAFETY: releases the factory reference CreateDXGIFactory1 gave us.
        unsafe { (fvt.release)(factory) };
        result.map(|()| out)
    }
}

#[cfg(windows)]
fn run_dxdiag() -> Result<Vec<AdapterDesc>, WindowsError> {
    use std::io::Read;
    use std::process::Command;
    use std::time::{Duration, Instant};
    const TIMEOUT: Duration = Duration::from_secs(90);
    const LIMIT: u64 = 8 << 20;
    let path = std::env::temp_dir().join(format!("hearth-dxdiag-{}.txt", std::process::id()));
    let tool = |e: String| WindowsError::Tool(e);
    let mut child = Command::new("dxdiag")
        .arg("/t")
        .arg(&path)
        .spawn()
        .map_err(|e| tool(e.to_string()))?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| tool(e.to_string()))? {
            Some(_) => break,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&path);
                return Err(tool(format!("no report within {} s", TIMEOUT.as_secs())));
            }
        }
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(&path).and_then(|f| f.take(LIMIT).read_to_end(&mut bytes));
    let _ = std::fs::remove_file(&path);
    read.map_err(|e| tool(e.to_string()))?;
    parse_dxdiag(&decode_dxdiag(&bytes))
}

/// Finds this machine's DirectX 12 adapters: DXGI, else dxdiag.
#[cfg(windows)]
pub fn probe() -> Result<Vec<Accelerator>, WindowsError> {
    let adapters = match dxgi::enumerate() {
        Ok(a) => a,
        Err(_) => run_dxdiag()?,
    };
    Ok(accelerators(&adapters))
}
