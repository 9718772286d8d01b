//! First-order RC thermal model, fitted online.
//!
//! A device dissipating `P(u) = P_idle + (P_full − P_idle)·u` at load `u ∈ [0, 1]` into a heat
//! sink of capacity `C` through a thermal resistance `R` obeys `C·dT/dt = P(u) − (T − T_amb)/R`.
//! Rewritten in the three numbers that can be measured without knowing power:
//!
//! ```text
//! dT/dt = a·u − b·(T − T0)      a = heat rate at full load (°C/s), b = 1/(R·C) (1/s),
//!                               T0 = equilibrium temperature at zero load (°C)
//! ```
//!
//! For a constant load the solution is `T(t) = T∞(u) + (T(0) − T∞(u))·e^(−b·t)` with
//! `T∞(u) = T0 + a·u/b`, which gives prediction, time-to-threshold and the sustainable load
//! in closed form ([`RcParams`]).
//!
//! The fit is recursive least squares with exponential forgetting on
//! `(T1 − T0)/dt = a·u − b·(T0 + T1)/2 + c` with `c = b·T0`: linear in `(a, b, c)`, so each
//! sample costs a 3×3 update and the state is bounded. The midpoint temperature keeps the
//! discretisation error second-order in `dt` and, because sensor noise enters the difference
//! and the mean of two readings with opposite signs, leaves the regressor uncorrelated with
//! the noise on the left-hand side.

/// Fit settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Forgetting factor per sample; `1/(1 − λ)` samples is the memory (200 at 0.995).
    pub forgetting: f64,
    /// Samples further apart than this are not fitted: the finite difference no longer
    /// approximates the derivative.
    pub max_dt_s: f64,
    /// Samples needed before any estimate is trusted.
    pub min_samples: u32,
    /// Relative standard error of `a` and `b` below which an estimate is trusted.
    pub max_relative_error: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            forgetting: 0.995,
            max_dt_s: 10.0,
            min_samples: 8,
            max_relative_error: 0.2,
        }
    }
}

/// Fitted parameters of `dT/dt = a·u − b·(T − T0)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RcParams {
    /// `a`: heating rate at full load from the zero-load equilibrium, °C/s.
    pub heat_rate: f64,
    /// `b = 1/(R·C)`, 1/s.
    pub cool_rate: f64,
    /// `T0`: where the device settles at zero load, °C.
    pub idle_temp_c: f64,
}

impl RcParams {
    /// `R·C`, seconds.
    pub fn time_constant_s(&self) -> f64 {
        1.0 / self.cool_rate
    }

    /// Where the temperature settles under a constant `load`.
    pub fn steady_state_c(&self, load: f64) -> f64 {
        self.idle_temp_c + self.heat_rate * load / self.cool_rate
    }

    /// Temperature after `horizon_s` at a constant `load`, starting from `temp_c`.
    pub fn predict_c(&self, temp_c: f64, load: f64, horizon_s: f64) -> f64 {
        let t_inf = self.steady_state_c(load);
        t_inf + (temp_c - t_inf) * (-self.cool_rate * horizon_s.max(0.0)).exp()
    }

    /// Seconds until `threshold_c` is reached at a constant `load`: `Some(0)` if already at
    /// or above it, `None` if the load never gets there.
    pub fn time_to_threshold_s(&self, temp_c: f64, load: f64, threshold_c: f64) -> Option<f64> {
        if temp_c >= threshold_c {
            return Some(0.0);
        }
        let t_inf = self.steady_state_c(load);
        if t_inf <= threshold_c {
            return None;
        }
        Some(((t_inf - temp_c) / (t_inf - threshold_c)).ln() / self.cool_rate)
    }

    /// The largest load in `[0, 1]` whose steady state is at or below `target_c`.
    pub fn max_sustainable_load(&self, target_c: f64) -> f64 {
        ((target_c - self.idle_temp_c) * self.cool_rate / self.heat_rate).clamp(0.0, 1.0)
    }

    /// Highest temperature reached over `horizon_s` when `committed_load` runs for the first
    /// `committed_s` (work already dispatched) and `load` afterwards. Each constant-load leg
    /// moves monotonically towards its steady state, so the peak is at a leg boundary.
    pub fn peak_c(
        &self,
        temp_c: f64,
        committed_load: f64,
        committed_s: f64,
        load: f64,
        horizon_s: f64,
    ) -> f64 {
        let lead = committed_s.min(horizon_s);
        let t_mid = self.predict_c(temp_c, committed_load, lead);
        let t_end = self.predict_c(t_mid, load, horizon_s - lead);
        temp_c.max(t_mid).max(t_end)
    }

    /// The largest load in `[0, 1]` that, started after the committed work, brings the
    /// temperature at the end of `horizon_s` to at most `target_c`; while heating, the end
    /// is the peak of that leg. When the committed work ends above the target this is a load
    /// that pulls the temperature back down to it, not zero: near equilibrium, sensor noise
    /// alone would otherwise collapse the rate. Whether the committed leg itself is tolerable
    /// is the caller's call ([`RcParams::peak_c`]).
    pub fn max_load_for_peak(
        &self,
        temp_c: f64,
        committed_load: f64,
        committed_s: f64,
        horizon_s: f64,
        target_c: f64,
    ) -> f64 {
        let lead = committed_s.min(horizon_s);
        let t_mid = self.predict_c(temp_c, committed_load, lead);
        let rest = horizon_s - lead;
        let decay = (-self.cool_rate * rest).exp();
        if rest <= 0.0 || decay >= 1.0 {
            return 1.0;
        }
        // End of the horizon is the peak when heating; solve T(rest) = target for T∞, then u.
        let t_inf = (target_c - t_mid * decay) / (1.0 - decay);
        ((t_inf - self.idle_temp_c) * self.cool_rate / self.heat_rate).clamp(0.0, 1.0)
    }
}

