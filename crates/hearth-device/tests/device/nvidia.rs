//! The NVIDIA probe: `nvidia-smi -q -x` captures parsed to facts and accelerators, the pure
//! conversion both sources share, hostile input, and the probe on a machine without NVIDIA.

use hearth_device::probe::nvidia::{
    self, architecture_for_cc, min_cc_for_architecture, parse_smi_xml, precisions_for_cc,
    to_accelerator, GpuFacts, SmiParseError,
};
use hearth_device::{Backend, DeviceKind, Precision};

const MIB: u64 = 1 << 20;

fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nvidia/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn only(xml: &str) -> GpuFacts {
    let mut gpus = parse_smi_xml(xml).expect("parses");
    assert_eq!(gpus.len(), 1);
    gpus.remove(0)
}

#[test]
fn a100_with_mig_reads_the_board_not_its_slices() {
    let f = only(&fixture("a100-sxm4-80gb-mig-v12.xml"));
    assert_eq!(f.name, "NVIDIA A100-SXM4-80GB");
    assert_eq!(f.uuid, "GPU-513536b6-7d19-9063-b049-1e69664bb298");
    assert_eq!(f.pci_bus_id.as_deref(), Some("00000000:01:00.0"));
    assert_eq!(f.architecture.as_deref(), Some("Ampere"));
    assert_eq!(f.compute_capability, None);
    // The board's 81920 MiB, not a 19968 MiB MIG slice.
    assert_eq!(f.memory_total_bytes, 81920 * MIB);
    assert_eq!(f.memory_free_bytes, Some(80999 * MIB));
    assert_eq!(f.driver_version.as_deref(), Some("535.54.03"));
    assert_eq!(f.cuda_version.as_deref(), Some("12.2"));
    assert_eq!(f.temperature_c, Some(27.0));
    assert_eq!(f.power_w, Some(67.03));
    assert_eq!(f.power_limit_w, Some(500.0));
    assert_eq!(f.utilisation, None, "N/A under MIG");

    let a = to_accelerator(&f, "nvidia-smi");
    assert_eq!(a.id, "cuda-gpu-513536b6-7d19-9063-b049-1e69664bb298");
    assert_eq!(a.vendor, "NVIDIA");
    assert_eq!(a.kind, DeviceKind::DiscreteGpu);
    assert_eq!(a.backends, [Backend::Cuda]);
    // Ampere's lowest capability is 8.0: bf16 and int8 dot products.
    assert_eq!(
        a.precisions,
        [
            Precision::F32,
            Precision::F16,
            Precision::Bf16,
            Precision::Int8Dot
        ]
    );
    assert_eq!(a.memory_budget_bytes, 80999 * MIB);
    assert_eq!(a.architecture.as_deref(), Some("Ampere"));
    assert_eq!(a.compute_capability, None);
    assert_eq!(a.runtime_version.as_deref(), Some("12.2"));
    assert_eq!(a.source, "nvidia-smi");
}

#[test]
fn rtx_3080_on_the_v13_schema() {
    let f = only(&fixture("rtx-3080-v13.xml"));
    assert_eq!(f.name, "NVIDIA GeForce RTX 3080");
    assert_eq!(f.uuid, "GPU-19d6d965-2acc-f646-00f8-4c76979aabb4");
    assert_eq!(f.pci_bus_id.as_deref(), Some("00000000:0C:00.0"));
    assert_eq!(f.memory_total_bytes, 10240 * MIB);
    assert_eq!(f.memory_free_bytes, Some(660 * MIB));
    assert_eq!(f.driver_version.as_deref(), Some("595.58.03"));
    assert_eq!(f.cuda_version.as_deref(), Some("13.2"));
    assert_eq!(f.temperature_c, Some(27.0));
    // v13 has no `power_draw`; the average is the figure comparable with older drivers.
    assert_eq!(f.power_w, Some(139.62));
    assert_eq!(f.power_limit_w, Some(320.0));
    assert_eq!(f.utilisation, Some(0.65));
    let a = to_accelerator(&f, "nvidia-smi");
    assert_eq!(a.memory_budget_bytes, 660 * MIB);
    assert_eq!(a.reading.utilisation, Some(0.65));
}

