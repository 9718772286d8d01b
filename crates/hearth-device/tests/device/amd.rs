//! The AMD probe: rocm-smi JSON captures, the amdgpu sysfs reader on a tree built from a
//! capture's values, the merge of the two, the integrated/discrete rule and hostile input.

use hearth_device::probe::amd::{
    is_integrated, merge, parse_rocm_smi, precisions_for_gfx, read_sysfs, to_accelerator, AmdFacts,
    RocmSmiError, SysfsProbeError,
};
use hearth_device::{Backend, DeviceKind, Precision};
use std::path::{Path, PathBuf};

const GIB: u64 = 1 << 30;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/amd")
        .join(name)
}

fn fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path:?}: {e}"))
}

#[test]
fn rx_6700_xt_from_rocm_smi() {
    let cards = parse_rocm_smi(&fixture("rx6700xt-rocm612.json")).expect("parses");
    assert_eq!(cards.len(), 1);
    let c = &cards[0];
    assert_eq!(c.card, "card0");
    assert_eq!(
        c.name.as_deref(),
        Some("Navi 22 [Radeon RX 6700/6700 XT / 6800M]")
    );
    assert_eq!(c.device_id.as_deref(), Some("0x73df"));
    assert_eq!(c.unique_id, None, "N/A");
    assert_eq!(c.pci_address.as_deref(), Some("0000:07:00.0"));
    assert_eq!(c.architecture.as_deref(), Some("gfx1031"));
    assert_eq!(c.vram_total_bytes, 12_868_124_672);
    assert_eq!(c.vram_used_bytes, Some(1_572_745_216));
    assert_eq!(c.vram_vendor.as_deref(), Some("samsung"));
    assert_eq!(c.driver_version.as_deref(), Some("6.3.6"));
    assert_eq!(c.temperature_c, Some(45.0));
    assert_eq!(c.power_w, Some(6.0));
    assert_eq!(c.power_limit_w, Some(211.0));
    assert_eq!(c.utilisation, Some(0.0));

    let a = to_accelerator(c, "rocm-smi");
    assert_eq!(a.id, "rocm-pci-0000:07:00.0");
    assert_eq!(a.vendor, "AMD");
    assert_eq!(a.kind, DeviceKind::DiscreteGpu);
    assert_eq!(a.backends, [Backend::Rocm]);
    // RDNA 2 (gfx1031): dot4 int8, no bf16 arithmetic.
    assert_eq!(
        a.precisions,
        [Precision::F32, Precision::F16, Precision::Int8Dot]
    );
    assert_eq!(a.memory_free_bytes, Some(12_868_124_672 - 1_572_745_216));
    assert_eq!(a.memory_budget_bytes, 12_868_124_672 - 1_572_745_216);
    assert_eq!(a.architecture.as_deref(), Some("gfx1031"));
}

#[test]
fn four_mi100s_from_rocm_smi() {
    let cards = parse_rocm_smi(&fixture("mi100x4-rocm602.json")).expect("parses");
    let ids: Vec<&str> = cards
        .iter()
        .map(|c| c.unique_id.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        [
            "0x79ccd55167a2124a",
            "0x4edfb117a17a07d",
            "0xd4a9ec48d03d261d",
            "0x1b9dd972253c3736"
        ]
    );
    let c = &cards[1];
    // This release spells it "Card series" and prints no GFX Version.
    assert_eq!(c.name.as_deref(), Some("Arcturus GL-XL [Instinct MI100]"));
    assert_eq!(c.architecture, None);
    assert_eq!(c.pci_address.as_deref(), Some("0000:a3:00.0"));
    assert_eq!(c.vram_total_bytes, 34_342_961_152);
    assert_eq!(c.vram_used_bytes, Some(6_750_208));
    assert_eq!(c.temperature_c, Some(55.0));
    assert_eq!(c.power_w, Some(44.0));
    assert_eq!(c.power_limit_w, Some(290.0));
    let temps: Vec<f64> = cards.iter().filter_map(|c| c.temperature_c).collect();
    assert_eq!(temps, [53.0, 55.0, 54.0, 51.0]);

    let a = to_accelerator(c, "rocm-smi");
    assert_eq!(a.id, "rocm-0x4edfb117a17a07d");
    assert_eq!(a.kind, DeviceKind::DiscreteGpu);
    assert_eq!(a.precisions, [Precision::F32, Precision::F16]);
    assert_eq!(a.driver_version.as_deref(), Some("6.3.6"));
}

