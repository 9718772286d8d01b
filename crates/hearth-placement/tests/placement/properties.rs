//! Random fleets and models: constraints hold, predictions match the independent evaluation,
//! and on up to six devices the plan is the brute-force optimum.

use crate::common::*;
use hearth_placement::baseline::{baseline, Baseline};
use hearth_placement::tensor_parallel::{self, TpStage};
use hearth_placement::{cost, plan, Objective, PlanError};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
fn plans_equal_the_brute_force_optimum_up_to_six_devices() {
    let (mut solved, mut infeasible) = (0, 0);
    for seed in 0..400u64 {
        let mut rng = Rng::new(seed);
        let m = random_model(&mut rng, 8);
        let n = 2 + rng.below(5) as usize;
        let f = random_fleet(&mut rng, n, &m, false);
        let p = random_policy(&mut rng);
        let brute = brute_force(&f, &m, &p);
        match (plan(&f, &m, &p), brute) {
            (Ok(got), Some((want, want_stages))) => {
                solved += 1;
                let stages = stages_of(&got);
                check(&f, &m, &p, &stages).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert!(got.optimal, "seed {seed}: search did not finish");
                let k = key(p.objective, evaluate(&f, &m, &stages).unwrap());
                assert!(
                    close(k.0, want.0) && close(k.1, want.1),
                    "seed {seed}: plan {stages:?} costs {k:?}, brute force {want_stages:?} {want:?}"
                );
            }
            (Err(e), None) => {
                infeasible += 1;
                assert!(
                    matches!(
                        e,
                        PlanError::DoesNotFit { .. }
                            | PlanError::NoChain { .. }
                            | PlanError::NoUsableDevice { .. }
                    ),
                    "seed {seed}: {e}"
                );
            }
            (Ok(got), None) => panic!("seed {seed}: brute force finds no plan, planner {got:?}"),
            (Err(e), Some(b)) => panic!("seed {seed}: planner failed ({e}), brute force {b:?}"),
        }
    }
    assert!(
        solved > 200 && infeasible > 10,
        "{solved} solved, {infeasible} infeasible"
    );
}

#[test]
fn plans_on_up_to_eight_devices_keep_every_constraint_and_beat_the_baselines() {
    for seed in 1000..1300u64 {
        let mut rng = Rng::new(seed);
        let m = random_model(&mut rng, 48);
        let n = 2 + rng.below(7) as usize;
        let f = random_fleet(&mut rng, n, &m, true);
        let mut p = random_policy(&mut rng);
        p.tensor_parallel = rng.chance(0.5);
        let Ok(got) = plan(&f, &m, &p) else { continue };
        let stages = stages_of(&got);
        check(&f, &m, &p, &stages).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let (decode, bottleneck) = evaluate(&f, &m, &stages).unwrap();
        assert!(close(got.prediction.decode_s, decode), "seed {seed}");
        assert!(
            close(got.prediction.bottleneck_s, bottleneck),
            "seed {seed}"
        );
        for (s, mem) in got.stages.iter().zip(memories(&m, &stages, p.context)) {
            assert_eq!(s.memory_bytes, mem, "seed {seed}");
        }
        // Excluded and unused devices all come with a reason.
        for d in 0..f.len() {
            let used = stages.iter().any(|s| s.0 == d);
            let reasoned = got.unused.iter().any(|u| u.device == f.devices()[d].name);
            assert!(
                used != reasoned,
                "seed {seed}: device {d} used={used} reasoned={reasoned}"
            );
        }
        if got.optimal {
            for kind in [Baseline::MemoryProportional, Baseline::TflopsProportional] {
                let b = baseline(&f, &m, &p, kind);
                let valid = b.fits
                    && b.stages.iter().all(|s| usable(&f, s.device, &p))
                    && b.prediction.is_some();
                if valid {
                    let bp = b.prediction.unwrap();
                    let (mine, theirs) = match p.objective {
                        Objective::Latency => (got.prediction.decode_s, bp.decode_s),
                        Objective::Throughput => (got.prediction.bottleneck_s, bp.bottleneck_s),
                    };
                    assert!(
                        mine <= theirs * (1.0 + 1e-9),
                        "seed {seed}: {kind:?} is better"
                    );
                }
            }
        }
        if let Some(tp) = &got.tensor_parallel {
            let again = tensor_parallel::predict(&f, &m, &tp.stages).unwrap();
            assert!(close(again.decode_s, tp.prediction.decode_s), "seed {seed}");
            if tp.optimal && p.objective == Objective::Latency && got.optimal {
                // Groups only add options: the search with them is never worse.
                assert!(tp.prediction.decode_s <= got.prediction.decode_s * (1.0 + 1e-9));
            }
        }
    }
}

