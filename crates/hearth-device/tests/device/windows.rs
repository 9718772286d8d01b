//! DirectML probe: `dxdiag /t` text and the DXGI adapter → accelerator mapping.

use hearth_device::probe::windows::{
    accelerators, decode_dxdiag, parse_dxdiag, to_accelerator, AdapterDesc, WindowsError,
    FLAG_SOFTWARE,
};
use hearth_device::{Backend, DeviceKind};

const MIB: u64 = 1 << 20;

fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/windows/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

#[test]
fn gtx1060_dxdiag_lists_one_adapter_for_two_monitors() {
    let adapters = parse_dxdiag(&fixture("gtx1060-win10-1803.dxdiag.txt")).expect("parses");
    assert_eq!(adapters.len(), 1, "the same card drives two monitors");
    let d = &adapters[0];
    assert_eq!(d.description, "NVIDIA GeForce GTX 1060 6GB");
    assert_eq!((d.vendor_id, d.device_id), (0x10de, 0x1c03));
    assert_eq!((d.subsys_id, d.revision), (0x854a_1043, 0xa1));
    assert_eq!(d.dedicated_video_memory, 6052 * MIB);
    assert_eq!(d.shared_system_memory, 8157 * MIB);
    assert_eq!(d.driver_version.as_deref(), Some("25.21.14.1701"));
    assert_eq!(d.luid, None);
}

/// The same card as DXGI reports it: dxdiag's figures plus the fields only DXGI has.
fn gtx1060_from_dxgi(luid: u64) -> AdapterDesc {
    AdapterDesc {
        description: "NVIDIA GeForce GTX 1060 6GB".into(),
        vendor_id: 0x10de,
        device_id: 0x1c03,
        subsys_id: 0x854a_1043,
        revision: 0xa1,
        dedicated_video_memory: 6052 * MIB,
        dedicated_system_memory: 0,
        shared_system_memory: 8157 * MIB,
        luid: Some(luid),
        flags: 0,
        driver_version: None,
    }
}

#[test]
fn dxgi_desc_maps_to_a_discrete_directml_device_with_a_boot_stable_id() {
    let a = to_accelerator(&gtx1060_from_dxgi(0x0000_0000_0000_d5a1));
    assert_eq!(a.kind, DeviceKind::DiscreteGpu);
    assert_eq!(a.backends, [Backend::DirectMl]);
    assert_eq!(a.vendor, "NVIDIA");
    assert_eq!(a.memory_total_bytes, 6052 * MIB);
    assert_eq!(a.memory_budget_bytes, 6052 * MIB);
    assert_eq!(a.source, "dxgi");
    assert!(a.id.starts_with("dxgi-10de-1c03-854a1043-a1-"), "{}", a.id);
    // The LUID changes at every boot; the id must not.
    assert_eq!(a.id, to_accelerator(&gtx1060_from_dxgi(0x1234_5678)).id);
    // dxdiag's view of the same card has the same id.
    let from_dxdiag = parse_dxdiag(&fixture("gtx1060-win10-1803.dxdiag.txt")).expect("parses");
    assert_eq!(to_accelerator(&from_dxdiag[0]).id, a.id);
}

#[test]
fn software_integrated_and_identical_adapters() {
    let warp = AdapterDesc {
        description: "Microsoft Basic Render Driver".into(),
        vendor_id: 0x1414,
        device_id: 0x8c,
        shared_system_memory: 8157 * MIB,
        flags: FLAG_SOFTWARE,
        luid: Some(1),
        ..AdapterDesc::default()
    };
    assert_eq!(to_accelerator(&warp).kind, DeviceKind::SoftwareCpu);
    let igpu = AdapterDesc {
        description: "Intel(R) UHD Graphics 630".into(),
        vendor_id: 0x8086,
        device_id: 0x3e92,
        dedicated_video_memory: 128 * MIB,
        shared_system_memory: 8157 * MIB,
        luid: Some(2),
        ..AdapterDesc::default()
    };
    let a = to_accelerator(&igpu);
    assert_eq!(a.kind, DeviceKind::IntegratedGpu);
    assert_eq!(a.memory_total_bytes, (128 + 8157) * MIB);
    let ids: Vec<String> = accelerators(&[gtx1060_from_dxgi(3), gtx1060_from_dxgi(4), igpu])
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids[1], format!("{}#2", ids[0]));
    assert!(!ids[2].contains('#'));
}

#[test]
fn utf16_reports_decode() {
    let text = "---------------\nDisplay Devices\n---------------\n";
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    assert_eq!(decode_dxdiag(&bytes), text);
    assert_eq!(decode_dxdiag(text.as_bytes()), text);
    assert_eq!(parse_dxdiag(text), Ok(vec![]));
}

#[test]
fn bad_outputs_are_typed_errors() {
    assert_eq!(parse_dxdiag(""), Err(WindowsError::NoDisplaySection));
    let head = "---------------\nDisplay Devices\n---------------\n";
    assert!(matches!(
        parse_dxdiag(&format!(
            "{head}           Card name: X\n    Dedicated Memory: lots\n"
        )),
        Err(WindowsError::BadValue {
            key: "Dedicated Memory",
            ..
        })
    ));
    assert!(matches!(
        parse_dxdiag(&format!(
            "{head}           Card name: X\n           Vendor ID: 10DE\n"
        )),
        Err(WindowsError::BadValue {
            key: "Vendor ID",
            ..
        })
    ));
    assert!(matches!(
        parse_dxdiag(&format!(
            "{head}           Card name: X\n           Vendor ID: 0x10DE\n"
        )),
        Err(WindowsError::Missing {
            key: "Device ID",
            ..
        })
    ));
}

#[test]
fn mutated_outputs_never_panic() {
    super::mutations(
        fixture("gtx1060-win10-1803.dxdiag.txt").as_bytes(),
        |text| {
            let _ = parse_dxdiag(text);
        },
    );
}