#[test]
fn sysfs_tree_built_from_the_rx_6700_xt_capture() {
    let found = read_sysfs(&fixture_path("sysfs-rx6700xt")).expect("reads");
    // card1 is an NVIDIA card, card0-DP-1 a connector, renderD128 a render node.
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(f.card, "card0");
    assert_eq!(f.pci_address.as_deref(), Some("0000:07:00.0"));
    assert_eq!(f.device_id.as_deref(), Some("0x73df"));
    assert_eq!(f.name, None);
    assert_eq!(f.vram_total_bytes, 12_868_124_672);
    assert_eq!(f.vram_used_bytes, Some(1_572_745_216));
    assert_eq!(f.vram_vendor.as_deref(), Some("samsung"));
    assert_eq!(f.temperature_c, Some(45.0));
    assert_eq!(f.power_w, Some(6.0));
    assert_eq!(f.power_limit_w, Some(211.0));
    assert_eq!(f.utilisation, Some(0.0));
    let alone = to_accelerator(f, "amdgpu-sysfs");
    assert_eq!(alone.name, "AMD GPU 0x73df");
    assert_eq!(alone.precisions, [Precision::F32, Precision::F16]);

    // rocm-smi names the card and its gfx target; the sysfs readings stay.
    let rocm = parse_rocm_smi(&fixture("rx6700xt-rocm612.json")).expect("parses");
    let merged = merge(found, &rocm);
    let a = to_accelerator(&merged[0], "amdgpu-sysfs+rocm-smi");
    assert_eq!(a.name, "Navi 22 [Radeon RX 6700/6700 XT / 6800M]");
    assert_eq!(a.architecture.as_deref(), Some("gfx1031"));
    assert_eq!(a.driver_version.as_deref(), Some("6.3.6"));
    assert_eq!(a.id, "rocm-pci-0000:07:00.0");
    assert_eq!(
        a.precisions,
        [Precision::F32, Precision::F16, Precision::Int8Dot]
    );
    assert_eq!(a.reading.power_w, Some(6.0));
}

