//! What this node states about itself: its devices (probed and measured, or declared) and
//! their live telemetry, in the cluster's plain types.

use crate::cli::declared::Declared;
use hearth_cluster::{DeviceSummary, DeviceTelemetry};
use hearth_device::{probe, Accelerator, Lookup, StandInReading};

/// Devices of this node. A declared device replaces the real ones: the node stands in for it.
pub fn devices(cpu: Option<&Lookup>, declared: Option<&Declared>) -> Vec<DeviceSummary> {
    if let Some(d) = declared {
        let p = &d.profile;
        return vec![DeviceSummary {
            id: format!("declared-{}", p.name),
            name: p.name.clone(),
            backends: vec![p.backend.clone()],
            memory_total_bytes: p.memory_bytes(),
            memory_budget_bytes: p.memory_bytes(),
            bandwidth_gbs: p.bandwidth_gbs,
            tflops: p.tflops,
            thermal_headroom: p.thermal_headroom,
            declared: true,
        }];
    }
    let mut out = Vec::new();
    if let Some(l) = cpu {
        let r = &l.entry.record;
        let m = &l.entry.measurement;
        out.push(DeviceSummary {
            id: r.id.clone(),
            name: r.name.clone(),
            backends: r.backends.clone(),
            memory_total_bytes: r.memory_total_bytes,
            memory_budget_bytes: r.memory_budget_bytes,
            bandwidth_gbs: m.bandwidth_gbs,
            tflops: m.tflops,
            thermal_headroom: 1.0,
            declared: false,
        });
    }
    out.extend(probe::discover().devices.iter().map(accelerator));
    out
}

fn accelerator(a: &Accelerator) -> DeviceSummary {
    DeviceSummary {
        id: a.id.clone(),
        name: a.name.clone(),
        backends: a.backends.iter().map(|b| b.as_str().to_string()).collect(),
        memory_total_bytes: a.memory_total_bytes,
        memory_budget_bytes: a.memory_budget_bytes,
        // Not measured: the engine has no kernels for these backends yet.
        bandwidth_gbs: 0.0,
        tflops: 0.0,
        thermal_headroom: 1.0,
        declared: false,
    }
}

/// One telemetry sample of the CPU, or of the declared device standing on it (with its
/// simulated temperature and the governor's headroom when the profile declares `[thermal]`).
pub fn telemetry(
    device: &str,
    s: &hearth_device::telemetry::Sample,
    declared: Option<&Declared>,
    stand_in: Option<&StandInReading>,
    now_ms: u64,
) -> DeviceTelemetry {
    let (budget, headroom, on_battery) = declared.map_or(
        (s.memory_total, 1.0, s.battery.is_some_and(|b| !b.charging)),
        |d| {
            (
                d.profile.memory_bytes(),
                d.profile.thermal_headroom,
                d.profile.on_battery,
            )
        },
    );
    let mut t = DeviceTelemetry {
        device: device.to_string(),
        memory_used_bytes: s.memory_used().min(budget),
        utilisation: f64::from(s.utilisation.clamp(0.0, 1.0)),
        temperature_c: s.temperature_c.map(f64::from),
        power_w: s.power_w.map(f64::from),
        battery: s.battery.map(|b| f64::from(b.level)),
        on_battery,
        throttled: s.throttled,
        thermal_headroom: headroom,
        sampled_ms: now_ms,
    };
    if let Some(r) = stand_in {
        t.temperature_c = Some(r.temp_c);
        t.throttled = r.over_threshold;
        t.thermal_headroom = headroom.min(r.decision.thermal_headroom).clamp(0.0, 1.0);
    }
    t
}