#[test]
fn gtx_1070_ti_on_the_v10_schema_without_architecture() {
    let f = only(&fixture("gtx-1070-ti-v10.xml"));
    assert_eq!(f.name, "GeForce GTX 1070 Ti");
    assert_eq!(f.uuid, "GPU-f9ba66fc-a7f5-94c5-da19-019ef2f9c665");
    // No <pci_bus_id> in this abridged report: the gpu element's id attribute stands in.
    assert_eq!(f.pci_bus_id.as_deref(), Some("00000000:01:00.0"));
    assert_eq!(f.architecture, None);
    assert_eq!(f.memory_total_bytes, 4096 * MIB);
    assert_eq!(f.memory_free_bytes, Some(4054 * MIB));
    assert_eq!(f.driver_version, None);
    assert_eq!(f.temperature_c, Some(39.0));
    assert_eq!(f.power_w, None, "N/A");
    assert_eq!(f.utilisation, Some(0.0));
    // Nothing says which capability: only f32 is claimed.
    assert_eq!(
        to_accelerator(&f, "nvidia-smi").precisions,
        [Precision::F32]
    );
}

#[test]
fn several_gpus_in_one_report_keep_their_order() {
    // Two captured <gpu> elements side by side, as nvidia-smi prints a multi-GPU machine.
    let a100 = fixture("a100-sxm4-80gb-mig-v12.xml");
    let rtx = fixture("rtx-3080-v13.xml");
    let gpu_of = |xml: &str| {
        let start = xml.find("<gpu id=").expect("gpu start");
        let end = xml.rfind("</gpu>").expect("gpu end") + "</gpu>".len();
        xml[start..end].to_string()
    };
    let both = a100.replace("</gpu>", &format!("</gpu>\n{}", gpu_of(&rtx)));
    let gpus = parse_smi_xml(&both).expect("parses");
    let names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 3080"]);
    // The driver line is the report's, shared by every GPU in it.
    assert!(gpus
        .iter()
        .all(|g| g.driver_version.as_deref() == Some("535.54.03")));
}

#[test]
fn compute_capability_tables() {
    assert_eq!(architecture_for_cc((7, 0)), Some("Volta"));
    assert_eq!(architecture_for_cc((7, 5)), Some("Turing"));
    assert_eq!(architecture_for_cc((8, 0)), Some("Ampere"));
    assert_eq!(architecture_for_cc((8, 6)), Some("Ampere"));
    assert_eq!(architecture_for_cc((8, 7)), Some("Ampere"));
    assert_eq!(architecture_for_cc((8, 9)), Some("Ada Lovelace"));
    assert_eq!(architecture_for_cc((9, 0)), Some("Hopper"));
    assert_eq!(architecture_for_cc((10, 0)), Some("Blackwell"));
    assert_eq!(architecture_for_cc((12, 0)), Some("Blackwell"));
    assert_eq!(architecture_for_cc((2, 1)), None);
    assert_eq!(min_cc_for_architecture("Ada"), Some((8, 9)));
    assert_eq!(min_cc_for_architecture("hopper"), Some((9, 0)));
    assert_eq!(min_cc_for_architecture("Rubin"), None);

    use Precision::*;
    assert_eq!(precisions_for_cc(None), [F32]);
    assert_eq!(precisions_for_cc(Some((5, 2))), [F32]);
    assert_eq!(precisions_for_cc(Some((5, 3))), [F32, F16]);
    assert_eq!(precisions_for_cc(Some((6, 0))), [F32, F16]);
    assert_eq!(precisions_for_cc(Some((6, 1))), [F32, F16, Int8Dot]);
    assert_eq!(precisions_for_cc(Some((7, 5))), [F32, F16, Int8Dot]);
    assert_eq!(precisions_for_cc(Some((8, 0))), [F32, F16, Bf16, Int8Dot]);
    assert_eq!(precisions_for_cc(Some((12, 0))), [F32, F16, Bf16, Int8Dot]);
}

