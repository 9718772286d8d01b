//! Baseline splits from other systems, priced with the same cost model: every usable device
//! gets a share of the layers proportional to its memory (exo) or to its TFLOP/s (cake).
//! Devices keep fleet order; a device whose share rounds to no layers is dropped.

use crate::cost::{self, Prediction, StageSpec};
use crate::fleet::{Fleet, Precision};
use crate::model::ModelProfile;
use crate::plan::exclusion;
use crate::policy::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// exo: layers in proportion to memory.
    MemoryProportional,
    /// cake: layers in proportion to compute.
    TflopsProportional,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BaselinePlan {
    pub stages: Vec<StageSpec>,
    /// `None` when consecutive stages are not linked.
    pub prediction: Option<Prediction>,
    /// Every stage fits its device's memory.
    pub fits: bool,
}

/// Splits `n_layers` by `weights` with largest remainders, so the shares sum exactly.
pub fn proportional_split(n_layers: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights
        .iter()
        .map(|w| w / total * n_layers as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n_layers - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// The baseline's plan over the devices the policy allows (those that can compute in the
/// fleet's common activation dtype).
pub fn baseline(fleet: &Fleet, m: &ModelProfile, policy: &Policy, kind: Baseline) -> BaselinePlan {
    let mut devices: Vec<usize> = (0..fleet.len())
        .filter(|&i| exclusion(fleet, i, m, policy).is_none())
        .collect();
    if cost::act_dtype(devices.iter().map(|&d| &fleet.devices()[d])).is_none() {
        devices.retain(|&d| fleet.devices()[d].supports(Precision::F32));
    }
    let weights: Vec<f64> = devices
        .iter()
        .map(|&d| {
            let dev = &fleet.devices()[d];
            match kind {
                Baseline::MemoryProportional => dev.memory_gib,
                Baseline::TflopsProportional => dev.tflops * dev.thermal_headroom,
            }
        })
        .collect();
    let counts = if devices.is_empty() {
        Vec::new()
    } else {
        proportional_split(m.n_layers(), &weights)
    };
    let mut stages = Vec::new();
    let mut at = 0;
    for (&d, &c) in devices.iter().zip(&counts) {
        if c > 0 {
            stages.push(StageSpec {
                device: d,
                first_layer: at,
                end_layer: at + c,
            });
            at += c;
        }
    }
    let fits = !stages.is_empty()
        && cost::stage_memories(m, &stages, policy.context)
            .iter()
            .zip(&stages)
            .all(|(&mem, s)| mem <= fleet.devices()[s.device].memory_bytes());
    let prediction = if stages.is_empty() {
        None
    } else {
        cost::predict(fleet, m, &stages)
    };
    BaselinePlan {
        stages,
        prediction,
        fits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_layers() {
        assert_eq!(proportional_split(10, &[1.0, 1.0, 2.0]), vec![3, 2, 5]);
        assert_eq!(
            proportional_split(80, &[22.0, 11.0, 24.0])
                .iter()
                .sum::<usize>(),
            80
        );
        assert_eq!(
            proportional_split(3, &[1.0, 1.0, 1.0, 1.0]),
            vec![1, 1, 1, 0]
        );
    }
}
