//! SoC GPU probe on a fake Android sysfs tree built from real values.

use hearth_device::probe::android::{
    cpuinfo_hardware, parse_gpubusy, parse_mali_gpuinfo, parse_percent, probe_with,
};
use hearth_device::{Backend, DeviceKind};
use std::path::{Path, PathBuf};

fn tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/android/oneplus13-adreno830")
}

#[test]
fn adreno_tree_gives_an_integrated_gpu_with_readings() {
    let found = probe_with(&tree(), &[]).expect("probe");
    assert_eq!(found.len(), 1);
    let a = &found[0];
    assert_eq!(a.name, "Adreno830v2");
    assert_eq!(a.vendor, "Qualcomm");
    assert_eq!(a.kind, DeviceKind::IntegratedGpu);
    assert_eq!(
        a.backends,
        [Backend::Vulkan],
        "vulkan.adreno.so is installed"
    );
    assert_eq!(a.architecture.as_deref(), Some("Snapdragon SUN"));
    assert_eq!(a.id, "soc-gpu-snapdragon-sun-adreno830v2");
    assert_eq!(a.memory_total_bytes, 15_617_796 * 1024);
    assert_eq!(a.memory_budget_bytes, 6_502_356 * 1024);
    let r = &a.reading;
    assert_eq!(r.utilisation, Some(1523.0 / 20000.0));
    assert_eq!(r.temperature_c, Some(38.6), "the gpuss zone, not the CPU's");
    assert_eq!(r.battery_level, Some(0.76));
    assert_eq!(r.charging, Some(false));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn mali_without_vulkan_and_plain_linux() {
    let root = super::sim::scratch_dir("android-mali");
    let mali = root.join("sys/class/misc/mali0/device");
    std::fs::create_dir_all(&mali).expect("mkdir");
    std::fs::write(mali.join("gpuinfo"), "Mali-G78 20 cores r1p1 0x9091\n").expect("gpuinfo");
    std::fs::write(mali.join("utilization"), "37\n").expect("utilization");
    std::fs::create_dir_all(root.join("proc")).expect("proc");
    std::fs::write(
        root.join("proc/meminfo"),
        "MemTotal: 7812000 kB\nMemAvailable: 3100000 kB\n",
    )
    .expect("meminfo");
    std::fs::write(
        root.join("proc/cpuinfo"),
        "Processor\t: AArch64\nHardware\t: Exynos2100\n",
    )
    .expect("cpuinfo");
    let a = &probe_with(&root, &[]).expect("probe")[0];
    assert_eq!(a.name, "Mali-G78 MP20");
    assert!(a.backends.is_empty(), "no Vulkan driver under the root");
    assert_eq!(a.architecture.as_deref(), Some("Exynos2100"));
    assert_eq!(a.reading.utilisation, Some(0.37));
    assert_eq!(a.reading.battery_level, None);

    // An x86 Linux box: no kgsl, no mali, nothing found and no error.
    let plain = super::sim::scratch_dir("android-none");
    std::fs::create_dir_all(plain.join("sys/class/thermal")).expect("mkdir");
    assert!(probe_with(&plain, &[]).expect("probe").is_empty());
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&plain);
}

#[test]
fn getprop_names_the_soc_when_sysfs_does_not() {
    let root = super::sim::scratch_dir("android-props");
    copy_tree(&tree(), &root);
    std::fs::remove_dir_all(root.join("sys/devices/soc0")).expect("rm soc0");
    let props = [("ro.soc.model".to_string(), "SM8750".to_string())];
    let a = &probe_with(&root, &props).expect("probe")[0];
    assert_eq!(a.architecture.as_deref(), Some("SM8750"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn broken_files_are_typed_errors() {
    assert_eq!(parse_gpubusy("0 0").expect("empty window"), None);
    assert!(parse_gpubusy("").is_err());
    assert!(parse_gpubusy("1 2 3").is_err());
    assert!(parse_gpubusy("-1 2").is_err());
    assert_eq!(parse_percent("u", "12 %").expect("kgsl form"), 0.12);
    assert!(parse_percent("u", "101").is_err());
    assert!(parse_mali_gpuinfo("Adreno 640").is_err());
    assert_eq!(cpuinfo_hardware("Hardware\t:\n"), None);

    let root = super::sim::scratch_dir("android-broken");
    copy_tree(&tree(), &root);
    std::fs::write(root.join("sys/class/kgsl/kgsl-3d0/gpubusy"), "busy\n").expect("write");
    assert!(probe_with(&root, &[]).is_err());
    copy_tree(&tree(), &root);
    std::fs::write(root.join("proc/meminfo"), "MemTotal: 1 kB\n").expect("write");
    assert!(probe_with(&root, &[]).is_err());
    copy_tree(&tree(), &root);
    std::fs::remove_file(root.join("sys/class/kgsl/kgsl-3d0/gpu_model")).expect("rm");
    assert!(probe_with(&root, &[]).is_err());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn mutated_files_never_panic() {
    for rel in [
        "sys/class/kgsl/kgsl-3d0/gpubusy",
        "proc/meminfo",
        "sys/class/thermal/thermal_zone1/temp",
        "sys/class/power_supply/battery/capacity",
    ] {
        let text = std::fs::read(tree().join(rel)).expect("fixture");
        super::mutations(&text, |t| {
            let _ = parse_gpubusy(t);
            let _ = parse_percent("f", t);
            let _ = parse_mali_gpuinfo(t);
            let _ = cpuinfo_hardware(t);
            let _ = hearth_device::cpu::parse_meminfo(t);
        });
    }
}
