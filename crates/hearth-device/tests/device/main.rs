//! hearth-device tests: the thermal model's closed forms and fit, the governor on a simulated
//! device read through a fake sysfs tree, the battery policy, and sysfs parsing; CPU probing
//! from `/proc` fixtures, the micro-benchmarks and the measurement registry; the NVIDIA, AMD,
//! Metal, DirectML, Android and Vulkan probes on captured outputs.

mod amd;
mod android;
mod apple;
mod bench;
mod cpu;
mod declared;
mod nvidia;
mod registry;
mod sim;
mod telemetry;
mod vulkan;
mod windows;

use hearth_device::thermal::sysfs::{self, parse_millidegrees, ParseError};
use hearth_device::{
    Governor, GovernorConfig, RcParams, Sample, SampleError, State, SysfsError, ThermalModel,
};
use sim::{Physics, SimDevice, SENSOR};

/// Feeds `check` truncations of `input` at many offsets and copies with single bytes
/// changed: probe parsers must answer every one with a value or an error, never a panic.
pub(crate) fn mutations(input: &[u8], mut check: impl FnMut(&str)) {
    let step = (input.len() / 200).max(1);
    for cut in (0..=input.len()).step_by(step) {
        check(&String::from_utf8_lossy(&input[..cut]));
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..400 {
        if input.is_empty() {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut copy = input.to_vec();
        let at = (seed % copy.len() as u64) as usize;
        let byte = [b'"', b':', b'\n', b'{', b'}', b'0', b'-', 0xff][(seed >> 40) as usize % 8];
        if let Some(b) = copy.get_mut(at) {
            *b = byte;
        }
        check(&String::from_utf8_lossy(&copy));
    }
}

const LATENCY_S: usize = 3;

fn config() -> GovernorConfig {
    GovernorConfig {
        actuation_latency_s: LATENCY_S as f64,
        ..GovernorConfig::default()
    }
}

enum Controller {
    /// Full rate whatever the temperature.
    Off,
    /// Pauses at `threshold − margin`, resumes `hysteresis` below: what a governor without a
    /// model does.
    Reactive {
        paused: bool,
    },
    Predictive(Box<Governor>),
}

#[derive(Default)]
struct Trace {
    /// True (noise-free) temperature after each second.
    temps: Vec<f64>,
    work: f64,
    transitions: usize,
    states: Vec<State>,
    /// The last published `thermal_headroom`.
    headroom: f64,
}

impl Trace {
    fn max_temp(&self) -> f64 {
        self.temps.iter().cloned().fold(f64::MIN, f64::max)
    }
}

/// Runs `seconds` of simulated time: each second the controller reads the sensor through
/// sysfs, decides a rate, and the device runs `min(rate, demand(t))`.
fn run(
    dev: &mut SimDevice,
    ctl: &mut Controller,
    demand: impl Fn(f64) -> f64,
    seconds: usize,
) -> Trace {
    let sensor = sysfs::find_sensor(&dev.root, SENSOR).expect("sensor");
    let cfg = config();
    let mut trace = Trace::default();
    let mut last_state: Option<State> = None;
    for _ in 0..seconds {
        let temp = sensor.read_c().expect("reading");
        let rate = match ctl {
            Controller::Off => 1.0,
            Controller::Reactive { paused } => {
                if temp >= cfg.limit_c() {
                    *paused = true;
                } else if temp <= cfg.limit_c() - cfg.hysteresis_c {
                    *paused = false;
                }
                if *paused {
                    0.0
                } else {
                    1.0
                }
            }
            Controller::Predictive(gov) => {
                let d = gov
                    .update(&Sample {
                        time_s: dev.time_s,
                        temp_c: temp,
                        load: dev.last_load,
                        on_battery: false,
                        battery_level: None,
                    })
                    .expect("valid sample");
                if let Some(prev) = last_state {
                    if !prev.same_kind(&d.state) {
                        trace.transitions += 1;
                    }
                }
                last_state = Some(d.state);
                trace.states.push(d.state);
                trace.headroom = d.thermal_headroom;
                d.rate
            }
        };
        dev.tick(rate, demand(dev.time_s));
        trace.work += dev.last_load;
        trace.temps.push(dev.physics.temp_c);
    }
    trace
}

fn governor() -> Controller {
    Controller::Predictive(Box::new(Governor::new(config()).expect("config")))
}

#[test]
fn sustained_full_load_crosses_without_governor_and_not_with_it() {
    let cfg = config();
    let demand = |t: f64| if t < 30.0 { 0.0 } else { 1.0 };
    let off = run(
        &mut SimDevice::new("off", 1, LATENCY_S),
        &mut Controller::Off,
        demand,
        600,
    );
    assert!(
        off.max_temp() > cfg.threshold_c,
        "ungoverned peak {:.1}",
        off.max_temp()
    );

    let on = run(
        &mut SimDevice::new("on", 1, LATENCY_S),
        &mut governor(),
        demand,
        600,
    );
    let above_limit = on.temps.iter().filter(|&&t| t > cfg.limit_c()).count();
    let sustainable = Physics::laptop().sustainable_load(cfg.limit_c()) * 570.0;
    println!(
        "sustained: ungoverned peak {:.1} °C; governed peak {:.1} °C, {} of 600 s above {:.0} °C, \
         work {:.0} s-at-full-load = {:.0} % of the sustainable maximum, {} state transitions",
        off.max_temp(),
        on.max_temp(),
        above_limit,
        cfg.limit_c(),
        on.work,
        100.0 * on.work / sustainable,
        on.transitions
    );
    assert!(
        on.max_temp() < cfg.threshold_c,
        "governed peak {:.1}",
        on.max_temp()
    );
    assert!(
        above_limit <= 30,
        "{above_limit} s above threshold − margin"
    );
    // Headroom is the sustainable fraction at the set point, which the physics knows exactly.
    let true_headroom = Physics::laptop().sustainable_load(cfg.set_point_c());
    println!(
        "thermal_headroom {:.3} (true {:.3})",
        on.headroom, true_headroom
    );
    assert!((on.headroom - true_headroom).abs() < 0.03);
    assert!(on.transitions <= 4, "{} transitions", on.transitions);
    assert!(
        on.work >= 0.6 * sustainable,
        "work {:.0} vs sustainable {:.0}",
        on.work,
        sustainable
    );
}

/// Fits on a minute of mixed light work, cools at idle, then steps from idle to full load.
fn step_demand(t: f64) -> f64 {
    match t as usize {
        0..=149 => [0.1, 0.5, 0.2, 0.45, 0.0, 0.3, 0.5, 0.15][(t as usize / 19) % 8],
        150..=209 => 0.0,
        _ => 1.0,
    }
}

#[test]
fn load_step_overshoots_reactively_but_not_predictively() {
    let cfg = config();
    let reactive = run(
        &mut SimDevice::new("step-reactive", 7, LATENCY_S),
        &mut Controller::Reactive { paused: false },
        step_demand,
        330,
    );
    let predictive = run(
        &mut SimDevice::new("step-predictive", 7, LATENCY_S),
        &mut governor(),
        step_demand,
        330,
    );
    println!(
        "load step: reactive peak {:.1} °C, predictive peak {:.1} °C (threshold {:.0} °C); \
         work done: reactive {:.0}, predictive {:.0} s-at-full-load",
        reactive.max_temp(),
        predictive.max_temp(),
        cfg.threshold_c,
        reactive.work,
        predictive.work
    );
    assert!(
        reactive.max_temp() > cfg.threshold_c,
        "reactive peak {:.1}",
        reactive.max_temp()
    );
    assert!(
        predictive.max_temp() < cfg.limit_c() + 1.0,
        "predictive peak {:.1}",
        predictive.max_temp()
    );
    // The step itself was met with prediction, not with the fallback.
    assert!(matches!(
        predictive.states[215],
        State::Running | State::Throttled { .. }
    ));
}

#[test]
fn no_rapid_oscillation_between_states() {
    // A demand that keeps flipping around the sustainable level stresses the hysteresis.
    let demand = |t: f64| {
        if (t as usize / 40).is_multiple_of(2) {
            1.0
        } else {
            0.4
        }
    };
    let trace = run(
        &mut SimDevice::new("hyst", 3, LATENCY_S),
        &mut governor(),
        demand,
        900,
    );
    let min_dwell = dwell_times(&trace.states)
        .into_iter()
        .min()
        .unwrap_or(usize::MAX);
    println!(
        "hysteresis: {} transitions in 900 s, shortest dwell {min_dwell} s",
        trace.transitions
    );
    assert!(trace.transitions <= 6, "{} transitions", trace.transitions);
    assert!(trace.max_temp() < config().threshold_c);
}

fn dwell_times(states: &[State]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut run = 0;
    for w in states.windows(2) {
        run += 1;
        if !w[0].same_kind(&w[1]) {
            out.push(run);
            run = 0;
        }
    }
    out
}

#[test]
fn model_fit_converges_and_predicts_30s_ahead() {
    let mut dev = SimDevice::new("fit", 11, 0);
    let sensor = sysfs::find_sensor(&dev.root, SENSOR).expect("sensor");
    let mut model = ThermalModel::new(Default::default());
    let mut rng = sim::Rng::new(99);
    let mut demand = 0.0;
    let mut prev = sensor.read_c().expect("reading");
    let step = |dev: &mut SimDevice, model: &mut ThermalModel, load: f64, prev: &mut f64| {
        dev.tick(load, 1.0);
        let now = sensor.read_c().expect("reading");
        model.observe(1.0, *prev, now, dev.last_load);
        *prev = now;
    };
    // 120 s of random load steps: the data the fit gets before it is judged.
    for t in 0..120u32 {
        if t.is_multiple_of(10) {
            demand = rng.uniform();
        }
        step(&mut dev, &mut model, demand, &mut prev);
    }
    let truth = Physics::laptop();
    let fitted = model.params().expect("trusted after 120 s of varied load");
    println!(
        "fit after 120 s: a = {:.3} °C/s (true {:.3}), τ = {:.1} s (true {:.1}), T0 = {:.2} °C (true {:.2})",
        fitted.heat_rate,
        (truth.steady_state_c(1.0) - truth.steady_state_c(0.0)) / (truth.r_c_per_w * truth.c_j_per_c),
        fitted.time_constant_s(),
        truth.r_c_per_w * truth.c_j_per_c,
        fitted.idle_temp_c,
        truth.steady_state_c(0.0)
    );
    // Then hold random loads for 30 s each and compare the prediction made at the start.
    let mut errors = Vec::new();
    for _ in 0..10 {
        let load = rng.uniform();
        let p = model.params().expect("trusted");
        let predicted = p.predict_c(prev, load, 30.0);
        for _ in 0..30 {
            step(&mut dev, &mut model, load, &mut prev);
        }
        errors.push((predicted - dev.physics.temp_c).abs());
    }
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    let max = errors.iter().cloned().fold(0.0, f64::max);
    println!(
        "30 s prediction error after 120 s of data: mean {mean:.3} °C, max {max:.3} °C over {} predictions \
         (sensor noise σ = 0.2 °C)",
        errors.len()
    );
    assert!(max < 1.5, "max 30 s prediction error {max:.3} °C");
    assert!(mean < 0.75, "mean 30 s prediction error {mean:.3} °C");
}

#[test]
fn closed_forms_agree_with_integration() {
    let p = RcParams {
        heat_rate: 6.0,
        cool_rate: 1.0 / 15.0,
        idle_temp_c: 30.0,
    };
    assert!((p.steady_state_c(1.0) - 120.0).abs() < 1e-9);
    let mut t = 40.0;
    for _ in 0..20_000 {
        t += 0.001 * (p.heat_rate * 0.7 - p.cool_rate * (t - p.idle_temp_c));
    }
    assert!((p.predict_c(40.0, 0.7, 20.0) - t).abs() < 0.01);
    let ttt = p.time_to_threshold_s(40.0, 1.0, 85.0).expect("reaches 85");
    assert!((p.predict_c(40.0, 1.0, ttt) - 85.0).abs() < 1e-9);
    assert_eq!(p.time_to_threshold_s(40.0, 0.5, 85.0), None);
    assert_eq!(p.time_to_threshold_s(90.0, 0.0, 85.0), Some(0.0));
    let u = p.max_sustainable_load(80.0);
    assert!((p.steady_state_c(u) - 80.0).abs() < 1e-9);
    let u = p.max_load_for_peak(50.0, 1.0, 3.0, 10.0, 79.0);
    assert!((p.peak_c(50.0, 1.0, 3.0, u, 10.0) - 79.0).abs() < 1e-9);
    // Committed work overshooting the target: the answer pulls back below the sustainable load.
    assert!(p.max_load_for_peak(78.0, 1.0, 3.0, 10.0, 79.0) < p.max_sustainable_load(79.0));
}

fn battery_sample(t: f64, on_battery: bool, level: Option<f64>) -> Sample {
    Sample {
        time_s: t,
        temp_c: 40.0,
        load: 0.2,
        on_battery,
        battery_level: level,
    }
}

#[test]
fn battery_policy_asks_for_relief_below_the_level_on_battery_only() {
    let mut gov = Governor::new(config()).expect("config");
    let mut relief = |t, on, level| {
        gov.update(&battery_sample(t, on, level))
            .expect("sample")
            .relieve_me
    };
    assert!(!relief(0.0, true, Some(0.50)), "above the level");
    assert!(relief(1.0, true, Some(0.15)), "below the level on battery");
    assert!(
        relief(2.0, true, Some(0.22)),
        "hysteresis holds the request just above"
    );
    assert!(!relief(3.0, true, Some(0.30)), "well above the level");
    assert!(!relief(4.0, false, Some(0.10)), "charging");
    assert!(!relief(5.0, false, None), "no battery");
    assert!(relief(6.0, true, Some(0.05)), "unplugged again");
    assert!(!relief(7.0, false, Some(0.05)), "plugged in");
}

#[test]
fn bad_samples_and_configs_are_refused() {
    let mut gov = Governor::new(config()).expect("config");
    gov.update(&battery_sample(10.0, false, None))
        .expect("first");
    assert!(matches!(
        gov.update(&battery_sample(10.0, false, None)),
        Err(SampleError::TimeNotIncreasing { .. })
    ));
    let mut s = battery_sample(11.0, false, None);
    s.temp_c = f64::NAN;
    assert!(matches!(
        gov.update(&s),
        Err(SampleError::NotFinite {
            field: "temp_c",
            ..
        })
    ));
    s.temp_c = 40.0;
    s.load = 1.5;
    assert_eq!(gov.update(&s), Err(SampleError::LoadOutOfRange(1.5)));
    let s = battery_sample(11.0, true, Some(f64::NAN));
    assert!(matches!(
        gov.update(&s),
        Err(SampleError::BatteryOutOfRange(_))
    ));

    let bad = GovernorConfig {
        lookahead_s: 1.0,
        ..config()
    };
    assert!(Governor::new(bad).is_err());
    let bad = GovernorConfig {
        hysteresis_c: 0.0,
        ..GovernorConfig::default()
    };
    assert!(Governor::new(bad).is_err());
}

#[test]
fn cool_and_unknown_devices_report_full_headroom() {
    let mut gov = Governor::new(config()).expect("config");
    let d = gov
        .update(&battery_sample(0.0, false, None))
        .expect("sample");
    assert_eq!(d.thermal_headroom, 1.0);
    assert_eq!(d.state, State::Running);
    assert!(!d.predictive);
}

#[test]
fn millidegree_parsing() {
    assert_eq!(parse_millidegrees("45000\n"), Ok(45_000));
    assert_eq!(parse_millidegrees("-5000"), Ok(-5_000));
    assert_eq!(parse_millidegrees(""), Err(ParseError::Empty));
    assert_eq!(parse_millidegrees(" \n"), Err(ParseError::Empty));
    assert_eq!(parse_millidegrees("45.5"), Err(ParseError::Malformed));
    assert_eq!(parse_millidegrees("45000 42"), Err(ParseError::Malformed));
    assert_eq!(parse_millidegrees("4500"), Ok(4_500));
    assert_eq!(
        parse_millidegrees("999999999"),
        Err(ParseError::OutOfRange(999_999_999))
    );
    assert_eq!(
        parse_millidegrees("99999999999999999999999"),
        Err(ParseError::Malformed)
    );
}

#[test]
fn sysfs_picks_the_zone_by_type_and_types_every_failure() {
    let root = sim::scratch_dir("sysfs");
    sim::write_zone(&root, 0, "acpitz", "45000\n");
    sim::write_zone(&root, 1, "x86_pkg_temp", "61500\n");
    sim::write_zone(&root, 2, "bad_text", "hot\n");
    sim::write_zone(&root, 3, "empty", "");
    sim::write_zone(&root, 4, "truncated", "6");
    sim::write_zone(&root, 5, "too_long", &"1".repeat(100));
    sim::write_zone(&root, 6, "absurd", "900000\n");
    std::fs::create_dir_all(root.join("thermal_zone7")).expect("zone without files");
    std::fs::create_dir_all(root.join("thermal_zone8")).expect("zone without temp");
    std::fs::write(root.join("thermal_zone8/type"), "no_temp\n").expect("type");
    std::fs::write(root.join("thermal_zone9"), "not a dir").expect("file");
    let hw = root.join("hwmon0");
    std::fs::create_dir_all(&hw).expect("hwmon");
    std::fs::write(hw.join("name"), "k10temp\n").expect("name");
    std::fs::write(hw.join("temp1_input"), "52125\n").expect("temp");
    std::fs::create_dir_all(root.join("cooling_device0")).expect("ignored entry");

    let kinds: Vec<String> = sysfs::list_sensors(&root)
        .expect("list")
        .into_iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "k10temp",
            "acpitz",
            "x86_pkg_temp",
            "bad_text",
            "empty",
            "truncated",
            "too_long",
            "absurd",
            "no_temp"
        ]
    );
    let read = |kind: &str| sysfs::find_sensor(&root, kind).and_then(|s| s.read_c());
    assert_eq!(read("x86_pkg_temp").expect("pkg"), 61.5);
    assert_eq!(read("acpitz").expect("acpi"), 45.0);
    assert_eq!(read("k10temp").expect("hwmon"), 52.125);
    assert_eq!(read("truncated").expect("a short but valid reading"), 0.006);
    assert!(matches!(
        read("bad_text"),
        Err(SysfsError::Malformed { .. })
    ));
    assert!(matches!(read("empty"), Err(SysfsError::Empty { .. })));
    assert!(matches!(read("too_long"), Err(SysfsError::TooLong { .. })));
    assert!(matches!(
        read("absurd"),
        Err(SysfsError::OutOfRange {
            millidegrees: 900_000,
            ..
        })
    ));
    assert!(matches!(read("no_temp"), Err(SysfsError::Io { .. })));
    match read("amdgpu") {
        Err(SysfsError::NotFound { found, .. }) => assert_eq!(found.len(), 9),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        sysfs::list_sensors(&root.join("missing")),
        Err(SysfsError::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&root);
}
