//! Declared devices: a TOML profile that makes this machine stand in for another device.
//!
//! One machine cannot be a phone, a laptop and a GPU desktop at once, so a node may be told to
//! behave as a declared device: the engine refuses to load past its memory, runs at its
//! compute share (a duty cycle), and every output marks its figures as declared rather than
//! measured. The fields are those of a `[[device]]` entry of a fleet file, plus two knobs of
//! the stand-in itself (`compute_share`, `[thermal]`).

use crate::bench::Measurement;
use crate::error::{ConfigError, SampleError};
use crate::thermal::governor::{Decision, Governor, GovernorConfig, Sample};
use crate::thermal::model::RcParams;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// A profile file that cannot be used, naming the field at fault.
#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("cannot read device profile {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("device profile is not valid TOML for a device: {0}")]
    Syntax(String),
    #[error("device profile: `{field}` must be {rule}, got {value}")]
    BadValue {
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    #[error("device profile: `name` is empty")]
    EmptyName,
    #[error("device profile: unknown backend {0:?} (cpu, cuda, rocm, metal, vulkan, directml)")]
    UnknownBackend(String),
    #[error("device profile: unknown precision {0:?} (f32, f16, bf16, int8-dot)")]
    UnknownPrecision(String),
}

/// How a declared device heats: the first-order model of [`RcParams`] and the temperature it
/// must stay below. A node that declares this simulates its temperature from its own load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalProfile {
    /// Where the device settles at zero load, °C.
    pub idle_temp_c: f64,
    /// Heating at full load from the idle equilibrium, °C/s.
    pub heat_rate: f64,
    /// `1/(R·C)`, 1/s.
    pub cool_rate: f64,
    /// The temperature it throttles at, °C.
    #[serde(default = "default_threshold")]
    pub threshold_c: f64,
    /// Where the simulation starts; the idle temperature when absent.
    pub start_temp_c: Option<f64>,
}

fn default_threshold() -> f64 {
    85.0
}

impl ThermalProfile {
    pub fn rc(&self) -> RcParams {
        RcParams {
            heat_rate: self.heat_rate,
            cool_rate: self.cool_rate,
            idle_temp_c: self.idle_temp_c,
        }
    }
}

/// A device this node declares itself to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub name: String,
    pub backend: String,
    /// Memory the model may use, GiB (weights, KV cache and scratch).
    pub memory_gib: f64,
    pub bandwidth_gbs: f64,
    pub tflops: f64,
    pub precisions: Vec<String>,
    #[serde(default = "one")]
    pub thermal_headroom: f64,
    #[serde(default)]
    pub on_battery: bool,
    /// Share of this machine's speed the engine runs at (0 < s ≤ 1). When absent it follows
    /// from the declared bandwidth over the measured one ([`DeviceProfile::compute_share`]).
    pub compute_share: Option<f64>,
    pub thermal: Option<ThermalProfile>,
}

fn one() -> f64 {
    1.0
}

const BACKENDS: [&str; 6] = ["cpu", "cuda", "rocm", "metal", "vulkan", "directml"];
const PRECISIONS: [&str; 4] = ["f32", "f16", "bf16", "int8-dot"];

fn check(
    field: &'static str,
    value: f64,
    ok: bool,
    rule: &'static str,
) -> Result<(), ProfileError> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(ProfileError::BadValue { field, value, rule })
    }
}

