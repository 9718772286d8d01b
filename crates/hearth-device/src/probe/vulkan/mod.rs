//! Vulkan devices: every physical device the system's Vulkan loader reports, whatever its
//! vendor, including CPU implementations such as Mesa's lavapipe.
//!
//! The gatherer (`ffi.rs`, Cargo feature `vulkan`) loads the loader library at run time,
//! creates an instance, reads each device's properties, memory heaps and feature bits into a
//! [`VulkanFacts`] and destroys the instance. [`to_accelerator`] is the pure mapping from those
//! facts to an [`Accelerator`]. Without the feature, or on a machine without a loader, the
//! probe finds nothing and says nothing.

use super::{budget, Accelerator, Backend, DeviceKind, Precision, Reading};
use serde::{Deserialize, Serialize};

#[cfg(feature = "vulkan")]
mod ffi;
#[cfg(feature = "vulkan")]
use ffi as gatherer;
#[cfg(not(feature = "vulkan"))]
mod stub;
#[cfg(not(feature = "vulkan"))]
use stub as gatherer;

/// `VkPhysicalDeviceType` values.
pub const DEVICE_TYPE_OTHER: u32 = 0;
pub const DEVICE_TYPE_INTEGRATED_GPU: u32 = 1;
pub const DEVICE_TYPE_DISCRETE_GPU: u32 = 2;
pub const DEVICE_TYPE_VIRTUAL_GPU: u32 = 3;
pub const DEVICE_TYPE_CPU: u32 = 4;

/// A Vulkan loader was found but could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VulkanError {
    #[error("{library} has no usable vkGetInstanceProcAddr")]
    NoEntryPoint { library: String },
    #[error("the loader does not provide {0}")]
    MissingFunction(&'static str),
    #[error("{call} failed with VkResult {code}")]
    Call { call: &'static str, code: i32 },
}

/// One memory heap of a device (`VkMemoryHeap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHeap {
    pub size_bytes: u64,
    /// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`: memory the device reads at full speed.
    pub device_local: bool,
}

/// What one Vulkan physical device says about itself, as gathered: the input of
/// [`to_accelerator`] and the shape of the fixtures under `tests/fixtures/vulkan/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VulkanFacts {
    /// The instance version the loader offers (`vkEnumerateInstanceVersion`, 1.0 if absent).
    pub instance_version: u32,
    /// The device's `apiVersion`, encoded as `VK_MAKE_API_VERSION`.
    pub api_version: u32,
    /// The device's `driverVersion`, in the vendor's own encoding.
    pub driver_version: u32,
    /// A PCI vendor id, or a Khronos vendor id (≥ 0x10000) for vendors without one.
    pub vendor_id: u32,
    pub device_id: u32,
    /// `VkPhysicalDeviceType` (see the `DEVICE_TYPE_*` constants).
    pub device_type: u32,
    pub device_name: String,
    /// `VkPhysicalDeviceIDProperties::deviceUUID` as 32 lowercase hex digits; absent when the
    /// instance or device is Vulkan 1.0.
    pub device_uuid: Option<String>,
    /// `VkPhysicalDeviceDriverProperties` (Vulkan 1.2 or `VK_KHR_driver_properties`).
    pub driver_name: Option<String>,
    pub driver_info: Option<String>,
    pub memory_heaps: Vec<MemoryHeap>,
    /// `VkPhysicalDeviceShaderFloat16Int8Features`; false where the device cannot say.
    pub shader_float16: bool,
    pub shader_int8: bool,
    /// `VkPhysicalDevice16BitStorageFeatures::storageBuffer16BitAccess`: f16 values can be
    /// loaded from and stored to storage buffers.
    pub storage_buffer_16bit: bool,
}

/// Every Vulkan device on this machine; an empty list where there is no loader or no driver.
pub fn probe() -> Result<Vec<Accelerator>, VulkanError> {
    Ok(gather()?.iter().map(to_accelerator).collect())
}

/// The raw facts of every Vulkan device on this machine.
pub fn gather() -> Result<Vec<VulkanFacts>, VulkanError> {
    gatherer::gather()
}

/// The file name the Vulkan loader was opened from; `None` where there is none (or the
/// `vulkan` feature is off).
pub fn loader_library() -> Option<&'static str> {
    gatherer::loader_library()
}

