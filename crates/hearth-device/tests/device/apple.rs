//! Metal probe: `system_profiler` JSON and text, `sysctl`, and the unified-memory budget.

use hearth_device::probe::apple::{
    accelerators, metal_budget, parse_displays_json, parse_displays_text, parse_sysctl, AppleError,
    Vendor,
};
use hearth_device::{Backend, DeviceKind};

const GIB: u64 = 1 << 30;

fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/apple/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

#[test]
fn m1_json_and_sysctl_give_an_integrated_metal_gpu() {
    let gpus = parse_displays_json(&fixture("m1-macbook-spdisplays.json")).expect("parses");
    assert_eq!(gpus.len(), 1);
    let g = &gpus[0];
    assert_eq!(g.name, "Apple M1");
    assert_eq!(g.vendor, Vendor::Apple);
    assert_eq!(g.cores, Some(7));
    assert_eq!(g.metal_family.as_deref(), Some("Apple 7"));
    assert!(g.builtin && g.vram_bytes.is_none());

    let sys = parse_sysctl(&fixture("synthetic-m1-16gb.sysctl")).expect("sysctl");
    assert_eq!(sys.memsize, 16 * GIB);
    assert_eq!(
        (sys.performance_cores, sys.efficiency_cores),
        (Some(4), Some(4))
    );
    let a = &accelerators(&gpus, &sys)[0];
    assert_eq!(a.kind, DeviceKind::IntegratedGpu);
    assert_eq!(a.backends, [Backend::Metal]);
    assert_eq!(a.memory_total_bytes, 16 * GIB);
    // 2/3 of 16 GiB: the 10.67 GB measured on 16 GB machines.
    assert_eq!(a.memory_budget_bytes, 16 * GIB / 3 * 2);
    assert_eq!(a.id, "metal-apple-m1-7c");
    assert_eq!(a.architecture.as_deref(), Some("Apple M1"));
    assert_eq!(a.runtime_version.as_deref(), Some("Apple 7"));
}

#[test]
fn imac_pro_text_gives_a_discrete_amd_gpu() {
    let gpus =
        parse_displays_text(&fixture("imac-pro-2017-vega64-spdisplays.txt")).expect("parses");
    assert_eq!(gpus.len(), 1, "the display entry is not a GPU");
    let g = &gpus[0];
    assert_eq!(g.name, "Radeon Pro Vega 64");
    assert_eq!(g.vendor, Vendor::Amd);
    assert_eq!(g.vram_bytes, Some(16 * GIB));
    assert_eq!(g.device_id.as_deref(), Some("0x6860"));
    assert_eq!(g.metal_family.as_deref(), Some("macOS GPUFamily2 v1"));
    let sys = parse_sysctl("hw.memsize: 34359738368\n").expect("sysctl");
    let a = &accelerators(&gpus, &sys)[0];
    assert_eq!(a.kind, DeviceKind::DiscreteGpu);
    assert_eq!(
        (a.memory_total_bytes, a.memory_budget_bytes),
        (16 * GIB, 16 * GIB)
    );
    assert_eq!(a.id, "metal-amd-0x6860");
}

#[test]
fn metal_budget_rule_and_wired_limit_override() {
    assert_eq!(metal_budget(8 * GIB, None), 8 * GIB / 3 * 2);
    assert_eq!(metal_budget(36 * GIB, Some(0)), 24 * GIB);
    assert_eq!(metal_budget(128 * GIB, None), 96 * GIB);
    assert_eq!(metal_budget(64 * GIB, Some(58 * 1024)), 58 * GIB);
    // A limit above RAM cannot be wired either.
    assert_eq!(metal_budget(16 * GIB, Some(1 << 30)), 16 * GIB);
}

#[test]
fn bad_outputs_are_typed_errors() {
    assert!(matches!(parse_displays_json(""), Err(AppleError::Json(_))));
    assert!(matches!(
        parse_displays_json("{}"),
        Err(AppleError::NoDisplaysList)
    ));
    assert!(matches!(
        parse_displays_json(r#"{"SPDisplaysDataType": []}"#),
        Err(AppleError::NoGpu)
    ));
    assert!(matches!(
        parse_displays_json(
            r#"{"SPDisplaysDataType": [{"_name": "X", "spdisplays_vram": "lots"}]}"#
        ),
        Err(AppleError::BadSize { .. })
    ));
    assert!(matches!(parse_displays_text(""), Err(AppleError::NoGpu)));
    assert!(matches!(parse_sysctl(""), Err(AppleError::NoMemsize)));
    assert!(matches!(
        parse_sysctl("hw.memsize: many\n"),
        Err(AppleError::BadNumber { .. })
    ));
    assert!(matches!(
        parse_sysctl("no separator\n"),
        Err(AppleError::MalformedLine { line: 1, .. })
    ));
    assert!(matches!(
        parse_sysctl("hw.memsize: 1\nhw.perflevel0.physicalcpu: 99999999999\n"),
        Err(AppleError::BadNumber { .. })
    ));
}

#[test]
fn mutated_outputs_never_panic() {
    for name in [
        "m1-macbook-spdisplays.json",
        "imac-pro-2017-vega64-spdisplays.txt",
        "synthetic-m1-16gb.sysctl",
    ] {
        super::mutations(fixture(name).as_bytes(), |text| {
            let _ = parse_displays_json(text);
            let _ = parse_displays_text(text);
            let _ = parse_sysctl(text);
        });
    }
}
