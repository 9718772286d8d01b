//! Helpers: a seeded PRNG, random fleets and models, an evaluator written straight from
//! `../shared/fleets/README.md` (not from the crate's `cost` module), a constraint checker and
//! a brute-force search over all orderings and all splits.

use hearth_placement::fleet::{Backend, Device, Fleet, Link, Precision};
use hearth_placement::{ModelProfile, Objective, Plan, Policy};
use std::path::PathBuf;

/// xorshift64*: small, seeded, enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.range(0.0, 1.0) < p
    }
}

pub fn random_model(rng: &mut Rng, max_layers: usize) -> ModelProfile {
    let n = 2 + rng.below(max_layers as u64 - 1) as usize;
    let base = rng.range(50e6, 400e6);
    let layer_bytes: Vec<u64> = (0..n)
        .map(|_| (base * rng.range(0.8, 1.2)) as u64)
        .collect();
    let layer_params = layer_bytes.iter().map(|b| b * 2).collect();
    let tied = rng.chance(0.3);
    let emb = (base * rng.range(0.5, 2.0)) as u64;
    ModelProfile {
        name: "random".into(),
        hidden_size: 256 * (1 + rng.below(16) as usize),
        n_kv_heads: 1 + rng.below(8) as usize,
        head_dim: 64,
        layer_bytes,
        layer_params,
        embedding_bytes: emb,
        embedding_params: emb * 2,
        head_bytes: if tied { 8192 } else { emb + 8192 },
        head_params: if tied { 4096 } else { emb * 2 + 4096 },
        tied_embeddings: tied,
        tensor_types: vec!["Q4_K".into(), "F32".into()],
    }
}

/// Devices with memory between a sixth and the whole of the model, so plans use 1-4 stages.
pub fn random_fleet(rng: &mut Rng, n: usize, m: &ModelProfile, fast_links: bool) -> Fleet {
    let total = m.total_bytes() as f64 / (1u64 << 30) as f64;
    let precisions = [
        vec![Precision::F32, Precision::F16],
        vec![Precision::F32],
        vec![Precision::F16],
        vec![Precision::F32, Precision::F16, Precision::Bf16],
    ];
    let devices = (0..n)
        .map(|i| Device {
            name: format!("d{i}"),
            backend: Backend::Cpu,
            memory_gib: total * rng.range(0.17, 1.1),
            bandwidth_gbs: rng.range(20.0, 1000.0),
            tflops: rng.range(0.5, 80.0),
            precisions: precisions[if rng.chance(0.7) {
                0
            } else {
                rng.below(4) as usize
            }]
            .clone(),
            thermal_headroom: if rng.chance(0.7) {
                1.0
            } else {
                rng.range(0.3, 1.0)
            },
            on_battery: rng.chance(0.15),
        })
        .collect();
    let mut links = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            if rng.chance(0.75) {
                let fast = fast_links && rng.chance(0.4);
                links.push(Link {
                    a,
                    b,
                    latency_ms: if fast {
                        rng.range(0.05, 0.4)
                    } else {
                        rng.range(0.2, 6.0)
                    },
                    bandwidth_gbps: if fast {
                        rng.range(10.0, 100.0)
                    } else {
                        rng.range(0.1, 20.0)
                    },
                });
            }
        }
    }
    Fleet::new(devices, links).unwrap()
}

pub fn random_policy(rng: &mut Rng) -> Policy {
    Policy {
        context: 1 + rng.below(2048) as usize,
        objective: if rng.chance(0.5) {
            Objective::Latency
        } else {
            Objective::Throughput
        },
        allow_battery: rng.chance(0.5),
        min_headroom: if rng.chance(0.5) { 0.0 } else { 0.5 },
        work_limit: Some(50_000_000),
        budget: std::time::Duration::from_secs(60),
        tensor_parallel: false,
    }
}

/// (device, first_layer, end_layer)
pub type Stages = Vec<(usize, usize, usize)>;

/// (decode seconds, slowest stage or hop), straight from the README; `None` if invalid.
pub fn evaluate(f: &Fleet, m: &ModelProfile, stages: &Stages) -> Option<(f64, f64)> {
    let devs: Vec<&Device> = stages.iter().map(|s| &f.devices()[s.0]).collect();
    let act = if devs.iter().all(|d| d.precisions.contains(&Precision::F16)) {
        2.0
    } else if devs.iter().all(|d| d.precisions.contains(&Precision::F32)) {
        4.0
    } else {
        return None;
    };
    let k = stages.len();
    let (mut sum, mut max) = (0.0, 0.0f64);
    for (i, &(d, a, b)) in stages.iter().enumerate() {
        let mut bytes: u64 = m.layer_bytes[a..b].iter().sum();
        if i == k - 1 {
            bytes += m.head_bytes;
            if m.tied_embeddings {
                bytes += m.embedding_bytes;
            }
        }
        let dev = &f.devices()[d];
        let t = bytes as f64 / (dev.bandwidth_gbs * 1e9 * dev.thermal_headroom);
        sum += t;
        max = max.max(t);
    }
    if k > 1 {
        for i in 0..k {
            let l = f.link(stages[i].0, stages[(i + 1) % k].0)?;
            let payload = if i + 1 < k {
                m.hidden_size as f64 * act
            } else {
                4.0
            };
            let t = l.latency_ms / 1e3 + payload * 8.0 / (l.bandwidth_gbps * 1e9);
            sum += t;
            max = max.max(t);
        }
    }
    Some((sum, max))
}