impl DeviceProfile {
    pub fn from_toml(text: &str) -> Result<DeviceProfile, ProfileError> {
        let p: DeviceProfile =
            toml::from_str(text).map_err(|e| ProfileError::Syntax(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<DeviceProfile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        DeviceProfile::from_toml(&text)
    }

    fn validate(&self) -> Result<(), ProfileError> {
        if self.name.trim().is_empty() {
            return Err(ProfileError::EmptyName);
        }
        if !BACKENDS.contains(&self.backend.as_str()) {
            return Err(ProfileError::UnknownBackend(self.backend.clone()));
        }
        if let Some(p) = self
            .precisions
            .iter()
            .find(|p| !PRECISIONS.contains(&p.as_str()))
        {
            return Err(ProfileError::UnknownPrecision(p.clone()));
        }
        let positive = "a finite number > 0";
        check(
            "memory_gib",
            self.memory_gib,
            self.memory_gib > 0.0,
            positive,
        )?;
        check(
            "bandwidth_gbs",
            self.bandwidth_gbs,
            self.bandwidth_gbs > 0.0,
            positive,
        )?;
        check("tflops", self.tflops, self.tflops > 0.0, positive)?;
        let share = "within 0 < x <= 1";
        let h = self.thermal_headroom;
        check("thermal_headroom", h, h > 0.0 && h <= 1.0, share)?;
        if let Some(s) = self.compute_share {
            check("compute_share", s, s > 0.0 && s <= 1.0, share)?;
        }
        if let Some(t) = &self.thermal {
            check(
                "thermal.heat_rate",
                t.heat_rate,
                t.heat_rate > 0.0,
                positive,
            )?;
            check(
                "thermal.cool_rate",
                t.cool_rate,
                t.cool_rate > 0.0,
                positive,
            )?;
            let plausible = "a temperature within -40..=150 °C";
            for (field, c) in [
                ("thermal.idle_temp_c", t.idle_temp_c),
                ("thermal.threshold_c", t.threshold_c),
                (
                    "thermal.start_temp_c",
                    t.start_temp_c.unwrap_or(t.idle_temp_c),
                ),
            ] {
                check(field, c, (-40.0..=150.0).contains(&c), plausible)?;
            }
            check(
                "thermal.threshold_c",
                t.threshold_c,
                t.threshold_c > t.idle_temp_c,
                "above thermal.idle_temp_c",
            )?;
        }
        Ok(())
    }

    /// Bytes the engine may use: `memory_gib × 2^30`.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * (1u64 << 30) as f64) as u64
    }

    /// The duty cycle the engine runs at: the declared share, else declared bandwidth over the
    /// bandwidth measured here (decode is bound by it), at most 1 — a stand-in can be made
    /// slower than the machine under it, never faster. `None` when neither is known.
    pub fn compute_share(&self, measured: Option<&Measurement>) -> Option<f64> {
        self.compute_share.or_else(|| {
            measured
                .filter(|m| m.bandwidth_gbs > 0.0)
                .map(|m| (self.bandwidth_gbs / m.bandwidth_gbs).min(1.0))
        })
    }
}

/// What a declared device's simulated sensor reads after a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StandInReading {
    pub temp_c: f64,
    /// At or above the declared threshold: where a real device would throttle.
    pub over_threshold: bool,
    pub decision: Decision,
}

/// The temperature of a declared device, simulated from its `[thermal]` parameters and the load
/// this machine really carries, and judged by the governor exactly as a real sensor would be.
/// So a profile can make a stand-in run hot (a high `heat_rate`, a low threshold, a hot start)
/// and everything downstream sees the consequences.
#[derive(Debug, Clone)]
pub struct ThermalStandIn {
    rc: RcParams,
    threshold_c: f64,
    temp_c: f64,
    time_s: f64,
    governor: Governor,
}

impl ThermalStandIn {
    pub fn new(p: &ThermalProfile) -> Result<ThermalStandIn, ConfigError> {
        Ok(ThermalStandIn {
            rc: p.rc(),
            threshold_c: p.threshold_c,
            temp_c: p.start_temp_c.unwrap_or(p.idle_temp_c),
            time_s: 0.0,
            governor: Governor::new(GovernorConfig {
                threshold_c: p.threshold_c,
                ..GovernorConfig::default()
            })?,
        })
    }

    /// Advances the simulation by `dt_s` seconds at `load` (0..1) and reads the sensor.
    pub fn step(
        &mut self,
        load: f64,
        dt_s: f64,
        on_battery: bool,
        battery_level: Option<f64>,
    ) -> Result<StandInReading, SampleError> {
        let load = if load.is_finite() {
            load.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let dt_s = if dt_s.is_finite() && dt_s > 0.0 {
            dt_s
        } else {
            1e-3
        };
        self.temp_c = self.rc.predict_c(self.temp_c, load, dt_s);
        self.time_s += dt_s;
        let decision = self.governor.update(&Sample {
            time_s: self.time_s,
            temp_c: self.temp_c,
            load,
            on_battery,
            battery_level,
        })?;
        Ok(StandInReading {
            temp_c: self.temp_c,
            over_threshold: self.temp_c >= self.threshold_c,
            decision,
        })
    }
}
