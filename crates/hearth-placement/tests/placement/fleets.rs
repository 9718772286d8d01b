//! The shared fleets and the bundled ones in `<workspace>/fleets/`: plans keep every
//! constraint and are at least as fast as both baselines. Run with `--nocapture` to print the
//! table of docs/BENCHMARKS.md.

use crate::common::*;
use hearth_placement::baseline::{baseline, Baseline, BaselinePlan};
use hearth_placement::profiles::catalog_profile;
use hearth_placement::{plan, Policy};
use std::path::PathBuf;

/// Each fleet with the model it is planned for (the largest catalog model it can hold).
fn cases() -> Vec<(PathBuf, &'static str)> {
    let shared = shared_dir().join("fleets");
    let own = workspace_dir().join("fleets");
    vec![
        (shared.join("home-mixed.toml"), "qwen2.5-32b-q4_k_m"),
        (shared.join("home-mixed.toml"), "llama-3.1-8b-q4_k_m"),
        (shared.join("phones-and-laptop.toml"), "llama-3.1-8b-q4_k_m"),
        (own.join("gpu-and-nas.toml"), "qwen2.5-32b-q4_k_m"),
        (own.join("mac-studio-pair.toml"), "llama-3.1-70b-q4_k_m"),
        (own.join("office-lan.toml"), "llama-3.1-70b-q4_k_m"),
        (own.join("jetson-rack.toml"), "llama-3.1-70b-q4_k_m"),
        (own.join("lan-party.toml"), "qwen2.5-32b-q4_k_m"),
        (own.join("travel-kit.toml"), "llama-3.1-8b-q4_k_m"),
    ]
}

fn speed(b: &BaselinePlan) -> (f64, bool) {
    match b.prediction {
        Some(p) => (p.decode_tok_s(), b.fits),
        None => (0.0, false),
    }
}

fn cell(s: (f64, bool)) -> String {
    match s {
        (v, true) => format!("{v:.2}"),
        (0.0, false) => "unlinked".into(),
        (v, false) => format!("{v:.2} (does not fit)"),
    }
}

#[test]
fn every_fleet_beats_both_baselines() {
    let own = std::fs::read_dir(workspace_dir().join("fleets"))
        .expect("bundled fleets")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
        })
        .count();
    assert!(own >= 5, "only {own} bundled fleets");
    println!("| fleet | model | plan | tok/s | memory-prop. tok/s | TFLOP/s-prop. tok/s | vs memory-prop. | TP |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut big_wins = 0;
    for (path, model) in cases() {
        let f = read_fleet(&path);
        let m = catalog_profile(model).expect("catalog profile");
        let p = Policy::default();
        let got = plan(&f, &m, &p).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stages = stages_of(&got);
        check(&f, &m, &p, &stages).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(got.optimal, "{}", path.display());
        assert_eq!(got.stages.len() + got.unused.len(), f.len());
        crate::properties::assert_specific_reasons(&got, &path.display().to_string());
        let mine = got.prediction.decode_tok_s();
        let mem = speed(&baseline(&f, &m, &p, Baseline::MemoryProportional));
        let tfl = speed(&baseline(&f, &m, &p, Baseline::TflopsProportional));
        // A baseline that overfills a device is no plan; the table still shows its speed.
        for b in [mem, tfl].into_iter().filter(|b| b.1) {
            assert!(
                mine >= b.0 * (1.0 - 1e-9),
                "{}: baseline faster",
                path.display()
            );
        }
        let ratio = mine / mem.0;
        if ratio >= 1.3 {
            big_wins += 1;
        }
        let plan_text: Vec<String> = got
            .stages
            .iter()
            .map(|s| format!("{} {}..{}", s.device, s.first_layer, s.end_layer))
            .collect();
        let tp = match &got.tensor_parallel {
            Some(t) if t.wins => format!("wins: {:.2} tok/s", t.prediction.decode_tok_s()),
            Some(_) => "loses".into(),
            None => "no fast links".into(),
        };
        println!(
            "| {} | {model} | {} | {mine:.2} | {} | {} | {ratio:.2}x | {tp} |",
            path.file_name().unwrap().to_string_lossy(),
            plan_text.join(", "),
            cell(mem),
            cell(tfl),
        );
    }
    assert!(
        big_wins >= 3,
        "only {big_wins} fleets gain 1.3x over memory-proportional"
    );
}