/// What NVML would report for an H100: the capability decides the architecture name and the
/// precisions, and the conversion is the same function the nvidia-smi path uses.
#[test]
fn nvml_shaped_facts_convert_through_the_shared_function() {
    let nvml = GpuFacts {
        name: "NVIDIA H100 80GB HBM3".into(),
        uuid: "GPU-ABCDEF01-2345-6789-abcd-ef0123456789".into(),
        pci_bus_id: Some("00000000:19:00.0".into()),
        architecture: Some("Hopper".into()),
        compute_capability: Some((9, 0)),
        memory_total_bytes: 81559 * MIB,
        memory_free_bytes: Some(80000 * MIB),
        driver_version: Some("550.54.15".into()),
        cuda_version: Some("12.4".into()),
        temperature_c: Some(31.0),
        power_w: Some(71.5),
        power_limit_w: Some(700.0),
        utilisation: Some(0.0),
    };
    let a = to_accelerator(&nvml, "nvml");
    assert_eq!(a.id, "cuda-gpu-abcdef01-2345-6789-abcd-ef0123456789");
    assert_eq!(a.compute_capability.as_deref(), Some("9.0"));
    assert_eq!(a.architecture.as_deref(), Some("Hopper"));
    assert_eq!(a.memory_budget_bytes, 80000 * MIB);
    assert_eq!(a.reading.power_limit_w, Some(700.0));
    assert_eq!(a.source, "nvml");
    // NVML calls Ada "Ada"; the capability gives every source the same name.
    let ada = GpuFacts {
        architecture: Some("Ada".into()),
        compute_capability: Some((8, 9)),
        ..nvml.clone()
    };
    assert_eq!(
        to_accelerator(&ada, "nvml").architecture.as_deref(),
        Some("Ada Lovelace")
    );
    // Same facts, other source: only `source` differs.
    let mut from_smi = to_accelerator(&nvml, "nvidia-smi");
    from_smi.source = "nvml".into();
    assert_eq!(from_smi, a);
}

#[test]
fn malformed_reports_are_typed_errors() {
    assert!(matches!(parse_smi_xml(""), Err(SmiParseError::Xml(_))));
    assert!(matches!(
        parse_smi_xml("<nvidia_smi_log>"),
        Err(SmiParseError::Xml(_))
    ));
    assert!(matches!(
        parse_smi_xml("<other/>"),
        Err(SmiParseError::NotSmiLog(name)) if name == "other"
    ));
    assert_eq!(parse_smi_xml("<nvidia_smi_log/>"), Ok(vec![]));
    let gpu = |body: &str| format!("<nvidia_smi_log><gpu>{body}</gpu></nvidia_smi_log>");
    assert_eq!(
        parse_smi_xml(&gpu("<uuid>GPU-1</uuid>")),
        Err(SmiParseError::Missing {
            gpu: 0,
            field: "product_name"
        })
    );
    let named = "<product_name>X</product_name><uuid>GPU-1</uuid>";
    assert_eq!(
        parse_smi_xml(&gpu(named)),
        Err(SmiParseError::Missing {
            gpu: 0,
            field: "fb_memory_usage/total"
        })
    );
    let bad_mem = format!("{named}<fb_memory_usage><total>lots MiB</total></fb_memory_usage>");
    assert!(matches!(
        parse_smi_xml(&gpu(&bad_mem)),
        Err(SmiParseError::BadValue {
            field: "fb_memory_usage/total",
            ..
        })
    ));
    let bad_unit = format!("{named}<fb_memory_usage><total>4 PiB</total></fb_memory_usage>");
    assert!(matches!(
        parse_smi_xml(&gpu(&bad_unit)),
        Err(SmiParseError::BadValue { .. })
    ));
    let overflow =
        format!("{named}<fb_memory_usage><total>99999999999999 GiB</total></fb_memory_usage>");
    assert!(matches!(
        parse_smi_xml(&gpu(&overflow)),
        Err(SmiParseError::BadValue { .. })
    ));
    let mem = "<fb_memory_usage><total>4 MiB</total></fb_memory_usage>";
    let bad_util = format!("{named}{mem}<utilization><gpu_util>250 %</gpu_util></utilization>");
    assert!(matches!(
        parse_smi_xml(&gpu(&bad_util)),
        Err(SmiParseError::BadValue {
            field: "utilization/gpu_util",
            ..
        })
    ));
    let bad_temp = format!("{named}{mem}<temperature><gpu_temp>NaN C</gpu_temp></temperature>");
    assert!(matches!(
        parse_smi_xml(&gpu(&bad_temp)),
        Err(SmiParseError::BadValue { .. })
    ));
    let no_unit =
        format!("{named}{mem}<gpu_power_readings><power_draw>67</power_draw></gpu_power_readings>");
    assert!(matches!(
        parse_smi_xml(&gpu(&no_unit)),
        Err(SmiParseError::BadValue { .. })
    ));
}

