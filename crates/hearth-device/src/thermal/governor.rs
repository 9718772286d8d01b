//! The thermal governor: a state machine that keeps a device below `threshold − margin` by
//! lowering the work rate before the temperature gets there, using the fitted RC model to
//! see where the temperature is heading once the work already dispatched has run.
//!
//! States:
//! - `Running`: full rate; the model predicts that full load over the lookahead stays below
//!   the set point.
//! - `Throttled { rate }`: the largest rate whose predicted peak over the lookahead stays at
//!   the set point (rises are slew-limited, cuts are immediate).
//! - `Paused`: no work; entered when even a token rate would overshoot or the measured
//!   temperature reaches `threshold − margin`.
//!
//! Leaving a restrictive state needs a margin of `hysteresis_c` beyond the condition that
//! entered it, so sensor noise near a boundary does not flap the state.

use crate::error::{ConfigError, SampleError};
use crate::thermal::model::{ModelConfig, RcParams, ThermalModel};
use std::collections::VecDeque;

/// Governor settings. Defaults suit a CPU package sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorConfig {
    /// Temperature the device must never reach, °C.
    pub threshold_c: f64,
    /// The governor keeps the device at or below `threshold_c − margin_c`.
    pub margin_c: f64,
    /// How far back a condition must recede before a restrictive state is left, °C.
    pub hysteresis_c: f64,
    /// The control aims this far below `threshold − margin`, absorbing sensor noise and
    /// model error so that the limit itself is rarely touched, °C.
    pub guard_c: f64,
    /// How far ahead each decision looks, s. Must exceed the actuation latency.
    pub lookahead_s: f64,
    /// How long work already dispatched keeps running after the rate is lowered, s.
    pub actuation_latency_s: f64,
    /// Below this allowed rate the governor pauses instead of trickling work.
    pub min_rate: f64,
    /// Largest rate increase per second while throttled.
    pub max_rate_rise_per_s: f64,
    /// Without a trusted model, the rate falls linearly to 0 over this band below the set
    /// point, °C.
    pub fallback_band_c: f64,
    /// On battery below this level (0..1) the device asks to be relieved of work.
    pub battery_relieve_below: f64,
    /// The request stands until the level is this much above `battery_relieve_below`.
    pub battery_hysteresis: f64,
    pub model: ModelConfig,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            threshold_c: 85.0,
            margin_c: 5.0,
            hysteresis_c: 3.0,
            guard_c: 1.0,
            lookahead_s: 10.0,
            actuation_latency_s: 2.0,
            min_rate: 0.05,
            max_rate_rise_per_s: 0.2,
            fallback_band_c: 15.0,
            battery_relieve_below: 0.20,
            battery_hysteresis: 0.05,
            model: ModelConfig::default(),
        }
    }
}

impl GovernorConfig {
    /// Checks the settings; the governor refuses to start with a configuration it cannot honour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, f64, bool, &'static str); 12] = [
            (
                "threshold_c",
                self.threshold_c,
                self.threshold_c.is_finite(),
                "finite",
            ),
            (
                "margin_c",
                self.margin_c,
                self.margin_c.is_finite() && self.margin_c >= 0.0,
                "finite and >= 0",
            ),
            (
                "hysteresis_c",
                self.hysteresis_c,
                self.hysteresis_c.is_finite() && self.hysteresis_c > 0.0,
                "finite and > 0",
            ),
            (
                "guard_c",
                self.guard_c,
                self.guard_c.is_finite() && self.guard_c >= 0.0,
                "finite and >= 0",
            ),
            (
                "actuation_latency_s",
                self.actuation_latency_s,
                self.actuation_latency_s.is_finite() && self.actuation_latency_s >= 0.0,
                "finite and >= 0",
            ),
            (
                "lookahead_s",
                self.lookahead_s,
                self.lookahead_s.is_finite() && self.lookahead_s > self.actuation_latency_s,
                "finite and > actuation_latency_s",
            ),
            (
                "min_rate",
                self.min_rate,
                (0.0..0.5).contains(&self.min_rate),
                "within 0..0.5",
            ),
            (
                "max_rate_rise_per_s",
                self.max_rate_rise_per_s,
                self.max_rate_rise_per_s.is_finite() && self.max_rate_rise_per_s > 0.0,
                "finite and > 0",
            ),
            (
                "fallback_band_c",
                self.fallback_band_c,
                self.fallback_band_c.is_finite() && self.fallback_band_c > 0.0,
                "finite and > 0",
            ),
            (
                "battery_relieve_below",
                self.battery_relieve_below,
                (0.0..=1.0).contains(&self.battery_relieve_below),
                "within 0..=1",
            ),
            (
                "battery_hysteresis",
                self.battery_hysteresis,
                (0.0..=1.0).contains(&self.battery_hysteresis),
                "within 0..=1",
            ),
            (
                "model.forgetting",
                self.model.forgetting,
                self.model.forgetting > 0.9 && self.model.forgetting <= 1.0,
                "within (0.9, 1]",
            ),
        ];
        for (field, value, ok, rule) in checks {
            if !ok {
                return Err(ConfigError::BadValue { field, value, rule });
            }
        }
        Ok(())
    }

    /// `threshold − margin`: the limit the governor keeps the device under.
    pub fn limit_c(&self) -> f64 {
        self.threshold_c - self.margin_c
    }

    /// Where the control aims: `threshold − margin − guard`.
    pub fn set_point_c(&self) -> f64 {
        self.limit_c() - self.guard_c
    }
}