/// A scratch copy of a device directory, for the cases the fixture does not cover.
fn card(root: &Path, n: u32, files: &[(&str, &str)]) {
    let dev = root.join(format!("card{n}/device"));
    for (name, text) in files {
        let path = dev.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("write");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("amd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

#[test]
fn sysfs_power_input_apu_and_bad_files() {
    let root = scratch("cases");
    // Synthetic APU: a 512 MiB carve-out, no VRAM chip vendor, power1_input only.
    card(
        &root,
        0,
        &[
            ("vendor", "0x1002\n"),
            ("device", "0x15bf\n"),
            ("mem_info_vram_total", "536870912\n"),
            ("mem_info_vram_used", "8388608\n"),
            ("hwmon/hwmon1/temp1_input", "41000\n"),
            ("hwmon/hwmon1/power1_input", "12500000\n"),
        ],
    );
    // An old radeon-driver card: AMD, but no amdgpu memory files.
    card(&root, 1, &[("vendor", "0x1002\n")]);
    let found = read_sysfs(&root).expect("reads");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].power_w, Some(12.5));
    assert!(is_integrated(&found[0]));
    assert_eq!(
        to_accelerator(&found[0], "amdgpu-sysfs").kind,
        DeviceKind::IntegratedGpu
    );

    for (file, text) in [
        ("mem_info_vram_total", "twelve\n"),
        ("mem_info_vram_total", "-1\n"),
        ("mem_info_vram_used", "99999999999999999999999\n"),
        ("gpu_busy_percent", "250\n"),
        ("hwmon/hwmon0/temp1_input", "900000\n"),
        ("hwmon/hwmon0/temp1_input", "hot\n"),
        ("hwmon/hwmon0/power1_average", "1.5\n"),
    ] {
        let root = scratch("bad");
        card(
            &root,
            0,
            &[
                ("vendor", "0x1002\n"),
                ("mem_info_vram_total", "1073741824\n"),
            ],
        );
        card(&root, 0, &[(file, text)]);
        let r = read_sysfs(&root);
        assert!(
            matches!(
                r,
                Err(SysfsProbeError::Malformed { .. } | SysfsProbeError::OutOfRange { .. })
            ),
            "{file} = {text:?}: {r:?}"
        );
    }
    let root = scratch("long");
    card(
        &root,
        0,
        &[
            ("vendor", "0x1002\n"),
            ("mem_info_vram_total", &"1".repeat(5000)),
        ],
    );
    assert!(matches!(
        read_sysfs(&root),
        Err(SysfsProbeError::TooLong { .. })
    ));
    // No DRM directory at all: not Linux, or no GPU driver.
    assert!(read_sysfs(&root.join("missing"))
        .expect("absent")
        .is_empty());
}

#[test]
fn integrated_or_discrete() {
    let base = AmdFacts {
        vram_total_bytes: 16 * GIB,
        ..AmdFacts::default()
    };
    let named = |name: &str, vram: u64, vendor: Option<&str>| AmdFacts {
        name: Some(name.into()),
        vram_total_bytes: vram,
        vram_vendor: vendor.map(str::to_string),
        ..base.clone()
    };
    // APU names, whatever the carve-out (Strix Halo can give the GPU 96 GiB).
    assert!(is_integrated(&named("AMD Radeon Graphics", GIB / 2, None)));
    assert!(is_integrated(&named("Radeon 780M Graphics", 4 * GIB, None)));
    assert!(is_integrated(&named(
        "Radeon 8060S Graphics",
        96 * GIB,
        None
    )));
    // Discrete boards.
    assert!(!is_integrated(&named(
        "AMD Radeon RX 7900 XTX",
        24 * GIB,
        Some("samsung")
    )));
    assert!(!is_integrated(&named(
        "AMD Radeon Pro W7900 Graphics",
        48 * GIB,
        None
    )));
    assert!(!is_integrated(&named(
        "Arcturus GL-XL [Instinct MI100]",
        32 * GIB,
        Some("samsung")
    )));
    // Unnamed: no chip vendor and a small carve-out is an APU; a large one is not.
    assert!(is_integrated(&AmdFacts {
        vram_total_bytes: GIB / 2,
        vram_vendor: Some("unknown".into()),
        ..base.clone()
    }));
    assert!(!is_integrated(&base));
}

#[test]
fn gfx_target_precisions() {
    use Precision::*;
    assert_eq!(precisions_for_gfx(None), [F32, F16]);
    assert_eq!(precisions_for_gfx(Some("gfx803")), [F32, F16]);
    assert_eq!(precisions_for_gfx(Some("gfx906")), [F32, F16, Int8Dot]);
    assert_eq!(
        precisions_for_gfx(Some("gfx90a")),
        [F32, F16, Bf16, Int8Dot]
    );
    assert_eq!(
        precisions_for_gfx(Some("gfx942")),
        [F32, F16, Bf16, Int8Dot]
    );
    assert_eq!(precisions_for_gfx(Some("gfx1010")), [F32, F16]);
    assert_eq!(precisions_for_gfx(Some("gfx1031")), [F32, F16, Int8Dot]);
    assert_eq!(
        precisions_for_gfx(Some("gfx1100")),
        [F32, F16, Bf16, Int8Dot]
    );
    assert_eq!(
        precisions_for_gfx(Some("gfx1201")),
        [F32, F16, Bf16, Int8Dot]
    );
    assert_eq!(precisions_for_gfx(Some("gfx")), [F32, F16]);
    assert_eq!(precisions_for_gfx(Some("gfxZZZZ")), [F32, F16]);
    assert_eq!(precisions_for_gfx(Some("gfx1é")), [F32, F16]);
}

#[test]
fn malformed_rocm_smi_is_a_typed_error() {
    assert!(matches!(parse_rocm_smi(""), Err(RocmSmiError::Json(_))));
    assert!(matches!(
        parse_rocm_smi("[1, 2]"),
        Err(RocmSmiError::NotAnObject)
    ));
    assert_eq!(parse_rocm_smi("{}"), Ok(vec![]));
    assert_eq!(
        parse_rocm_smi(r#"{"card0": 5}"#),
        Err(RocmSmiError::CardNotAnObject {
            card: "card0".into()
        })
    );
    assert_eq!(
        parse_rocm_smi(r#"{"card0": {"GPU use (%)": "3"}}"#),
        Err(RocmSmiError::Missing {
            card: "card0".into(),
            field: "VRAM Total Memory (B)"
        })
    );
    let vram = r#""VRAM Total Memory (B)": "1024""#;
    assert!(matches!(
        parse_rocm_smi(&format!(r#"{{"card0": {{{vram}, "GPU use (%)": "300"}}}}"#)),
        Err(RocmSmiError::BadValue {
            field: "GPU use (%)",
            ..
        })
    ));
    assert!(matches!(
        parse_rocm_smi(r#"{"card0": {"VRAM Total Memory (B)": "-5"}}"#),
        Err(RocmSmiError::BadValue { .. })
    ));
    assert!(matches!(
        parse_rocm_smi(&format!(
            r#"{{"card0": {{{vram}, "Temperature (Sensor edge) (C)": "warm"}}}}"#
        )),
        Err(RocmSmiError::BadValue { .. })
    ));
    // Numbers instead of strings are accepted, as some releases print them.
    let n = parse_rocm_smi(r#"{"card2": {"VRAM Total Memory (B)": 2048, "GPU use (%)": 7}}"#)
        .expect("numbers");
    assert_eq!(n[0].vram_total_bytes, 2048);
    assert_eq!(n[0].utilisation, Some(0.07));
}

#[test]
fn truncated_and_corrupted_rocm_smi_never_panics() {
    for name in ["rx6700xt-rocm612.json", "mi100x4-rocm602.json"] {
        let text = fixture(name);
        let mut failed = 0;
        for end in (0..text.len()).step_by(11) {
            if let Some(prefix) = text.get(..end) {
                if parse_rocm_smi(prefix).is_err() {
                    failed += 1;
                }
            }
        }
        assert!(failed > 0);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut copy = text.as_bytes().to_vec();
            let at = (state as usize) % copy.len();
            copy[at] = (state >> 40) as u8;
            let _ = parse_rocm_smi(&String::from_utf8_lossy(&copy));
        }
    }
}
