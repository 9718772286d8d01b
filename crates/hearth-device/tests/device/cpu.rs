//! `/proc/cpuinfo` and `/proc/meminfo` parsing against captured and synthetic fixtures.

use hearth_device::cpu::{parse, parse_cpuinfo, parse_meminfo, probe};
use hearth_device::CpuInfoError;

fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cpu/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

#[test]
fn amd_epyc_vm() {
    let info = parse(
        &fixture("amd-epyc-vm-2vcpu.cpuinfo"),
        &fixture("amd-epyc-vm-2vcpu.meminfo"),
    )
    .unwrap();
    assert_eq!(info.model_name, "AMD EPYC");
    assert_eq!(info.logical_cores, 2);
    assert_eq!(info.physical_cores, 2);
    let s = info.simd;
    assert!(s.avx2 && s.fma && s.f16c);
    assert!(s.avx512f && s.avx512bw && s.avx512vl && s.avx512_vnni && s.avx512_bf16 && s.avx_vnni);
    assert!(!s.neon && !s.asimddp && !s.fp16);
    assert_eq!(info.mem_total_bytes, 24684092 * 1024);
    assert_eq!(info.mem_available_bytes, 23278044 * 1024);
    assert_eq!(info.precisions(), ["f32", "f16", "bf16", "int8-dot"]);

    let r = info.record();
    assert!(r.id.starts_with("cpu-") && r.id.len() == 20);
    assert_eq!(r.backends, ["cpu"]);
    assert_eq!(r.memory_budget_bytes, info.mem_available_bytes);
    assert_eq!(
        info.fingerprint(),
        "AMD EPYC|2 threads|24 GiB|avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512_vnni,avx512_bf16,avx_vnni"
    );
}

#[test]
fn synthetic_aarch64() {
    let info = parse(
        &fixture("synthetic-aarch64-4core.cpuinfo"),
        &fixture("synthetic-aarch64-4core.meminfo"),
    )
    .unwrap();
    assert_eq!(info.model_name, "aarch64 implementer 0x41 part 0xd0b");
    assert_eq!((info.logical_cores, info.physical_cores), (4, 4));
    assert!(info.simd.neon && info.simd.fp16 && info.simd.asimddp);
    assert!(!info.simd.avx2 && !info.simd.avx512f);
    assert_eq!(info.precisions(), ["f32", "f16", "int8-dot"]);
}

#[test]
fn ids_are_stable_and_ignore_memory() {
    let a = parse(
        &fixture("amd-epyc-vm-2vcpu.cpuinfo"),
        &fixture("amd-epyc-vm-2vcpu.meminfo"),
    )
    .unwrap();
    let mut b = a.clone();
    b.mem_available_bytes /= 2;
    b.mem_total_bytes *= 2;
    assert_eq!(a.device_id(), b.device_id());
    assert_ne!(a.fingerprint(), b.fingerprint());
    // Fixed by FNV-1a's definition: a changed id would orphan every stored measurement.
    assert_eq!(a.device_id(), a.clone().device_id());
    b.logical_cores = 4;
    assert_ne!(a.device_id(), b.device_id());
}

#[test]
fn hyperthreads_and_packages() {
    // Two packages, two cores each, two threads per core.
    let mut text = String::new();
    let mut n = 0;
    for pkg in 0..2 {
        for _thread in 0..2 {
            for core in 0..2 {
                text += &format!(
                    "processor\t: {n}\nmodel name\t: Test CPU\nphysical id\t: {pkg}\ncore id\t\t: {core}\ncpu cores\t: 2\nflags\t\t: avx2 fma\n\n"
                );
                n += 1;
            }
        }
    }
    let c = parse_cpuinfo(&text).unwrap();
    assert_eq!((c.logical_cores, c.physical_cores), (8, 4));

    // Without core ids, `cpu cores` per package decides.
    let text: String = (0..4)
        .map(|i| format!("processor : {i}\nphysical id : 0\ncpu cores : 2\n\n"))
        .collect();
    assert_eq!(parse_cpuinfo(&text).unwrap().physical_cores, 2);
}

#[test]
fn malformed_input_is_a_typed_error() {
    assert_eq!(parse_cpuinfo(""), Err(CpuInfoError::NoProcessors));
    assert_eq!(
        parse_cpuinfo("model name : x\n"),
        Err(CpuInfoError::NoProcessors)
    );
    assert!(matches!(
        parse_cpuinfo("processor : zero\n"),
        Err(CpuInfoError::BadNumber { line: 1, .. })
    ));
    assert!(matches!(
        parse_cpuinfo("processor : 0\nthis line has no separator\n"),
        Err(CpuInfoError::MalformedLine { line: 2, .. })
    ));
    assert!(matches!(
        parse_cpuinfo("core id : 0\nprocessor : 0\n"),
        Err(CpuInfoError::MalformedLine { line: 1, .. })
    ));
    assert!(matches!(
        parse_cpuinfo("processor : 0\ncore id : -1\n"),
        Err(CpuInfoError::BadNumber { line: 2, .. })
    ));

    assert!(matches!(
        parse_meminfo("MemTotal: 100 kB\n"),
        Err(CpuInfoError::Missing {
            key: "MemAvailable",
            ..
        })
    ));
    assert!(matches!(
        parse_meminfo("MemTotal: lots kB\nMemAvailable: 1 kB\n"),
        Err(CpuInfoError::BadNumber { line: 1, .. })
    ));
    assert!(matches!(
        parse_meminfo("MemTotal: 100 MB\nMemAvailable: 1 kB\n"),
        Err(CpuInfoError::BadUnit { line: 1, .. })
    ));
    assert!(matches!(
        parse_meminfo("MemTotal 100 kB\n"),
        Err(CpuInfoError::MalformedLine { line: 1, .. })
    ));
    // Huge values saturate rather than overflow.
    let m = parse_meminfo("MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n").unwrap();
    assert_eq!(m.total_bytes, u64::MAX);
}

#[test]
fn garbage_never_panics() {
    const ALPHABET: &[u8] = b"processor: 0123456789abcxkB\n\t MemTotalAvailcore idphysical";
    let mut s: u64 = 42;
    for _ in 0..2000 {
        let len = (s % 200) as usize;
        let text: String = (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ALPHABET[(s % ALPHABET.len() as u64) as usize] as char
            })
            .collect();
        let _ = parse(&text, &text);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn this_machine() {
    let info = probe().unwrap();
    assert!(info.logical_cores >= 1 && info.physical_cores >= 1);
    assert!(info.mem_total_bytes >= info.mem_available_bytes && info.mem_available_bytes > 0);
}
