//! A simulated device for the thermal tests: a true first-order RC body driven by the load,
//! with a seeded noisy sensor written into a fake sysfs tree, and dispatched work that keeps
//! running for a fixed latency after the rate changes.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

/// xorshift64*: tiny, seeded, good enough for sensor noise.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately standard normal (Irwin–Hall of 12).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// The true physics: `C·dT/dt = P(u) − (T − T_amb)/R`.
#[derive(Clone, Copy)]
pub struct Physics {
    pub r_c_per_w: f64,
    pub c_j_per_c: f64,
    pub ambient_c: f64,
    pub idle_w: f64,
    pub full_w: f64,
    pub temp_c: f64,
}

impl Physics {
    /// A laptop-class CPU: τ = 15 s, idles at 30 °C, would settle at 120 °C at full load.
    pub fn laptop() -> Self {
        Self {
            r_c_per_w: 0.4,
            c_j_per_c: 37.5,
            ambient_c: 25.0,
            idle_w: 12.5,
            full_w: 237.5,
            temp_c: 30.0,
        }
    }
    pub fn steady_state_c(&self, load: f64) -> f64 {
        self.ambient_c + self.r_c_per_w * (self.idle_w + (self.full_w - self.idle_w) * load)
    }
    /// The largest load whose steady state is at or below `target_c`.
    pub fn sustainable_load(&self, target_c: f64) -> f64 {
        ((target_c - self.steady_state_c(0.0))
            / (self.steady_state_c(1.0) - self.steady_state_c(0.0)))
        .clamp(0.0, 1.0)
    }
    pub fn step(&mut self, load: f64, dt: f64) {
        let t_inf = self.steady_state_c(load);
        self.temp_c =
            t_inf + (self.temp_c - t_inf) * (-dt / (self.r_c_per_w * self.c_j_per_c)).exp();
    }
}

pub const SENSOR: &str = "x86_pkg_temp";

pub struct SimDevice {
    pub physics: Physics,
    rng: Rng,
    noise_c: f64,
    in_flight: VecDeque<f64>,
    pub root: PathBuf,
    sensor_file: PathBuf,
    pub time_s: f64,
    pub last_load: f64,
}

impl SimDevice {
    /// A fake `/sys/class/thermal` with three zones; the device's own is not the first.
    pub fn new(name: &str, seed: u64, latency_steps: usize) -> Self {
        let root = scratch_dir(name);
        write_zone(&root, 0, "acpitz", "45000\n");
        write_zone(&root, 1, SENSOR, "30000\n");
        write_zone(&root, 2, "iwlwifi_1", "41000\n");
        let mut dev = Self {
            physics: Physics::laptop(),
            rng: Rng::new(seed),
            noise_c: 0.2,
            in_flight: std::iter::repeat_n(0.0, latency_steps).collect(),
            sensor_file: root.join("thermal_zone1").join("temp"),
            root,
            time_s: 0.0,
            last_load: 0.0,
        };
        dev.write_sensor();
        dev
    }

    /// Dispatches work at `rate` (capped by `demand`) and advances one simulated second; the
    /// load that actually runs is the one dispatched `latency_steps` seconds ago.
    pub fn tick(&mut self, rate: f64, demand: f64) {
        self.in_flight.push_back(rate.min(demand).clamp(0.0, 1.0));
        let load = self.in_flight.pop_front().unwrap_or(0.0);
        for _ in 0..10 {
            self.physics.step(load, 0.1);
        }
        self.time_s += 1.0;
        self.last_load = load;
        self.write_sensor();
    }

    fn write_sensor(&mut self) {
        let reading = self.physics.temp_c + self.noise_c * self.rng.normal();
        let mdeg = (reading * 1000.0).round() as i64;
        fs::write(&self.sensor_file, format!("{mdeg}\n")).expect("write sensor");
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn write_zone(root: &Path, n: usize, kind: &str, temp: &str) {
    let zone = root.join(format!("thermal_zone{n}"));
    fs::create_dir_all(&zone).expect("zone dir");
    fs::write(zone.join("type"), format!("{kind}\n")).expect("type");
    fs::write(zone.join("temp"), temp).expect("temp");
}
