//! What the user asks of a plan: context, objective, which devices may be used, how long to
//! search.

use crate::error::PolicyError;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Fastest single-stream decode: minimise the sum of stage and hop times.
    Latency,
    /// Best pipeline rate for many streams: minimise the slowest stage or hop.
    Throughput,
}

impl Objective {
    pub fn parse(s: &str) -> Option<Objective> {
        match s {
            "latency" => Some(Objective::Latency),
            "throughput" => Some(Objective::Throughput),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Objective::Latency => "latency",
            Objective::Throughput => "throughput",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Tokens of KV cache every stage reserves.
    pub context: usize,
    pub objective: Objective,
    pub allow_battery: bool,
    /// Devices whose `thermal_headroom` is below this are left out.
    pub min_headroom: f64,
    /// Wall-clock limit of the search.
    pub budget: Duration,
    /// Search nodes the exact search may expand. It is the limit that normally stops a search
    /// first, so that a plan does not depend on the machine's speed; the wall clock is a
    /// backstop. `None`: derived from `budget` ([`Policy::NODES_PER_MS`] per millisecond).
    pub work_limit: Option<u64>,
    /// Also search plans where fast-linked devices share a stage (reported beside the plan).
    pub tensor_parallel: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            context: 4096,
            objective: Objective::Latency,
            allow_battery: false,
            min_headroom: 0.5,
            budget: Duration::from_millis(100),
            work_limit: None,
            tensor_parallel: true,
        }
    }
}

impl Policy {
    /// A conservative node rate, so that the work limit rather than the clock ends a search on
    /// ordinary hardware.
    pub const NODES_PER_MS: u64 = 8_000;

    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.context == 0 {
            return Err(PolicyError::Invalid {
                field: "context",
                problem: "must be at least 1 token".into(),
            });
        }
        if !(self.min_headroom.is_finite() && (0.0..=1.0).contains(&self.min_headroom)) {
            return Err(PolicyError::Invalid {
                field: "min_headroom",
                problem: format!("must be in [0, 1], got {}", self.min_headroom),
            });
        }
        if self.budget.is_zero() {
            return Err(PolicyError::Invalid {
                field: "budget",
                problem: "must be more than 0 ms".into(),
            });
        }
        if self.work_limit == Some(0) {
            return Err(PolicyError::Invalid {
                field: "work_limit",
                problem: "must be more than 0 nodes".into(),
            });
        }
        Ok(())
    }

    pub fn work_limit(&self) -> u64 {
        self.work_limit.unwrap_or_else(|| {
            (self.budget.as_millis() as u64)
                .max(1)
                .saturating_mul(Self::NODES_PER_MS)
        })
    }
}
