//! The micro-benchmarks on a small buffer: they run and give sane figures.

use hearth_device::bench::{measure, BenchConfig};
use hearth_device::BenchError;

#[test]
fn small_buffer_gives_positive_figures() {
    let cfg = BenchConfig {
        buffer_bytes: 16 << 20,
        threads: 2,
        runs: 2,
        prefill_tokens: 16,
    };
    let m = measure(&cfg).unwrap();
    assert!(m.bandwidth_gbs > 0.0 && m.bandwidth_gbs.is_finite());
    assert!(m.read_baseline_gbs > 0.0 && m.read_baseline_gbs.is_finite());
    assert!(m.tflops > 0.0 && m.tflops.is_finite());
    assert_eq!(m.threads, 2);
    assert!(m.measured_at > 1_700_000_000);
}

#[test]
fn zero_settings_are_rejected() {
    let cfg = BenchConfig {
        threads: 0,
        ..BenchConfig::default()
    };
    assert!(matches!(measure(&cfg), Err(BenchError::BadConfig(_))));
}