#[test]
fn truncated_and_corrupted_reports_never_panic() {
    for name in [
        "a100-sxm4-80gb-mig-v12.xml",
        "rtx-3080-v13.xml",
        "gtx-1070-ti-v10.xml",
    ] {
        let text = fixture(name);
        let mut cut = 0;
        // Every prefix at char boundaries, sampled: a truncated report must error, not panic.
        for end in (0..text.len()).step_by(37) {
            if let Some(prefix) = text.get(..end) {
                if parse_smi_xml(prefix).is_err() {
                    cut += 1;
                }
            }
        }
        assert!(cut > 0, "{name}: truncation always failed to fail");
        // Flip bytes through the whole file with a fixed stride and seed.
        let bytes = text.as_bytes();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut copy = bytes.to_vec();
            let at = (state as usize) % copy.len();
            copy[at] = (state >> 32) as u8;
            let mangled = String::from_utf8_lossy(&copy);
            let _ = parse_smi_xml(&mangled);
        }
    }
}

#[test]
fn no_driver_means_no_devices_and_no_warning() {
    // Meaningful where there is no NVIDIA driver, as on the project's build machines.
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        return;
    }
    assert!(matches!(nvidia::nvml::gather(), Ok(None)));
    assert!(nvidia::probe().expect("absent is not an error").is_empty());
    let found = hearth_device::probe::discover();
    assert!(
        found.warnings.is_empty(),
        "warnings on a machine without GPUs: {:?}",
        found.warnings
    );
    assert!(found.devices.iter().all(|d| d.vendor != "NVIDIA"));
    assert_eq!(nvidia::nvml::COMPILED, cfg!(feature = "nvml"));
}

#[test]
fn tools_are_run_with_a_deadline_and_a_size_cap() {
    use hearth_device::probe::command::{run, CommandError};
    use std::time::{Duration, Instant};
    let t = Duration::from_secs(5);
    assert!(matches!(run("hearth-no-such-tool", &[], t, 64), Ok(None)));
    assert_eq!(
        run("echo", &["hello"], t, 64).expect("runs").as_deref(),
        Some("hello\n")
    );
    assert!(matches!(
        run("echo", &["hello"], t, 3),
        Err(CommandError::TooLong { limit: 3, .. })
    ));
    assert!(matches!(
        run("sh", &["-c", "exit 3"], t, 64),
        Err(CommandError::Failed { .. })
    ));
    let start = Instant::now();
    assert!(matches!(
        run("sleep", &["30"], Duration::from_millis(200), 64),
        Err(CommandError::TimedOut { .. })
    ));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "killed at the deadline"
    );
}

