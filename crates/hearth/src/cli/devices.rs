//! `hearth devices`: this node's compute devices with their measured figures. Measurements are
//! taken once per hardware configuration and kept in the device registry.

use anyhow::Context;
use clap::Args;
use hearth_device::bench::{self, BenchConfig};
use hearth_device::{cpu, Lookup, Registry};
use serde_json::json;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure again even when the registry holds figures for this hardware.
    #[arg(long)]
    pub remeasure: bool,
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    let info = cpu::probe().context("probing the CPU")?;
    let registry = Registry::open_default()?;
    let lookup = registry
        .cpu(&info, args.remeasure, || {
            bench::measure(&BenchConfig::default())
        })
        .with_context(|| format!("device registry {}", registry.path().display()))?;
    if lookup.discarded_corrupt {
        eprintln!(
            "warning: {} was unreadable and has been rewritten",
            registry.path().display()
        );
    }
    let devices = [lookup];
    if args.json {
        let list: Vec<_> = devices.iter().map(device_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "devices": list }))?
        );
    } else {
        print_table(&devices);
    }
    Ok(())
}

fn device_json(l: &Lookup) -> serde_json::Value {
    let r = &l.entry.record;
    let m = &l.entry.measurement;
    json!({
        "id": r.id,
        "name": r.name,
        "backends": r.backends,
        "logical_cores": r.logical_cores,
        "physical_cores": r.physical_cores,
        "simd": r.simd,
        "precisions": r.precisions,
        "memory_total_bytes": r.memory_total_bytes,
        "memory_budget_bytes": r.memory_budget_bytes,
        "bandwidth_gbs": m.bandwidth_gbs,
        "read_baseline_gbs": m.read_baseline_gbs,
        "tflops": m.tflops,
        "threads": m.threads,
        "measured_at": m.measured_at,
        "cached": l.cached,
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn print_table(devices: &[Lookup]) {
    for l in devices {
        let r = &l.entry.record;
        let m = &l.entry.measurement;
        let rows = [
            ("id", r.id.clone()),
            ("name", r.name.clone()),
            ("backend", r.backends.join(", ")),
            (
                "cores",
                format!("{} physical, {} logical", r.physical_cores, r.logical_cores),
            ),
            ("simd", r.simd.join(" ")),
            ("precisions", r.precisions.join(" ")),
            (
                "memory",
                format!(
                    "{} total, {} available",
                    gib(r.memory_total_bytes),
                    gib(r.memory_budget_bytes)
                ),
            ),
            (
                "bandwidth",
                format!(
                    "{:.1} GB/s Q4_0 mat-vec, {:.1} GB/s plain read ({:.0} %)",
                    m.bandwidth_gbs,
                    m.read_baseline_gbs,
                    100.0 * m.bandwidth_gbs / m.read_baseline_gbs
                ),
            ),
            ("compute", format!("{:.3} TFLOP/s Q8_0 prefill", m.tflops)),
            (
                "measured",
                format!(
                    "{} threads, {}",
                    m.threads,
                    if l.cached {
                        "cached (--remeasure to measure again)"
                    } else {
                        "just now"
                    }
                ),
            ),
        ];
        for (k, v) in rows {
            println!("{k:<11} {v}");
        }
        println!();
    }
}