/// Online estimate of [`RcParams`] from `(temperature, load, dt)` telemetry.
#[derive(Debug, Clone)]
pub struct ThermalModel {
    cfg: ModelConfig,
    /// `(a, b, c)` with `c = b·T0`.
    theta: [f64; 3],
    p: [[f64; 3]; 3],
    samples: u32,
    /// Exponentially weighted mean square of one-step residuals, (°C/s)².
    noise_var: f64,
    trusted: Option<RcParams>,
}

/// Covariance trace above which forgetting stops: without excitation (a device held at one
/// load) forgetting would otherwise inflate the covariance without bound.
const MAX_TRACE: f64 = 1.0e4;
const NOISE_SMOOTHING: f64 = 0.05;

impl ThermalModel {
    pub fn new(cfg: ModelConfig) -> Self {
        // A weak prior (a laptop-ish device idling at 30 °C) only fills directions the data has
        // not reached yet; trust comes from the covariance, not from the prior.
        let b0 = 0.02;
        Self {
            cfg,
            theta: [1.0, b0, b0 * 30.0],
            p: [[100.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 100.0]],
            samples: 0,
            noise_var: 0.0,
            trusted: None,
        }
    }

    /// Fits one interval: temperature went from `t0_c` to `t1_c` in `dt_s` under mean load
    /// `load`. Intervals that are too long or not finite are skipped.
    pub fn observe(&mut self, dt_s: f64, t0_c: f64, t1_c: f64, load: f64) {
        let usable = dt_s > 0.0
            && dt_s <= self.cfg.max_dt_s
            && t0_c.is_finite()
            && t1_c.is_finite()
            && load.is_finite();
        if !usable {
            return;
        }
        let y = (t1_c - t0_c) / dt_s;
        let phi = [load.clamp(0.0, 1.0), -(t0_c + t1_c) / 2.0, 1.0];
        let residual = y - dot(&phi, &self.theta);
        let p_phi = mat_vec(&self.p, &phi);
        let lambda = if trace(&self.p) > MAX_TRACE {
            1.0
        } else {
            self.cfg.forgetting
        };
        let denom = lambda + dot(&phi, &p_phi);
        let gain = [p_phi[0] / denom, p_phi[1] / denom, p_phi[2] / denom];
        for (th, g) in self.theta.iter_mut().zip(gain) {
            *th += g * residual;
        }
        // P ← (P − k·φᵀP)/λ; φᵀP = (Pφ)ᵀ since P is symmetric.
        for (i, row) in self.p.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - gain[i] * p_phi[j]) / lambda;
            }
        }
        self.samples = self.samples.saturating_add(1);
        self.noise_var = if self.samples == 1 {
            residual * residual
        } else {
            (1.0 - NOISE_SMOOTHING) * self.noise_var + NOISE_SMOOTHING * residual * residual
        };
        if let Some(p) = self.confident_estimate() {
            self.trusted = Some(p);
        }
    }

    /// The latest estimate the data supports, or `None` before the load has varied enough
    /// to tell heating from cooling. Once trusted, an estimate is kept through stretches of
    /// constant load, when the data cannot confirm or refute it.
    pub fn params(&self) -> Option<RcParams> {
        self.trusted
    }

    /// The raw current estimate, trusted or not.
    pub fn estimate(&self) -> RcParams {
        to_params(&self.theta)
    }

    /// Samples fitted so far (saturating).
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// RMS of recent one-step residuals of `dT/dt`, °C/s: mostly sensor noise once fitted.
    pub fn residual_rms(&self) -> f64 {
        self.noise_var.sqrt()
    }

    fn confident_estimate(&self) -> Option<RcParams> {
        if self.samples < self.cfg.min_samples {
            return None;
        }
        let [a, b, _] = self.theta;
        // Slower than a day or faster than a second is not a device heat sink.
        if !(a > 0.0 && (1.0 / 86_400.0..=1.0).contains(&b)) {
            return None;
        }
        let se_a = (self.noise_var * self.p[0][0]).sqrt();
        let se_b = (self.noise_var * self.p[1][1]).sqrt();
        let limit = self.cfg.max_relative_error;
        (se_a <= limit * a && se_b <= limit * b).then(|| to_params(&self.theta))
    }
}

fn to_params(theta: &[f64; 3]) -> RcParams {
    let [a, b, c] = *theta;
    RcParams {
        heat_rate: a,
        cool_rate: b,
        idle_temp_c: if b != 0.0 { c / b } else { f64::NAN },
    }
}

fn dot(x: &[f64; 3], y: &[f64; 3]) -> f64 {
    x[0] * y[0] + x[1] * y[1] + x[2] * y[2]
}

fn mat_vec(m: &[[f64; 3]; 3], v: &[f64; 3]) -> [f64; 3] {
    [dot(&m[0], v), dot(&m[1], v), dot(&m[2], v)]
}

fn trace(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] + m[1][1] + m[2][2]
}