/// Captured by this project on a rented NVIDIA H200 (driver 580.159.04, CUDA 13.0), with
/// `hearth devices` run beside it; see `fixtures/nvidia/README.md`.
#[test]
fn h200_capture_reads_hopper_with_its_memory_and_power() {
    let f = only(&fixture("h200-v13.xml"));
    assert_eq!(f.name, "NVIDIA H200");
    assert_eq!(f.uuid, "GPU-51243092-e7ec-2d6b-4647-83e07e2f7e0d");
    assert_eq!(f.architecture.as_deref(), Some("Hopper"));
    assert_eq!(f.memory_total_bytes, 143771 * MIB);
    assert_eq!(f.memory_free_bytes, Some(143156 * MIB));
    assert_eq!(f.driver_version.as_deref(), Some("580.159.04"));
    assert_eq!(f.cuda_version.as_deref(), Some("13.0"));
    assert_eq!(f.temperature_c, Some(39.0));
    assert_eq!(f.power_limit_w, Some(700.0));
    assert_eq!(f.utilisation, Some(0.0));

    let a = to_accelerator(&f, "nvidia-smi");
    assert_eq!(a.id, "cuda-gpu-51243092-e7ec-2d6b-4647-83e07e2f7e0d");
    assert_eq!(
        a.precisions,
        [
            Precision::F32,
            Precision::F16,
            Precision::Bf16,
            Precision::Int8Dot
        ]
    );
    // NVML on the same machine, a moment later, reported the same total to the byte and a
    // free figure within the MiB that nvidia-smi rounds to.
    assert_eq!(a.memory_total_bytes, 150_754_820_096);
    assert!(a.memory_budget_bytes.abs_diff(150_109_880_320) < MIB);
}

/// On that H200 the Vulkan probe (NVIDIA's ICD) found the same board as NVML, with the same
/// UUID; listed twice, a planner would count its 140 GiB twice.
#[test]
fn a_gpu_seen_by_nvidia_and_vulkan_is_one_device_with_both_backends() {
    use hearth_device::probe::vulkan::{self as vk, MemoryHeap, VulkanFacts};
    let cuda = to_accelerator(&only(&fixture("h200-v13.xml")), "nvidia-smi");
    let seen = VulkanFacts {
        instance_version: (1 << 22) | (3 << 12) | 239,
        api_version: (1 << 22) | (4 << 12) | 312,
        driver_version: (580 << 22) | (159 << 14) | (4 << 6),
        vendor_id: 0x10DE,
        device_id: 0x2335,
        device_type: vk::DEVICE_TYPE_DISCRETE_GPU,
        device_name: "NVIDIA H200".into(),
        device_uuid: Some("51243092e7ec2d6b464783e07e2f7e0d".into()),
        driver_name: Some("NVIDIA".into()),
        driver_info: Some("580.159.04".into()),
        memory_heaps: vec![MemoryHeap {
            size_bytes: 150_754_820_096,
            device_local: true,
        }],
        shader_float16: true,
        shader_int8: true,
        storage_buffer_16bit: true,
    };
    let twin = vk::to_accelerator(&seen);
    assert_eq!(twin.id, "vk-51243092e7ec2d6b464783e07e2f7e0d");
    let other = vk::to_accelerator(&VulkanFacts {
        device_uuid: Some("00112233445566778899aabbccddeeff".into()),
        device_name: "another board".into(),
        ..seen.clone()
    });

    let mut devices = vec![twin, cuda.clone(), other.clone()];
    hearth_device::probe::fold_vulkan_twins(&mut devices);
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].id, cuda.id);
    assert_eq!(devices[0].backends, [Backend::Cuda, Backend::Vulkan]);
    assert_eq!(devices[0].memory_free_bytes, cuda.memory_free_bytes);
    assert_eq!(devices[1], other, "a Vulkan device with no twin stays");
}