/// One telemetry reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Monotonic time, s.
    pub time_s: f64,
    pub temp_c: f64,
    /// Mean load actually applied since the previous sample, 0..1 (busy fraction).
    pub load: f64,
    pub on_battery: bool,
    /// Battery charge 0..1, `None` without a battery.
    pub battery_level: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Running,
    Throttled { rate: f64 },
    Paused,
}

impl State {
    /// The work rate this state allows, 0..1.
    pub fn rate(&self) -> f64 {
        match *self {
            State::Running => 1.0,
            State::Throttled { rate } => rate,
            State::Paused => 0.0,
        }
    }

    /// Same kind of state, ignoring the throttled rate.
    pub fn same_kind(&self, other: &State) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// What the governor publishes after each sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub state: State,
    /// Work rate to apply until the next sample, 0..1.
    pub rate: f64,
    /// The fraction of full load the device can sustain indefinitely with its temperature at
    /// the governor's set point, from the fitted model (0..1). Without a trusted model: 1 when
    /// cool, falling to 0 across the fallback band below the set point. This is what the
    /// planner multiplies a device's bandwidth and compute by.
    pub thermal_headroom: f64,
    /// The device asks to be relieved of work (battery policy).
    pub relieve_me: bool,
    /// Predicted peak temperature over the lookahead at full load, when the model is trusted.
    pub predicted_peak_full_c: Option<f64>,
    /// Whether the fitted model drove this decision (otherwise the reactive fallback did).
    pub predictive: bool,
}

/// Recent decisions kept to know which rates are still in flight; far more than any sane
/// latency over the sampling period needs.
const MAX_RECENT: usize = 64;

#[derive(Debug, Clone)]
pub struct Governor {
    cfg: GovernorConfig,
    model: ThermalModel,
    state: State,
    relieving: bool,
    previous: Option<Sample>,
    recent: VecDeque<(f64, f64)>,
}

