//! Telemetry: the parsers on fake roots (including broken files), utilisation from two
//! `/proc/stat` snapshots, the battery, the sampler's bound and shutdown, and a smoke test on
//! this machine's real `/`.

use hearth_device::telemetry::source::{self, CpuTimes, EnergyCounter};
use hearth_device::telemetry::{Sampler, SourceError, TelemetryConfig, ThrottleRule};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MEMINFO: &str = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\n\
                       MemAvailable:    8192000 kB\n";
const STAT: &str = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n";

struct FakeRoot(PathBuf);

impl FakeRoot {
    fn new(name: &str) -> FakeRoot {
        let dir =
            std::env::temp_dir().join(format!("hearth-telemetry-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = FakeRoot(dir);
        root.write("proc/stat", STAT);
        root.write("proc/meminfo", MEMINFO);
        root
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn is_malformed(r: Result<impl std::fmt::Debug, SourceError>, file: &str) {
    match r {
        Err(SourceError::Malformed { file: f, .. }) if f == file => {}
        other => panic!("expected Malformed {file}, got {other:?}"),
    }
}

#[test]
fn stat_parsing_and_utilisation_from_two_snapshots() {
    let a = source::parse_stat(STAT).unwrap();
    assert_eq!(
        a,
        CpuTimes {
            busy: 200,
            total: 1000
        }
    );
    // 300 more ticks busy, 100 more idle.
    let b = source::parse_stat("cpu  300 0 200 800 100 0 0 0\n").unwrap();
    assert!((b.utilisation_since(&a) - 0.75).abs() < 1e-6);
    assert_eq!(a.utilisation_since(&a), 0.0);
    // Counters going backwards never give a value outside 0..=1.
    let u = a.utilisation_since(&b);
    assert!((0.0..=1.0).contains(&u));
    // Old four-field kernels.
    assert_eq!(
        source::parse_stat("cpu 1 2 3 4\n").unwrap(),
        CpuTimes { busy: 6, total: 10 }
    );

    is_malformed(source::parse_stat(""), "stat");
    is_malformed(source::parse_stat("cpu0 1 2 3 4\n"), "stat");
    is_malformed(source::parse_stat("cpu  1 2"), "stat");
    is_malformed(source::parse_stat("cpu  1 2 x 4\n"), "stat");
}

#[test]
fn meminfo_battery_energy_and_task_stat_parsers() {
    let m = source::parse_meminfo(MEMINFO).unwrap();
    assert_eq!(m.total_bytes, 16384000 * 1024);
    assert_eq!(m.available_bytes, 8192000 * 1024);
    assert!(matches!(
        source::parse_meminfo("MemTotal: 10 kB\n"),
        Err(SourceError::Meminfo(_))
    ));
    assert!(matches!(
        source::parse_meminfo("MemTotal: 10 kB\nMemAvailable: 12"),
        Err(SourceError::Meminfo(_))
    ));

    assert_eq!(source::parse_capacity("85\n").unwrap(), 0.85);
    is_malformed(source::parse_capacity("101"), "capacity");
    is_malformed(source::parse_capacity(""), "capacity");
    assert!(source::parse_status("Charging\n").unwrap());
    assert!(!source::parse_status("Discharging\n").unwrap());
    assert!(!source::parse_status("Full").unwrap());
    is_malformed(source::parse_status("Exploding"), "status");

    assert_eq!(source::parse_u64("energy_uj", "123\n").unwrap(), 123);
    is_malformed(source::parse_u64("energy_uj", "12a"), "energy_uj");
    is_malformed(source::parse_u64("energy_uj", "-5"), "energy_uj");

    let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 17 23 0 0";
    assert_eq!(source::parse_task_cpu_ticks(stat).unwrap(), (17, 23));
    is_malformed(source::parse_task_cpu_ticks("42 (x) S 1 2"), "task stat");
    is_malformed(source::parse_task_cpu_ticks("garbage"), "task stat");
}

#[test]
fn readers_on_a_fake_root_and_their_typed_errors() {
    let r = FakeRoot::new("readers");
    let root = r.path();
    assert_eq!(source::read_stat(root).unwrap().total, 1000);
    assert!(source::read_meminfo(root).is_ok());

    // Nothing else present: all optional sources are empty, not errors.
    assert_eq!(source::read_battery(root).unwrap(), None);
    assert!(source::read_energy(root).unwrap().is_empty());
    assert!(source::find_cpu_sensor(root).is_none());
    assert!(source::read_frequencies(root).is_none());

    // Battery: mains supplies are skipped, the battery read.
    r.write("sys/class/power_supply/AC/type", "Mains\n");
    r.write("sys/class/power_supply/BAT0/type", "Battery\n");
    r.write("sys/class/power_supply/BAT0/capacity", "40\n");
    r.write("sys/class/power_supply/BAT0/status", "Discharging\n");
    let b = source::read_battery(root).unwrap().unwrap();
    assert_eq!((b.level, b.charging), (0.4, false));
    r.write("sys/class/power_supply/BAT0/status", "Charging\n");
    assert!(source::read_battery(root).unwrap().unwrap().charging);
    r.write("sys/class/power_supply/BAT0/capacity", "");
    is_malformed(source::read_battery(root), "capacity");
    fs::remove_file(root.join("sys/class/power_supply/BAT0/capacity")).unwrap();
    assert!(matches!(
        source::read_battery(root),
        Err(SourceError::Io { .. })
    ));

    // RAPL: the package counter, not its subdomain.
    r.write("sys/class/powercap/intel-rapl:0/energy_uj", "1000000\n");
    r.write(
        "sys/class/powercap/intel-rapl:0/max_energy_range_uj",
        "262143328850\n",
    );
    r.write("sys/class/powercap/intel-rapl:0:0/energy_uj", "5\n");
    let e0 = source::read_energy(root).unwrap();
    assert_eq!(e0.len(), 1);
    r.write("sys/class/powercap/intel-rapl:0/energy_uj", "6000000\n");
    let e1 = source::read_energy(root).unwrap();
    assert_eq!(source::power_w(&e0, &e1, 0.5), Some(10.0));
    r.write("sys/class/powercap/intel-rapl:0/energy_uj", "x\n");
    is_malformed(source::read_energy(root), "energy_uj");
    r.write(
        "sys/class/powercap/intel-rapl:0/energy_uj",
        &"9".repeat(100),
    );
    assert!(matches!(
        source::read_energy(root),
        Err(SourceError::TooLong { .. })
    ));

    // Temperature: the package sensor wins over a generic zone listed first.
    r.write("sys/class/thermal/thermal_zone0/type", "acpitz\n");
    r.write("sys/class/thermal/thermal_zone0/temp", "30000\n");
    r.write("sys/class/thermal/thermal_zone1/type", "cpu-thermal\n");
    r.write("sys/class/thermal/thermal_zone1/temp", "50000\n");
    r.write("sys/class/thermal/thermal_zone2/type", "x86_pkg_temp\n");
    r.write("sys/class/thermal/thermal_zone2/temp", "61500\n");
    let s = source::find_cpu_sensor(root).unwrap();
    assert_eq!(s.kind, "x86_pkg_temp");
    assert_eq!(s.read_c().unwrap(), 61.5);

    r.write(
        "sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq",
        "1000000\n",
    );
    r.write(
        "sys/devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq",
        "4000000\n",
    );
    assert_eq!(source::read_frequencies(root), Some((1_000_000, 4_000_000)));

    // Broken required files.
    r.write("proc/stat", "cpu  1 2\n");
    is_malformed(source::read_stat(root), "stat");
    r.write("proc/meminfo", "MemTotal 12 kB\n");
    assert!(matches!(
        source::read_meminfo(root),
        Err(SourceError::Meminfo(_))
    ));
    fs::remove_file(root.join("proc/meminfo")).unwrap();
    assert!(matches!(
        source::read_meminfo(root),
        Err(SourceError::Io { .. })
    ));
}

#[test]
fn power_handles_wraparound_and_mismatched_domains() {
    let c = |domain: &str, uj: u64, max: Option<u64>| EnergyCounter {
        domain: domain.into(),
        energy_uj: uj,
        max_range_uj: max,
    };
    let a = [c("intel-rapl:0", 900, Some(1000))];
    let b = [c("intel-rapl:0", 100, Some(1000))];
    assert!((source::power_w(&a, &b, 1e-4).unwrap() - 2.0).abs() < 1e-4);
    let b_unknown = [c("intel-rapl:0", 100, None)];
    assert_eq!(source::power_w(&a, &b_unknown, 1.0), None);
    let other = [c("intel-rapl:1", 1000, None)];
    assert_eq!(source::power_w(&a, &other, 1.0), None);
    assert_eq!(source::power_w(&[], &[], 1.0), None);
}

#[test]
fn throttle_rule() {
    let r = ThrottleRule::default();
    assert!(!r.throttled(None, 1.0, None));
    assert!(r.throttled(Some(90.0), 0.0, None));
    assert!(!r.throttled(Some(89.9), 0.0, None));
    // A slow clock counts only while the cores are busy.
    assert!(!r.throttled(None, 0.1, Some((1, 4))));
    assert!(r.throttled(None, 0.95, Some((1, 4))));
    assert!(!r.throttled(None, 0.95, Some((3, 4))));
}

fn fake_config(root: &Path, period_ms: u64, capacity: usize) -> TelemetryConfig {
    TelemetryConfig {
        root: root.to_path_buf(),
        period: Duration::from_millis(period_ms),
        capacity,
        ..TelemetryConfig::default()
    }
}

#[test]
fn sampler_produces_full_samples_from_a_fake_root() {
    let r = FakeRoot::new("sampler");
    r.write("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
    r.write("sys/class/thermal/thermal_zone0/temp", "95000\n");
    r.write("sys/class/power_supply/BAT0/type", "Battery\n");
    r.write("sys/class/power_supply/BAT0/capacity", "77\n");
    r.write("sys/class/power_supply/BAT0/status", "Charging\n");
    r.write("sys/class/powercap/intel-rapl:0/energy_uj", "0\n");
    let sampler = Sampler::start(fake_config(r.path(), 20, 64)).unwrap();
    // The first sample's utilisation covers the period after start.
    r.write("proc/stat", "cpu  400 0 100 1000 100 0 0 0 0 0\n");
    r.write("sys/class/powercap/intel-rapl:0/energy_uj", "1000000\n");
    let s = sampler
        .recv_timeout(Duration::from_secs(2))
        .expect("a sample");
    assert_eq!(s.memory_total, 16384000 * 1024);
    assert_eq!(s.memory_used(), 8192000 * 1024);
    assert!((s.utilisation - 0.5).abs() < 1e-6, "{}", s.utilisation);
    assert_eq!(s.temperature_c, Some(95.0));
    assert!(s.throttled);
    let b = s.battery.unwrap();
    assert_eq!((b.level, b.charging), (0.77, true));
    assert!(s.power_w.unwrap() > 0.0);
    assert!(s.at_unix_ms > 1_600_000_000_000);
    let s2 = sampler
        .recv_timeout(Duration::from_secs(2))
        .expect("a second sample");
    assert_eq!(s2.utilisation, 0.0, "no ticks passed between the two");
    assert!(s2.at_unix_ms >= s.at_unix_ms);
}

#[test]
fn slow_consumer_sees_a_bounded_channel_and_counted_drops() {
    let r = FakeRoot::new("bound");
    let sampler = Sampler::start(fake_config(r.path(), 20, 4)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let stats = sampler.stats();
    assert_eq!(stats.sent, 4, "{stats:?}");
    assert!(stats.dropped >= 5, "{stats:?}");
    let mut queued = 0;
    while sampler.try_recv().is_some() {
        queued += 1;
    }
    assert_eq!(queued, 4);
    // Room again: sampling resumes.
    assert!(sampler.recv_timeout(Duration::from_secs(2)).is_some());
}

#[test]
fn sampler_refuses_a_root_without_proc_and_counts_failures_later() {
    let missing = std::env::temp_dir().join("hearth-telemetry-no-such-root");
    assert!(matches!(
        Sampler::start(fake_config(&missing, 20, 4)),
        Err(SourceError::Io { .. })
    ));
    let r = FakeRoot::new("failing");
    let sampler = Sampler::start(fake_config(r.path(), 20, 4)).unwrap();
    r.write("proc/stat", "garbage\n");
    let deadline = Instant::now() + Duration::from_secs(2);
    while sampler.stats().failed == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sampler.stats().failed > 0);
    assert!(sampler.is_running());
}

#[test]
fn dropping_the_sampler_stops_its_thread_promptly() {
    let r = FakeRoot::new("stop");
    // A long period: the thread must not wait it out.
    let sampler = Sampler::start(fake_config(r.path(), 60_000, 4)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while sampler.thread_id().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tid = sampler.thread_id().expect("the thread reports its id");
    let task = PathBuf::from(format!("/proc/self/task/{tid}"));
    assert!(task.exists());
    let t0 = Instant::now();
    drop(sampler);
    // Well inside the 60 s period: the thread was woken, not left to sleep it out. The kernel
    // may list a task for a moment after it exited.
    while task.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !task.exists(),
        "the sampler thread still runs {:?} after the drop",
        t0.elapsed()
    );
}

#[test]
fn real_root_smoke() {
    let sampler = Sampler::start(TelemetryConfig {
        period: Duration::from_millis(50),
        ..TelemetryConfig::default()
    })
    .expect("this machine has /proc");
    let s = sampler
        .recv_timeout(Duration::from_secs(5))
        .expect("a sample");
    assert!(s.memory_total > 0);
    assert!(s.memory_available <= s.memory_total);
    assert!((0.0..=1.0).contains(&s.utilisation), "{}", s.utilisation);
    if let Some(b) = s.battery {
        assert!((0.0..=1.0).contains(&b.level));
    }
}

/// CPU time of the sampler thread per sample on this machine's real `/`, extrapolated to the
/// default 1 s period. Run with `cargo test --release -p hearth-device -- --ignored
/// telemetry_cost --nocapture`.
#[test]
#[ignore]
fn telemetry_cost() {
    // Clock ticks per second of /proc's utime and stime (USER_HZ), 100 on every Linux build
    // hearth targets.
    const TICKS_PER_S: f64 = 100.0;
    let sampler = Sampler::start(TelemetryConfig {
        period: Duration::from_millis(1),
        capacity: 1 << 16,
        ..TelemetryConfig::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while sampler.thread_id().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tid = sampler.thread_id().unwrap();
    let ticks = || {
        let text = fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let (u, s) = source::parse_task_cpu_ticks(&text).unwrap();
        u + s
    };
    let (t0, n0) = (ticks(), sampler.stats().sent);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let (t1, n1) = (ticks(), sampler.stats().sent);
    let elapsed = wall.elapsed().as_secs_f64();
    let samples = (n1 - n0) as f64;
    let cpu_s = (t1 - t0) as f64 / TICKS_PER_S;
    let per_sample_us = cpu_s / samples * 1e6;
    let pct_at_1s = cpu_s / samples * 100.0;
    println!(
        "telemetry: {samples} samples in {elapsed:.2} s, sampler thread CPU {cpu_s:.3} s, \
         {per_sample_us:.1} µs per sample, {pct_at_1s:.4} % of one core at a 1 s period"
    );
    assert!(pct_at_1s < 1.0);
}