#[test]
fn the_same_input_gives_the_same_plan() {
    for seed in 2000..2050u64 {
        let mut rng = Rng::new(seed);
        let m = random_model(&mut rng, 40);
        let f = random_fleet(&mut rng, 8, &m, true);
        let p = random_policy(&mut rng);
        let a = plan(&f, &m, &p).map(|x| (stages_of(&x), x.optimal, x.nodes));
        let b = plan(&f, &m, &p).map(|x| (stages_of(&x), x.optimal, x.nodes));
        assert_eq!(a.is_ok(), b.is_ok());
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_eq!(a, b, "seed {seed}");
        }
    }
}

#[test]
fn one_device_groups_are_priced_like_pipeline_stages() {
    for seed in 3000..3100u64 {
        let mut rng = Rng::new(seed);
        let m = random_model(&mut rng, 20);
        let f = random_fleet(&mut rng, 5, &m, true);
        let p = random_policy(&mut rng);
        let Ok(got) = plan(&f, &m, &p) else { continue };
        let tp: Vec<TpStage> = got
            .stages
            .iter()
            .map(|s| TpStage {
                devices: vec![s.device_index],
                first_layer: s.first_layer,
                end_layer: s.end_layer,
            })
            .collect();
        let a = tensor_parallel::predict(&f, &m, &tp).unwrap();
        let b = cost::predict(&f, &m, &got.stage_specs()).unwrap();
        assert!(close(a.decode_s, b.decode_s) && close(a.prefill_s, b.prefill_s));
    }
}

/// Reasons the report gives, by their opening words: each names a specific cause.
const REASONS: [&str; 9] = [
    "on battery",
    "thermal headroom ",
    "backend ",
    "computes in neither",
    "needs ",
    "lists no ",
    "no link to ",
    "slower (",
    "holds the model alone",
];

pub fn assert_specific_reasons(got: &hearth_placement::Plan, what: &str) {
    for u in &got.unused {
        assert!(
            REASONS.iter().any(|r| u.reason.starts_with(r)),
            "{what}: {}: {:?}",
            u.device,
            u.reason
        );
        if u.reason.starts_with("needs ") {
            assert_eq!(u.reason.matches("GiB").count(), 2, "{what}: {:?}", u.reason);
        }
    }
}

#[test]
fn every_unused_device_has_a_specific_reason() {
    let mut seen = 0;
    for seed in 4000..4300u64 {
        let mut rng = Rng::new(seed);
        let m = random_model(&mut rng, 32);
        let n = 2 + rng.below(10) as usize;
        let fast = rng.chance(0.5);
        let f = random_fleet(&mut rng, n, &m, fast);
        let p = random_policy(&mut rng);
        let Ok(got) = plan(&f, &m, &p) else { continue };
        assert_eq!(got.stages.len() + got.unused.len(), f.len(), "seed {seed}");
        seen += got.unused.len();
        assert_specific_reasons(&got, &format!("seed {seed}"));
    }
    assert!(seen > 100, "only {seen} unused devices");
}