impl Governor {
    pub fn new(cfg: GovernorConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            model: ThermalModel::new(cfg.model.clone()),
            cfg,
            state: State::Running,
            relieving: false,
            previous: None,
            recent: VecDeque::with_capacity(MAX_RECENT),
        })
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.cfg
    }

    pub fn model(&self) -> &ThermalModel {
        &self.model
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Takes one sample, refits the model and decides the rate until the next sample.
    /// A refused sample leaves the governor untouched.
    pub fn update(&mut self, s: &Sample) -> Result<Decision, SampleError> {
        check_sample(s, self.previous.as_ref())?;
        let dt = match self.previous {
            Some(prev) => {
                let dt = s.time_s - prev.time_s;
                self.model.observe(dt, prev.temp_c, s.temp_c, s.load);
                dt
            }
            None => 1.0,
        };
        self.previous = Some(*s);

        let cfg = &self.cfg;
        let set_point = cfg.set_point_c();
        let limit = cfg.limit_c();
        let latency = cfg.actuation_latency_s;
        // Work decided within the latency is still to run, whatever is decided now.
        let in_flight = self
            .recent
            .iter()
            .filter(|(t, _)| *t >= s.time_s - latency - 1e-9)
            .fold(s.load, |m, (_, r)| m.max(*r));

        let params = self.model.params();
        let (allowed, full_clear, peak_full, headroom) = match params {
            Some(p) => predictive(cfg, &p, s.temp_c, in_flight),
            None => {
                let allowed = ((set_point - s.temp_c) / cfg.fallback_band_c).clamp(0.0, 1.0);
                let clear = s.temp_c <= set_point - cfg.fallback_band_c - cfg.hysteresis_c;
                (allowed, clear, None, allowed)
            }
        };

        let emergency = s.temp_c >= limit;
        let resume_rate = 2.0 * cfg.min_rate;
        self.state = match self.state {
            State::Running | State::Throttled { .. } if emergency || allowed < cfg.min_rate => {
                State::Paused
            }
            State::Running if allowed < 1.0 => State::Throttled { rate: allowed },
            State::Running => State::Running,
            State::Throttled { .. } if full_clear => State::Running,
            State::Throttled { rate } => State::Throttled {
                rate: allowed.min(rate + cfg.max_rate_rise_per_s * dt),
            },
            State::Paused if s.temp_c <= limit - cfg.hysteresis_c && allowed >= resume_rate => {
                if full_clear {
                    State::Running
                } else {
                    State::Throttled { rate: allowed }
                }
            }
            State::Paused => State::Paused,
        };
        let rate = self.state.rate();
        if self.recent.len() == MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((s.time_s, rate));

        self.relieving = battery_policy(cfg, s, self.relieving);
        Ok(Decision {
            state: self.state,
            rate,
            thermal_headroom: headroom,
            relieve_me: self.relieving,
            predicted_peak_full_c: peak_full,
            predictive: params.is_some(),
        })
    }
}

/// `(allowed rate, full load clear of the set point by the hysteresis, peak at full load,
/// headroom)` from the fitted model.
fn predictive(
    cfg: &GovernorConfig,
    p: &RcParams,
    temp_c: f64,
    in_flight: f64,
) -> (f64, bool, Option<f64>, f64) {
    let set_point = cfg.set_point_c();
    let (lat, horizon) = (cfg.actuation_latency_s, cfg.lookahead_s);
    // Work in flight that would carry the device past the limit leaves nothing to allow.
    let committed_peak = p.peak_c(temp_c, in_flight, lat, 0.0, lat);
    let allowed = if committed_peak > cfg.limit_c() {
        0.0
    } else {
        p.max_load_for_peak(temp_c, in_flight, lat, horizon, set_point)
    };
    let peak_full = p.peak_c(temp_c, in_flight, lat, 1.0, horizon);
    let clear = peak_full <= set_point - cfg.hysteresis_c;
    (
        allowed,
        clear,
        Some(peak_full),
        p.max_sustainable_load(set_point),
    )
}

fn battery_policy(cfg: &GovernorConfig, s: &Sample, relieving: bool) -> bool {
    match (s.on_battery, s.battery_level) {
        (true, Some(level)) if relieving => {
            level < cfg.battery_relieve_below + cfg.battery_hysteresis
        }
        (true, Some(level)) => level < cfg.battery_relieve_below,
        _ => false,
    }
}

fn check_sample(s: &Sample, previous: Option<&Sample>) -> Result<(), SampleError> {
    for (field, value) in [("time_s", s.time_s), ("temp_c", s.temp_c), ("load", s.load)] {
        if !value.is_finite() {
            return Err(SampleError::NotFinite { field, value });
        }
    }
    if !(0.0..=1.0).contains(&s.load) {
        return Err(SampleError::LoadOutOfRange(s.load));
    }
    if let Some(level) = s.battery_level {
        if !(0.0..=1.0).contains(&level) {
            return Err(SampleError::BatteryOutOfRange(level));
        }
    }
    if let Some(prev) = previous {
        if s.time_s <= prev.time_s {
            return Err(SampleError::TimeNotIncreasing {
                previous: prev.time_s,
                now: s.time_s,
            });
        }
    }
    Ok(())
}
