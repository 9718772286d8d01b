//! `hearth devices`: this node's compute devices with their measured figures. Measurements are
//! taken once per hardware configuration and kept in the device registry.

use super::declared::Declared;
use anyhow::Context;
use clap::Args;
use hearth_device::bench::{self, BenchConfig};
use hearth_device::telemetry::{Sample, Sampler, TelemetryConfig};
use hearth_device::{cpu, probe, Accelerator, Lookup, Registry, ThermalStandIn};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure again even when the registry holds figures for this hardware.
    #[arg(long)]
    pub remeasure: bool,
    /// Print a telemetry line (memory, utilisation, temperature, power, battery, throttling)
    /// every period until interrupted, instead of the device table.
    #[arg(long)]
    pub watch: bool,
    /// The telemetry period for `--watch`, milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub period_ms: u64,
    /// Stop `--watch` after this many lines.
    #[arg(long)]
    pub samples: Option<u64>,
    /// Also list the device this node stands in for (a TOML device profile; see `hearth run
    /// --help`), marked as declared; with `--watch`, its simulated temperature when the
    /// profile declares `[thermal]`.
    #[arg(long, value_name = "FILE")]
    pub device_profile: Option<std::path::PathBuf>,
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    let declared = args
        .device_profile
        .as_deref()
        .map(Declared::load)
        .transpose()?;
    if args.watch {
        return watch(args.period_ms, args.samples, declared.as_ref());
    }
    let lookup = measured_cpu(args.remeasure)?;
    let devices = [lookup];
    let found = probe::discover();
    for w in &found.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        let mut list: Vec<_> = devices.iter().map(device_json).collect();
        for a in &found.devices {
            list.push(serde_json::to_value(a)?);
        }
        list.extend(declared.iter().map(Declared::json));
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "devices": list }))?
        );
    } else {
        print_table(&devices);
        found.devices.iter().for_each(print_accelerator);
        if let Some(d) = &declared {
            print_declared(d);
        }
    }
    Ok(())
}

fn print_accelerator(a: &Accelerator) {
    let join = |items: Vec<&str>| items.join(", ");
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "n/a".to_string());
    let r = &a.reading;
    let mut rows = vec![
        ("id", a.id.clone()),
        ("name", format!("{} ({}, {:?})", a.name, a.vendor, a.kind)),
        (
            "backend",
            join(a.backends.iter().map(|b| b.as_str()).collect()),
        ),
        (
            "precisions",
            join(a.precisions.iter().map(|p| p.as_str()).collect()),
        ),
        (
            "memory",
            format!(
                "{} total, {} budget",
                gib(a.memory_total_bytes),
                gib(a.memory_budget_bytes)
            ),
        ),
        ("arch", opt(&a.architecture)),
        ("driver", opt(&a.driver_version)),
        ("runtime", opt(&a.runtime_version)),
    ];
    let reading: Vec<String> = [
        r.temperature_c.map(|c| format!("{c:.0} °C")),
        r.power_w.map(|w| format!("{w:.0} W")),
        r.utilisation.map(|u| format!("{:.0} % busy", 100.0 * u)),
        r.battery_level
            .map(|b| format!("battery {:.0} %", 100.0 * b)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !reading.is_empty() {
        rows.push(("now", reading.join(", ")));
    }
    rows.push(("found by", a.source.clone()));
    for (k, v) in rows {
        println!("{k:<11} {v}");
    }
    println!();
}

fn print_declared(d: &Declared) {
    let p = &d.profile;
    let rows = [
        (
            "name",
            format!("{} (declared in {})", p.name, d.path.display()),
        ),
        ("backend", p.backend.clone()),
        ("precisions", p.precisions.join(" ")),
        ("memory", format!("{} declared", gib(p.memory_bytes()))),
        ("bandwidth", format!("{:.1} GB/s declared", p.bandwidth_gbs)),
        ("compute", format!("{:.3} TFLOP/s declared", p.tflops)),
        (
            "runs at",
            format!("{:.3} of this machine ({})", d.compute_share, d.share_basis),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<11} {v}");
    }
    println!();
}

/// This machine's CPU with its measured figures: from the registry, or measured now (and
/// stored) when the registry has none for this hardware or `remeasure` asks for fresh ones.
pub fn measured_cpu(remeasure: bool) -> anyhow::Result<Lookup> {
    let info = cpu::probe().context("probing the CPU")?;
    let registry = Registry::open_default()?;
    let lookup = registry
        .cpu(&info, remeasure, || {
            eprintln!("measuring this machine's memory bandwidth and compute (a few seconds)…");
            bench::measure(&BenchConfig::default())
        })
        .with_context(|| format!("device registry {}", registry.path().display()))?;
    if lookup.discarded_corrupt {
        eprintln!(
            "warning: {} was unreadable and has been rewritten",
            registry.path().display()
        );
    }
    Ok(lookup)
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

/// Ctrl-C ends the loop through the default signal action; nothing needs flushing beyond each
/// line, which is written whole.
fn watch(period_ms: u64, samples: Option<u64>, declared: Option<&Declared>) -> anyhow::Result<()> {
    let mut stand_in = declared
        .and_then(|d| d.profile.thermal.as_ref())
        .map(ThermalStandIn::new)
        .transpose()
        .context("the declared thermal parameters")?;
    let sampler = Sampler::start(TelemetryConfig {
        period: Duration::from_millis(period_ms),
        ..TelemetryConfig::default()
    })
    .context("starting telemetry")?;
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    while samples.is_none_or(|n| printed < n) {
        let s = sampler
            .recv()
            .context("the telemetry thread stopped unexpectedly")?;
        let mut line = telemetry_line(&s);
        if let (Some(sim), Some(d)) = (stand_in.as_mut(), declared) {
            let r = sim.step(
                f64::from(s.utilisation),
                period_ms as f64 / 1e3,
                d.profile.on_battery,
                None,
            )?;
            line += &format!(
                "; declared `{}`: {:.1} °C simulated{}, thermal headroom {:.2}",
                d.profile.name,
                r.temp_c,
                if r.over_threshold {
                    " (over threshold)"
                } else {
                    ""
                },
                r.decision.thermal_headroom
            );
        }
        writeln!(out, "{line}")?;
        out.flush()?;
        printed += 1;
    }
    Ok(())
}

fn telemetry_line(s: &Sample) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "n/a".to_string());
    format!(
        "memory {} used, {} available; utilisation {:.1} %; temperature {}; power {}; \
         battery {}; throttled {}",
        gib(s.memory_used()),
        gib(s.memory_available),
        100.0 * s.utilisation,
        opt(s.temperature_c.map(|c| format!("{c:.1} °C"))),
        opt(s.power_w.map(|w| format!("{w:.1} W"))),
        opt(s.battery.map(|b| format!(
            "{:.0} % {}",
            100.0 * b.level,
            if b.charging {
                "charging"
            } else {
                "not charging"
            }
        ))),
        if s.throttled { "yes" } else { "no" },
    )
}
