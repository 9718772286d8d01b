//! The Vulkan probe: the pure mapping on captured device facts, and the live probe against
//! this machine's loader (required to find lavapipe where `HEARTH_EXPECT_VULKAN=1`).

use hearth_device::probe::vulkan::{
    self, api_version_string, driver_version_string, stable_id, to_accelerator, vendor_name,
    MemoryHeap, VulkanFacts, DEVICE_TYPE_CPU, DEVICE_TYPE_DISCRETE_GPU,
};
use hearth_device::{Backend, DeviceKind, Precision};
use std::path::PathBuf;
use std::time::Instant;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vulkan")
        .join(name)
}

fn fixture(name: &str) -> Vec<VulkanFacts> {
    let text = std::fs::read_to_string(fixture_path(name)).expect("fixture");
    serde_json::from_str(&text).expect("fixture is a list of VulkanFacts")
}

const GIB: u64 = 1 << 30;

#[test]
fn vulkan_lavapipe_fixture_maps_to_a_software_cpu() {
    let facts = fixture("lavapipe.json");
    assert_eq!(facts.len(), 1);
    let a = to_accelerator(&facts[0]);
    assert_eq!(a.kind, DeviceKind::SoftwareCpu);
    assert_eq!(a.vendor, "Mesa");
    assert!(a.name.starts_with("llvmpipe"), "{}", a.name);
    assert_eq!(a.backends, [Backend::Vulkan]);
    assert_eq!(
        a.precisions,
        [Precision::F32, Precision::F16, Precision::Int8Dot]
    );
    // vulkaninfo prints it as 6d657361-3232-2e33-2e36-000000000000 ("mesa22.3.6").
    assert_eq!(a.id, "vk-6d65736132322e332e36000000000000");
    assert_eq!(a.runtime_version.as_deref(), Some("1.3.230"));
    assert_eq!(
        a.driver_version.as_deref(),
        Some("Mesa 22.3.6 (LLVM 15.0.6)")
    );
    assert_eq!(a.memory_total_bytes, facts[0].memory_heaps[0].size_bytes);
    // Mesa 22.3's lavapipe reports one 2 GiB heap, whatever the host has.
    assert_eq!(a.memory_total_bytes, 2 * GIB);
    assert_eq!(a.memory_budget_bytes, a.memory_total_bytes);
    assert_eq!(a.memory_free_bytes, None);
    assert_eq!(a.source, "vulkan");
}

fn discrete() -> VulkanFacts {
    VulkanFacts {
        instance_version: api(1, 3, 275),
        api_version: api(1, 3, 277),
        // 550.54.14 in NVIDIA's encoding.
        driver_version: (550 << 22) | (54 << 14) | (14 << 6),
        vendor_id: 0x10DE,
        device_id: 0x2684,
        device_type: DEVICE_TYPE_DISCRETE_GPU,
        device_name: "NVIDIA GeForce RTX 4090".into(),
        device_uuid: Some("0123456789abcdef0123456789ABCDEF".into()),
        driver_name: None,
        driver_info: None,
        memory_heaps: vec![
            MemoryHeap {
                size_bytes: 24 * GIB,
                device_local: true,
            },
            MemoryHeap {
                size_bytes: 32 * GIB,
                device_local: false,
            },
            MemoryHeap {
                size_bytes: 224 << 20,
                device_local: true,
            },
        ],
        shader_float16: true,
        shader_int8: false,
        storage_buffer_16bit: true,
    }
}

fn api(major: u32, minor: u32, patch: u32) -> u32 {
    (major << 22) | (minor << 12) | patch
}

#[test]
fn vulkan_mapping_sums_device_local_heaps_and_reads_feature_bits() {
    let facts = discrete();
    let a = to_accelerator(&facts);
    assert_eq!(a.kind, DeviceKind::DiscreteGpu);
    assert_eq!(a.vendor, "NVIDIA");
    // The host-visible system heap is not the card's memory; the small BAR heap is.
    assert_eq!(a.memory_total_bytes, 24 * GIB + (224 << 20));
    assert_eq!(a.precisions, [Precision::F32, Precision::F16]);
    assert_eq!(a.id, "vk-0123456789abcdef0123456789abcdef");
    assert_eq!(a.runtime_version.as_deref(), Some("1.3.277"));
    assert_eq!(a.driver_version.as_deref(), Some("550.54.14.0"));

    let plain = VulkanFacts {
        shader_float16: false,
        shader_int8: true,
        ..facts.clone()
    };
    assert_eq!(
        to_accelerator(&plain).precisions,
        [Precision::F32, Precision::Int8Dot]
    );
    let no_local = VulkanFacts {
        memory_heaps: vec![MemoryHeap {
            size_bytes: 8 * GIB,
            device_local: false,
        }],
        ..facts
    };
    assert_eq!(to_accelerator(&no_local).memory_total_bytes, 0);
}

