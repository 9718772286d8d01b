//! The measurement registry: reuse across restarts, invalidation, corrupt files.

use hearth_device::cpu::parse;
use hearth_device::registry::default_path;
use hearth_device::{CpuInfo, Measurement, Registry};
use std::cell::Cell;
use std::path::PathBuf;

fn cpu() -> CpuInfo {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cpu/");
    let read = |n: &str| std::fs::read_to_string(format!("{dir}{n}")).unwrap();
    parse(
        &read("amd-epyc-vm-2vcpu.cpuinfo"),
        &read("amd-epyc-vm-2vcpu.meminfo"),
    )
    .unwrap()
}

fn fake(n: u32) -> Measurement {
    Measurement {
        bandwidth_gbs: 20.0 + n as f64,
        read_baseline_gbs: 25.0,
        tflops: 0.5,
        threads: 2,
        measured_at: 1_800_000_000,
    }
}

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-device-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn survives_restart_and_remeasures_on_request() {
    let path = temp_file("restart.json");
    let calls = Cell::new(0);
    let measure = || {
        calls.set(calls.get() + 1);
        Ok(fake(calls.get()))
    };
    let first = Registry::at(&path).cpu(&cpu(), false, measure).unwrap();
    assert!(!first.cached && !first.discarded_corrupt);
    assert_eq!(calls.get(), 1);

    // A new registry object on the same file stands for a restarted node.
    let again = Registry::at(&path).cpu(&cpu(), false, measure).unwrap();
    assert!(again.cached);
    assert_eq!(calls.get(), 1);
    assert_eq!(again.entry.measurement, first.entry.measurement);

    let forced = Registry::at(&path).cpu(&cpu(), true, measure).unwrap();
    assert!(!forced.cached);
    assert_eq!(calls.get(), 2);
    assert_eq!(forced.entry.measurement.bandwidth_gbs, 22.0);
    let after = Registry::at(&path).cpu(&cpu(), false, measure).unwrap();
    assert_eq!(after.entry.measurement.bandwidth_gbs, 22.0);
    assert_eq!(calls.get(), 2);
}

#[test]
fn new_fingerprint_invalidates() {
    let path = temp_file("fingerprint.json");
    let calls = Cell::new(0);
    let measure = || {
        calls.set(calls.get() + 1);
        Ok(fake(calls.get()))
    };
    let reg = Registry::at(&path);
    reg.cpu(&cpu(), false, measure).unwrap();

    // Memory available moves all the time and must not count as new hardware.
    let mut busier = cpu();
    busier.mem_available_bytes /= 3;
    assert!(reg.cpu(&busier, false, measure).unwrap().cached);

    let mut upgraded = cpu();
    upgraded.mem_total_bytes *= 2;
    let l = reg.cpu(&upgraded, false, measure).unwrap();
    assert!(!l.cached);
    assert_eq!(calls.get(), 2);

    let mut no_avx512 = upgraded.clone();
    no_avx512.simd.avx512f = false;
    assert!(!reg.cpu(&no_avx512, false, measure).unwrap().cached);
    assert_eq!(calls.get(), 3);

    // Same device id: the file keeps one entry, the newest.
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn corrupt_file_is_discarded_and_remeasured() {
    for junk in [
        &b"{not json"[..],
        b"",
        b"{\"version\": 99, \"devices\": []}",
        b"{\"version\": 1, \"devices\": [{\"fingerprint\": 3}]}",
        b"\xff\xfe\x00garbage",
    ] {
        let path = temp_file("corrupt.json");
        std::fs::write(&path, junk).unwrap();
        let calls = Cell::new(0);
        let measure = || {
            calls.set(calls.get() + 1);
            Ok(fake(0))
        };
        let l = Registry::at(&path).cpu(&cpu(), false, measure).unwrap();
        assert!(!l.cached && l.discarded_corrupt, "{junk:?}");
        assert_eq!(calls.get(), 1);
        let l = Registry::at(&path).cpu(&cpu(), false, measure).unwrap();
        assert!(l.cached && !l.discarded_corrupt);
    }
}

#[test]
fn unwritable_location_is_an_error() {
    let blocker = temp_file("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let reg = Registry::at(blocker.join("devices.json"));
    assert!(reg.cpu(&cpu(), false, || Ok(fake(0))).is_err());
}

#[test]
fn default_location() {
    assert_eq!(
        default_path(Some("/x".into()), Some("/home/u".into())),
        Some(PathBuf::from("/x/hearth/devices.json"))
    );
    assert_eq!(
        default_path(None, Some("/home/u".into())),
        Some(PathBuf::from("/home/u/.local/share/hearth/devices.json"))
    );
    assert_eq!(default_path(None, None), None);
}