/// Maps one device's facts to hearth's description of it.
///
/// Precisions: every Vulkan device computes in f32. `f16` needs `shaderFloat16`, because
/// without it a shader cannot do arithmetic in half precision at all (f16 storage alone would
/// only halve the bytes, not compute in f16). `int8-dot` is claimed on `shaderInt8`, the bit a
/// compute shader needs to operate on 8-bit integers; whether the dot product is a single
/// hardware instruction (`VK_KHR_shader_integer_dot_product`'s "accelerated" properties) is not
/// read, so on some devices int8 work is emulated with 32-bit integer arithmetic.
pub fn to_accelerator(facts: &VulkanFacts) -> Accelerator {
    let mut precisions = vec![Precision::F32];
    if facts.shader_float16 {
        precisions.push(Precision::F16);
    }
    if facts.shader_int8 {
        precisions.push(Precision::Int8Dot);
    }
    let total: u64 = facts
        .memory_heaps
        .iter()
        .filter(|h| h.device_local)
        .fold(0u64, |sum, h| sum.saturating_add(h.size_bytes));
    let driver_version = match &facts.driver_info {
        // Mesa and the newer proprietary drivers put their release here ("Mesa 22.3.6"),
        // which is what a person recognises; lavapipe's driverVersion is a meaningless 0.0.1.
        Some(info) if !info.trim().is_empty() => info.trim().to_string(),
        _ => driver_version_string(facts.vendor_id, facts.driver_version),
    };
    Accelerator {
        id: stable_id(facts),
        name: facts.device_name.clone(),
        vendor: vendor_name(facts.vendor_id),
        kind: device_kind(facts.device_type),
        backends: vec![Backend::Vulkan],
        precisions,
        memory_total_bytes: total,
        memory_free_bytes: None,
        memory_budget_bytes: budget(total, None),
        architecture: None,
        compute_capability: None,
        driver_version: Some(driver_version),
        runtime_version: Some(api_version_string(facts.api_version)),
        reading: Reading::default(),
        source: "vulkan".to_string(),
    }
}

pub fn device_kind(device_type: u32) -> DeviceKind {
    match device_type {
        DEVICE_TYPE_INTEGRATED_GPU => DeviceKind::IntegratedGpu,
        DEVICE_TYPE_DISCRETE_GPU => DeviceKind::DiscreteGpu,
        DEVICE_TYPE_VIRTUAL_GPU => DeviceKind::VirtualGpu,
        DEVICE_TYPE_CPU => DeviceKind::SoftwareCpu,
        _ => DeviceKind::Other,
    }
}

/// The vendor behind a PCI vendor id or a Khronos vendor id (`VkVendorId`).
pub fn vendor_name(vendor_id: u32) -> String {
    let known = match vendor_id {
        0x10DE => "NVIDIA",
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        0x106B => "Apple",
        0x5143 => "Qualcomm",
        0x13B5 => "ARM",
        0x1010 => "Imagination",
        0x14E4 => "Broadcom",
        0x144D => "Samsung",
        0x19E5 => "Huawei",
        0x1AE0 => "Google",
        0x10001 => "Vivante",
        0x10002 => "VeriSilicon",
        0x10003 => "Kazan",
        0x10004 => "Codeplay",
        0x10005 => "Mesa",
        0x10006 => "PoCL",
        0x10007 => "MobileEye",
        _ => return format!("0x{vendor_id:04x}"),
    };
    known.to_string()
}

/// `VK_MAKE_API_VERSION` decoded as "major.minor.patch" (the variant, always 0 for Vulkan, is
/// dropped).
pub fn api_version_string(v: u32) -> String {
    format!("{}.{}.{}", (v >> 22) & 0x7F, (v >> 12) & 0x3FF, v & 0xFFF)
}

/// `driverVersion` decoded the way its vendor encodes it; the spec leaves the encoding to the
/// vendor, and NVIDIA and Intel's Windows driver do not use `VK_MAKE_API_VERSION`.
pub fn driver_version_string(vendor_id: u32, v: u32) -> String {
    match vendor_id {
        0x10DE => format!(
            "{}.{}.{}.{}",
            v >> 22,
            (v >> 14) & 0xFF,
            (v >> 6) & 0xFF,
            v & 0x3F
        ),
        0x8086 if cfg!(windows) => format!("{}.{}", v >> 14, v & 0x3FFF),
        _ => api_version_string(v),
    }
}

/// `vk-<device UUID>`; the UUID is the one identity Vulkan promises to keep across processes,
/// driver instances and reboots. Devices without one (Vulkan 1.0, or a driver that leaves it
/// zero) fall back to vendor, device id and an FNV-1a hash of the name, which two identical
/// cards share.
pub fn stable_id(facts: &VulkanFacts) -> String {
    if let Some(uuid) = facts.device_uuid.as_deref() {
        let valid = uuid.len() == 32 && uuid.bytes().all(|b| b.is_ascii_hexdigit());
        if valid && uuid.bytes().any(|b| b != b'0') {
            return format!("vk-{}", uuid.to_ascii_lowercase());
        }
    }
    format!(
        "vk-{:04x}-{:04x}-{:016x}",
        facts.vendor_id,
        facts.device_id,
        fnv1a(facts.device_name.as_bytes())
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Lowercase hex of a UUID, the form [`VulkanFacts::device_uuid`] keeps.
pub fn uuid_hex(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}