/// Memory of each stage, from the README.
pub fn memories(m: &ModelProfile, stages: &Stages, context: usize) -> Vec<u64> {
    let k = stages.len();
    stages
        .iter()
        .enumerate()
        .map(|(i, &(_, a, b))| {
            let mut bytes: u64 = m.layer_bytes[a..b].iter().sum();
            let first = i == 0;
            let last = i == k - 1;
            if first || (last && m.tied_embeddings) {
                bytes += m.embedding_bytes;
            }
            if last {
                bytes += m.head_bytes;
            }
            bytes
                + (b - a) as u64 * context as u64 * 2 * m.n_kv_heads as u64 * m.head_dim as u64 * 2
        })
        .collect()
}

pub fn usable(f: &Fleet, d: usize, p: &Policy) -> bool {
    let dev = &f.devices()[d];
    (p.allow_battery || !dev.on_battery) && dev.thermal_headroom >= p.min_headroom
}

/// Every constraint of the issue; returns what is violated.
pub fn check(f: &Fleet, m: &ModelProfile, p: &Policy, stages: &Stages) -> Result<(), String> {
    if stages.is_empty() || stages[0].1 != 0 || stages.last().unwrap().2 != m.n_layers() {
        return Err(format!(
            "stages {stages:?} do not cover 0..{}",
            m.n_layers()
        ));
    }
    for w in stages.windows(2) {
        if w[0].2 != w[1].1 {
            return Err(format!("stages {stages:?} are not contiguous"));
        }
    }
    for (i, s) in stages.iter().enumerate() {
        if s.1 >= s.2 {
            return Err(format!("stage {i} is empty"));
        }
        if stages[..i].iter().any(|o| o.0 == s.0) {
            return Err(format!("device {} holds two stages", s.0));
        }
        if !usable(f, s.0, p) {
            return Err(format!("device {} is excluded by the policy", s.0));
        }
    }
    for (s, mem) in stages.iter().zip(memories(m, stages, p.context)) {
        let cap = (f.devices()[s.0].memory_gib * (1u64 << 30) as f64) as u64;
        if mem > cap {
            return Err(format!("device {} needs {mem} bytes, has {cap}", s.0));
        }
    }
    if evaluate(f, m, stages).is_none() {
        return Err("unlinked stages or no common activation dtype".into());
    }
    Ok(())
}

pub fn stages_of(plan: &Plan) -> Stages {
    plan.stages
        .iter()
        .map(|s| (s.device_index, s.first_layer, s.end_layer))
        .collect()
}

/// The objective's (primary, secondary) figures.
pub fn key(o: Objective, c: (f64, f64)) -> (f64, f64) {
    match o {
        Objective::Latency => c,
        Objective::Throughput => (c.1, c.0),
    }
}

fn lex_better(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.0 * (1.0 - 1e-12) || (a.0 <= b.0 * (1.0 + 1e-12) && a.1 < b.1 * (1.0 - 1e-12))
}

/// Best (primary, secondary) over every ordering of every subset of usable devices and every
/// split of the layers into contiguous non-empty ranges.
pub fn brute_force(f: &Fleet, m: &ModelProfile, p: &Policy) -> Option<((f64, f64), Stages)> {
    let devices: Vec<usize> = (0..f.len()).filter(|&d| usable(f, d, p)).collect();
    let mut best: Option<((f64, f64), Stages)> = None;
    let mut order = Vec::new();
    permute(&devices, &mut order, &mut |ord| {
        splits(m.n_layers(), ord.len(), &mut |cuts| {
            let mut stages = Vec::with_capacity(ord.len());
            let mut at = 0;
            for (i, &d) in ord.iter().enumerate() {
                stages.push((d, at, cuts[i]));
                at = cuts[i];
            }
            if check(f, m, p, &stages).is_ok() {
                let k = key(p.objective, evaluate(f, m, &stages).unwrap());
                if best.as_ref().is_none_or(|b| lex_better(k, b.0)) {
                    best = Some((k, stages));
                }
            }
        });
    });
    best
}

fn permute(devices: &[usize], order: &mut Vec<usize>, visit: &mut dyn FnMut(&[usize])) {
    if !order.is_empty() {
        visit(order);
    }
    for &d in devices {
        if !order.contains(&d) {
            order.push(d);
            permute(devices, order, visit);
            order.pop();
        }
    }
}

/// Every way to cut `n` layers into `k` non-empty ranges: visits the end of each range.
fn splits(n: usize, k: usize, visit: &mut dyn FnMut(&[usize])) {
    fn go(n: usize, k: usize, at: usize, cuts: &mut Vec<usize>, visit: &mut dyn FnMut(&[usize])) {
        if cuts.len() + 1 == k {
            cuts.push(n);
            visit(cuts);
            cuts.pop();
            return;
        }
        for c in at + 1..n {
            if n - c >= k - cuts.len() - 1 {
                cuts.push(c);
                go(n, k, c, cuts, visit);
                cuts.pop();
            }
        }
    }
    if k <= n {
        go(n, k, 0, &mut Vec::new(), visit);
    }
}

pub fn shared_dir() -> PathBuf {
    std::env::var_os("HEARTH_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")))
}

pub fn workspace_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn read_fleet(path: &std::path::Path) -> Fleet {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("fleet {} unreadable ({e})", path.display()));
    Fleet::from_toml(&text).unwrap_or_else(|e| panic!("fleet {}: {e}", path.display()))
}