#[test]
fn vulkan_ids_fall_back_without_a_usable_uuid() {
    let mut facts = discrete();
    let with_uuid = stable_id(&facts);
    for uuid in [None, Some("0".repeat(32)), Some("xyz".into())] {
        facts.device_uuid = uuid.clone();
        let id = stable_id(&facts);
        assert_ne!(id, with_uuid, "{uuid:?}");
        assert!(id.starts_with("vk-10de-2684-"), "{id}");
        assert_eq!(id, stable_id(&facts.clone()), "deterministic");
    }
    let mut other = facts.clone();
    other.device_name = "NVIDIA GeForce RTX 4080".into();
    assert_ne!(stable_id(&other), stable_id(&facts));
}

#[test]
fn vulkan_vendor_kind_and_version_decoding() {
    assert_eq!(vendor_name(0x1002), "AMD");
    assert_eq!(vendor_name(0x8086), "Intel");
    assert_eq!(vendor_name(0x106B), "Apple");
    assert_eq!(vendor_name(0x5143), "Qualcomm");
    assert_eq!(vendor_name(0x13B5), "ARM");
    assert_eq!(vendor_name(0x10005), "Mesa");
    assert_eq!(vendor_name(0xABCD), "0xabcd");
    assert_eq!(api_version_string(api(1, 2, 198)), "1.2.198");
    assert_eq!(driver_version_string(0x1002, api(2, 0, 279)), "2.0.279");
    let mut f = discrete();
    for (t, kind) in [
        (0, DeviceKind::Other),
        (1, DeviceKind::IntegratedGpu),
        (2, DeviceKind::DiscreteGpu),
        (3, DeviceKind::VirtualGpu),
        (DEVICE_TYPE_CPU, DeviceKind::SoftwareCpu),
        (77, DeviceKind::Other),
    ] {
        f.device_type = t;
        assert_eq!(to_accelerator(&f).kind, kind, "type {t}");
    }
}

/// With `HEARTH_EXPECT_VULKAN=1` (CI, after installing mesa-vulkan-drivers) lavapipe must be
/// found; without it, a machine with no loader is reported and passes.
#[test]
fn vulkan_live_probe_finds_lavapipe_where_expected() {
    let expect = std::env::var("HEARTH_EXPECT_VULKAN").is_ok_and(|v| v == "1");
    let start = Instant::now();
    let found = vulkan::probe();
    let first = start.elapsed();
    let start = Instant::now();
    let again = vulkan::probe();
    let second = start.elapsed();
    let devices = match found {
        Ok(d) => d,
        Err(e) => panic!("the Vulkan loader is present but failed: {e}"),
    };
    assert_eq!(again.map(|d| d.len()).ok(), Some(devices.len()));
    println!(
        "vulkan probe: loader {:?}, {} device(s), first probe {:.1} ms, second {:.1} ms",
        vulkan::loader_library(),
        devices.len(),
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3
    );
    for d in &devices {
        println!(
            "  {} {:?} {} {:?} {} MiB {:?} runtime {:?} driver {:?}",
            d.id,
            d.name,
            d.vendor,
            d.kind,
            d.memory_total_bytes >> 20,
            d.precisions,
            d.runtime_version,
            d.driver_version
        );
    }
    let lavapipe = devices.iter().find(|d| {
        d.kind == DeviceKind::SoftwareCpu
            && d.name.contains("llvmpipe")
            && d.backends == [Backend::Vulkan]
    });
    if expect {
        let d = lavapipe.expect("HEARTH_EXPECT_VULKAN=1 but no llvmpipe device was found");
        assert!(d.memory_total_bytes > 0, "lavapipe reports no memory");
        let discovered = hearth_device::probe::discover();
        assert!(
            discovered.devices.iter().any(|a| a.id == d.id),
            "discover() does not list {}",
            d.id
        );
        assert!(discovered.warnings.is_empty(), "{:?}", discovered.warnings);
    } else if vulkan::loader_library().is_none() {
        println!(
            "vulkan probe: no Vulkan loader on this machine (or the `vulkan` feature is off); \
             nothing was checked. Set HEARTH_EXPECT_VULKAN=1 to require lavapipe."
        );
    } else if lavapipe.is_none() {
        println!("vulkan probe: a loader but no lavapipe device here; nothing more was checked");
    }
}

/// Writes this machine's device facts to `tests/fixtures/vulkan/captured.json`, the way
/// `lavapipe.json` was captured: `cargo test --release -p hearth-device -- --ignored
/// dump_vulkan_facts`.
#[test]
#[ignore]
fn dump_vulkan_facts() {
    let facts = vulkan::gather().expect("gather");
    let json = serde_json::to_string_pretty(&facts).expect("json");
    std::fs::write(fixture_path("captured.json"), json + "\n").expect("write");
    println!("{} device(s) written", facts.len());
}
