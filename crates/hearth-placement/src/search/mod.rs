//! Exact search for the best pipeline. For the latency objective over up to 18
//! single devices: device sets in increasing order of an admissible bound (read time plus the
//! cheapest entry into each stage), each solved over its cyclic orders (exact remaining hops
//! by Held–Karp) and a DP over split points. Otherwise: depth-first branch-and-bound over (next
//! unit, its layer range), with memoised dominance on (first unit, last unit, layers covered,
//! units used) and an admissible fluid lower bound. Both stop at a work budget
//! (deterministic) or a wall-clock deadline, whichever comes first, and say whether they
//! finished.

mod branch_bound;
mod sets;

use crate::cost;
use crate::model::ModelProfile;
use crate::policy::Objective;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

/// A set of physical devices, one bit each (up to [`crate::fleet::MAX_DEVICES`]).
pub type Mask = [u64; 4];

pub fn mask_of(devices: &[usize]) -> Mask {
    let mut m = [0u64; 4];
    for &d in devices {
        m[d / 64] |= 1 << (d % 64);
    }
    m
}

fn overlaps(a: &Mask, b: &Mask) -> bool {
    a.iter().zip(b).any(|(x, y)| x & y != 0)
}

fn union(a: &Mask, b: &Mask) -> Mask {
    [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
}

fn has(m: &Mask, d: usize) -> bool {
    m[d / 64] & (1 << (d % 64)) != 0
}

/// What can hold one stage: a device, or a tensor-parallel group of devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Physical devices, in fleet order.
    pub members: Vec<usize>,
    /// Weight bytes per second the unit reads while decoding.
    pub read_rate: f64,
    /// Stage memory (weights + KV) the unit can hold.
    pub capacity: u64,
    /// Extra decode seconds per layer (tensor-parallel all-reduce); 0 for one device.
    pub layer_overhead_s: f64,
}

/// A search instance: units, the hop times between them, the model and the objective.
pub struct Problem<'a> {
    pub model: &'a ModelProfile,
    pub context: usize,
    pub objective: Objective,
    pub units: Vec<Unit>,
    /// `hop[u * n + v]`: seconds to send one token's hidden state u → v; infinite if unlinked.
    pub hop: Vec<f64>,
    /// `ring[u * n + v]`: seconds to send the token id u → v; infinite if unlinked.
    pub ring: Vec<f64>,
    /// Physical devices of the units: (index, read rate, memory), for the fluid bound.
    pub physical: Vec<(usize, f64, u64)>,
}

/// Cost of a (partial) plan: `sum` is single-stream decode seconds, `max` the slowest stage or
/// hop. The objective orders them lexicographically, its own figure first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub sum: f64,
    pub max: f64,
}

impl Cost {
    const ZERO: Cost = Cost { sum: 0.0, max: 0.0 };
    pub const INFINITE: Cost = Cost {
        sum: f64::INFINITY,
        max: f64::INFINITY,
    };

    fn add(self, t: f64) -> Cost {
        Cost {
            sum: self.sum + t,
            max: self.max.max(t),
        }
    }

    /// (primary, secondary) under the objective.
    pub fn key(self, o: Objective) -> (f64, f64) {
        match o {
            Objective::Latency => (self.sum, self.max),
            Objective::Throughput => (self.max, self.sum),
        }
    }
}

/// Relative tolerance under which two costs count as equal; ties keep the plan found first.
pub const TIE: f64 = 1e-12;

/// `a` strictly better than `b` under `o`.
pub fn better(a: Cost, b: Cost, o: Objective) -> bool {
    let (a0, a1) = a.key(o);
    let (b0, b1) = b.key(o);
    if !b0.is_finite() {
        return a0.is_finite();
    }
    let e0 = b0.abs() * TIE;
    if a0 < b0 - e0 {
        return true;
    }
    if a0 > b0 + e0 {
        return false;
    }
    a1 < b1 - b1.abs() * TIE
}

/// Can a plan whose cost is at least `lb` (componentwise) still beat `best`?
fn may_beat(lb: Cost, best: Cost, o: Objective) -> bool {
    let (l0, l1) = lb.key(o);
    let (b0, b1) = best.key(o);
    if !b0.is_finite() {
        return l0.is_finite();
    }
    let e0 = b0.abs() * TIE;
    if l0 < b0 - e0 {
        return true;
    }
    if l0 > b0 + e0 {
        return false;
    }
    l1 < b1 - b1.abs() * TIE
}

/// A stage on a unit: layers `first_layer..end_layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitStage {
    pub unit: usize,
    pub first_layer: usize,
    pub end_layer: usize,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub best: Option<(Vec<UnitStage>, Cost)>,
    /// The search ran to the end: `best` is optimal (or no plan exists).
    pub complete: bool,
    pub nodes: u64,
    /// A lower bound on any plan's cost, before searching.
    pub root_bound: Cost,
}

/// Limits on one search.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Instant,
    pub work_limit: u64,
}

#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u16(&mut self, x: u16) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type Memo = HashMap<(Mask, u16, u16, u16), Cost, BuildHasherDefault<Fx>>;

/// Memo entries kept at most; beyond it the search goes on without remembering new states.
const MEMO_CAP: usize = 4_000_000;

struct Solver<'p, 'a> {
    p: &'p Problem<'a>,
    n_layers: usize,
    /// Prefix sums over layers: read bytes, and memory (bytes + KV).
    pre_bytes: Vec<u64>,
    pre_mem: Vec<u64>,
    head_read: u64,
    /// Bytes of the smallest layer: what any stage reads at least.
    min_layer: f64,
    masks: Vec<Mask>,
    /// Per unit: linked units, fastest first (the branching order).
    by_rate: Vec<Vec<u32>>,
    /// Per unit: linked units by forward hop time, then by ring hop time into it.
    by_hop: Vec<Vec<u32>>,
    by_ring: Vec<Vec<u32>>,
    /// Units by capacity, largest first: how few more stages can hold the rest.
    by_capacity: Vec<u32>,
    /// Quickest forward hop anywhere.
    min_hop: f64,
    /// Per unit: the most weight bytes it can read per token, from its memory (`ρ × memory`
    /// with `ρ` the largest share of a layer's memory that is weights, plus the head's slack).
    read_cap: Vec<f64>,
    /// Per unit: seconds per byte it reads, plus its cheapest incoming hop spread over its
    /// read capacity. Every stage after the first pays a hop into it, so this prices a byte
    /// with its share of that fixed cost (the linear relaxation of the fixed charge).
    charge_hop: Vec<f64>,
    /// The same with the cheapest hop or ring hop into the unit: at the root any stage may be
    /// the first, which is entered by the ring hop.
    charge_any: Vec<f64>,
    /// `walk[k][d * n + f]` (up to [`WALK_UNITS`] units): the cheapest walk from `d` through
    /// at least `k` further stages and the ring hop into `f`, revisits allowed. The remaining
    /// hops of a plan are such a walk, with `k` at least the stages its memory needs.
    walk: Vec<Vec<f64>>,
    /// Units by `charge_hop` / `charge_any`, cheapest first.
    by_charge_hop: Vec<u32>,
    by_charge_any: Vec<u32>,
    /// The next lower unit interchangeable with this one (same figures, same hops to every
    /// other unit). Plans use twins in index order, which loses no cost.
    prev_twin: Vec<Option<u32>>,
    memo: Memo,
    best: Cost,
    best_path: Option<Vec<UnitStage>>,
    path: Vec<UnitStage>,
    nodes: u64,
    budget: Budget,
    aborted: bool,
}

impl<'p, 'a> Solver<'p, 'a> {
    fn new(p: &'p Problem<'a>, budget: Budget, incumbent: Cost) -> Self {
        let m = p.model;
        let n_layers = m.n_layers();
        let kv = cost::kv_bytes(m, 1, p.context);
        let mut pre_bytes = vec![0u64; n_layers + 1];
        let mut pre_mem = vec![0u64; n_layers + 1];
        for l in 0..n_layers {
            pre_bytes[l + 1] = pre_bytes[l] + m.layer_bytes[l];
            pre_mem[l + 1] = pre_mem[l] + m.layer_bytes[l] + kv;
        }
        let n = p.units.len();
        let masks: Vec<Mask> = p.units.iter().map(|u| mask_of(&u.members)).collect();
        let rate_order = |a: &u32, b: &u32| {
            let (ua, ub) = (&p.units[*a as usize], &p.units[*b as usize]);
            ub.read_rate.total_cmp(&ua.read_rate).then(a.cmp(b))
        };
        let mut by_rate = Vec::with_capacity(n);
        let mut by_hop = Vec::with_capacity(n);
        let mut by_ring = Vec::with_capacity(n);
        for u in 0..n {
            let mut linked: Vec<u32> = (0..n as u32)
                .filter(|&v| p.hop[u * n + v as usize].is_finite())
                .collect();
            linked.sort_by(rate_order);
            by_rate.push(linked.clone());
            let mut h = linked.clone();
            h.sort_by(|&a, &b| {
                p.hop[u * n + a as usize]
                    .total_cmp(&p.hop[u * n + b as usize])
                    .then(a.cmp(&b))
            });
            by_hop.push(h);
            let mut r: Vec<u32> = (0..n as u32)
                .filter(|&v| p.ring[v as usize * n + u].is_finite())
                .collect();
            r.sort_by(|&a, &b| {
                p.ring[a as usize * n + u]
                    .total_cmp(&p.ring[b as usize * n + u])
                    .then(a.cmp(&b))
            });
            by_ring.push(r);
        }
        let mut by_capacity: Vec<u32> = (0..n as u32).collect();
        by_capacity.sort_by(|&a, &b| {
            p.units[b as usize]
                .capacity
                .cmp(&p.units[a as usize].capacity)
                .then(a.cmp(&b))
        });
        let min_hop = p.hop.iter().copied().fold(f64::INFINITY, f64::min);
        let prev_twin = twins(p, &masks);
        let head_read = cost::head_read_bytes(m);
        // A stage's layer bytes are at most `rho` of their memory, and the head (held in full,
        // read in full) adds at most `(1 - rho) * head` beyond `rho * memory`. The margin keeps
        // rounding from ever making the capacity smaller than a real stage's reads.
        let rho = (0..n_layers)
            .map(|l| m.layer_bytes[l] as f64 / (m.layer_bytes[l] + kv) as f64)
            .fold(0.0f64, f64::max);
        let read_cap: Vec<f64> = p
            .units
            .iter()
            .map(|u| (rho * u.capacity as f64 + (1.0 - rho) * head_read as f64) * (1.0 + 1e-9))
            .collect();
        let charge = |into: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
            (0..n)
                .map(|u| {
                    let entry = (0..n)
                        .filter(|&v| v != u)
                        .map(|v| into(v, u))
                        .fold(f64::INFINITY, f64::min);
                    if read_cap[u] > 0.0 {
                        1.0 / p.units[u].read_rate + entry / read_cap[u]
                    } else {
                        f64::INFINITY
                    }
                })
                .collect()
        };
        let charge_hop = charge(&|v, u| p.hop[v * n + u]);
        let charge_any = charge(&|v, u| p.hop[v * n + u].min(p.ring[v * n + u]));
        let order = |c: &[f64]| -> Vec<u32> {
            let mut o: Vec<u32> = (0..n as u32)
                .filter(|&u| c[u as usize].is_finite())
                .collect();
            o.sort_by(|&a, &b| c[a as usize].total_cmp(&c[b as usize]).then(a.cmp(&b)));
            o
        };
        let walk = walks(p);
        let by_charge_hop = order(&charge_hop);
        let by_charge_any = order(&charge_any);
        Solver {
            p,
            n_layers,
            by_capacity,
            min_hop,
            read_cap,
            charge_hop,
            charge_any,
            by_charge_hop,
            by_charge_any,
            walk,
            prev_twin,
            pre_bytes,
            pre_mem,
            head_read: cost::head_read_bytes(m),
            min_layer: m.layer_bytes.iter().copied().min().unwrap_or(0) as f64,
            masks,
            by_rate,
            by_hop,
            by_ring,
            memo: Memo::default(),
            best: incumbent,
            best_path: None,
            path: Vec::new(),
            nodes: 0,
            budget,
            aborted: false,
        }
    }

    fn stage_mem(&self, a: usize, b: usize, first: bool, last: bool) -> u64 {
        self.pre_mem[b] - self.pre_mem[a] + cost::end_bytes(self.p.model, first, last)
    }

    fn stage_time(&self, u: usize, a: usize, b: usize, last: bool) -> f64 {
        let unit = &self.p.units[u];
        let bytes = self.pre_bytes[b] - self.pre_bytes[a] + if last { self.head_read } else { 0 };
        bytes as f64 / unit.read_rate + (b - a) as f64 * unit.layer_overhead_s
    }

    /// Lower bound on every plan, for the gap of a search that stops early: the single-stage
    /// plans exactly, and for plans of two or more stages, in which every stage is entered by
    /// a hop or the ring hop, the better of the fluid bound and the fixed-charge relaxation.
    fn root_bound(&self) -> Option<Cost> {
        let fluid = self.bound(None, None, 0, &[0; 4])?;
        let o = self.p.objective;
        let mut single = Cost::INFINITE;
        for u in 0..self.p.units.len() {
            if self.stage_mem(0, self.n_layers, true, true) <= self.p.units[u].capacity {
                let t = Cost::ZERO.add(self.stage_time(u, 0, self.n_layers, true));
                if better(t, single, o) {
                    single = t;
                }
            }
        }
        let multi = self
            .fixed_charge(0, &[0; 4], true)
            .map_or(Cost::INFINITE, |fc| Cost {
                sum: fluid.sum.max(fc),
                max: fluid.max,
            });
        Some(if better(single, multi, o) {
            single
        } else {
            multi
        })
    }

    fn tick(&mut self) -> bool {
        self.nodes += 1;
        if self.nodes >= self.budget.work_limit
            || (self.nodes.is_multiple_of(1024) && Instant::now() >= self.budget.deadline)
        {
            self.aborted = true;
        }
        self.aborted
    }
}

/// Units up to which the latency objective is solved by listing device sets (2^n of them).
const SET_UNITS: usize = 18;

/// Set sizes up to which an order's remaining hops are bounded exactly (a table of `2^k × k`
/// per first unit); larger sets use the cheapest edge into each unit left.
const EXACT_TAIL_UNITS: usize = 12;

/// Units up to which the walk table is kept (its cost grows as the fourth power).
const WALK_UNITS: usize = 48;

/// `out[k][d * n + f]`: the cheapest `d` → e1 → … → ek, then ring ek → `f`, over any `j ≥ k`
/// stages; `out[0]` is all zeros. Empty beyond [`WALK_UNITS`] units.
fn walks(p: &Problem) -> Vec<Vec<f64>> {
    let n = p.units.len();
    if !(2..=WALK_UNITS).contains(&n) {
        return Vec::new();
    }
    let mut exact = vec![vec![0.0; n * n]];
    let mut w = vec![f64::INFINITY; n * n];
    for d in 0..n {
        for e in 0..n {
            let h = p.hop[d * n + e];
            if !h.is_finite() {
                continue;
            }
            for f in 0..n {
                let t = h + p.ring[e * n + f];
                if t < w[d * n + f] {
                    w[d * n + f] = t;
                }
            }
        }
    }
    exact.push(w);
    for _ in 2..n {
        let prev = exact.last().expect("level 1 exists");
        let mut w = vec![f64::INFINITY; n * n];
        for d in 0..n {
            for e in 0..n {
                let h = p.hop[d * n + e];
                if !h.is_finite() {
                    continue;
                }
                for f in 0..n {
                    let t = h + prev[e * n + f];
                    if t < w[d * n + f] {
                        w[d * n + f] = t;
                    }
                }
            }
        }
        exact.push(w);
    }
    // A plan may use more stages than its memory needs, so level k takes the best of all
    // deeper levels too.
    for k in (1..exact.len() - 1).rev() {
        let (lo, hi) = exact.split_at_mut(k + 1);
        for (a, b) in lo[k].iter_mut().zip(&hi[0]) {
            *a = a.min(*b);
        }
    }
    exact
}

/// For each unit, the closest lower-index unit it can be swapped with in any plan without
/// changing the plan's cost or feasibility.
fn twins(p: &Problem, masks: &[Mask]) -> Vec<Option<u32>> {
    let n = p.units.len();
    let same = |u: usize, v: usize| -> bool {
        let (a, b) = (&p.units[u], &p.units[v]);
        if a.read_rate != b.read_rate
            || a.capacity != b.capacity
            || a.layer_overhead_s != b.layer_overhead_s
            || overlaps(&masks[u], &masks[v])
            || p.hop[u * n + v] != p.hop[v * n + u]
            || p.ring[u * n + v] != p.ring[v * n + u]
        {
            return false;
        }
        (0..n).filter(|&w| w != u && w != v).all(|w| {
            p.hop[u * n + w] == p.hop[v * n + w]
                && p.hop[w * n + u] == p.hop[w * n + v]
                && p.ring[u * n + w] == p.ring[v * n + w]
                && p.ring[w * n + u] == p.ring[w * n + v]
        })
    };
    let mut prev = vec![None; n];
    for (v, slot) in prev.iter_mut().enumerate() {
        // Twins share figures, so only candidates with the same rate need the full check.
        for u in (0..v).rev() {
            if p.units[u].read_rate == p.units[v].read_rate && same(u, v) {
                *slot = Some(u as u32);
                break;
            }
        }
    }
    prev
}

/// Searches for the best plan better than `incumbent` (pass [`Cost::INFINITE`] for none).
pub fn search(p: &Problem, budget: Budget, incumbent: Cost) -> Outcome {
    let mut s = Solver::new(p, budget, incumbent);
    let root_bound = s.root_bound().unwrap_or(Cost::INFINITE);
    if root_bound.sum.is_finite() {
        if s.sets_apply() {
            s.run_sets();
        } else {
            s.run();
        }
    }
    Outcome {
        best: s.best_path.take().map(|path| (path, s.best)),
        complete: !s.aborted,
        nodes: s.nodes,
        root_bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
        }
    }

    fn model(rng: &mut Rng) -> ModelProfile {
        let n = 4 + (rng.next() % 28) as usize;
        let layer_bytes: Vec<u64> = (0..n).map(|_| rng.range(80e6, 120e6) as u64).collect();
        let tied = rng.next().is_multiple_of(3);
        ModelProfile {
            name: "t".into(),
            hidden_size: 4096,
            n_kv_heads: 8,
            head_dim: 128,
            layer_params: layer_bytes.iter().map(|b| b * 2).collect(),
            layer_bytes,
            embedding_bytes: 200_000_000,
            embedding_params: 400_000_000,
            head_bytes: if tied { 8192 } else { 200_008_192 },
            head_params: if tied { 4096 } else { 400_004_096 },
            tied_embeddings: tied,
            tensor_types: vec!["Q4_K".into()],
        }
    }

    /// Solves one problem with the branch-and-bound and with the set search.
    fn both(p: &Problem) -> (Outcome, Outcome) {
        let budget = Budget {
            deadline: Instant::now() + Duration::from_secs(600),
            work_limit: u64::MAX,
        };
        let run = |sets: bool| {
            let mut s = Solver::new(p, budget, Cost::INFINITE);
            if sets {
                assert!(s.sets_apply());
                s.run_sets();
            } else {
                s.run();
            }
            Outcome {
                best: s.best_path.take().map(|path| (path, s.best)),
                complete: !s.aborted,
                nodes: s.nodes,
                root_bound: Cost::INFINITE,
            }
        };
        (run(false), run(true))
    }

    /// The set search and the branch-and-bound are independent exact methods; on fleets of
    /// 5-10 units with mixed fast and slow hops they must agree on the optimal cost.
    #[test]
    fn set_search_agrees_with_branch_and_bound() {
        let mut solved = 0;
        for seed in 0..60u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let m = model(&mut rng);
            let total = m.total_bytes() as f64;
            let n = 5 + (rng.next() % 6) as usize;
            let units: Vec<Unit> = (0..n)
                .map(|d| Unit {
                    members: vec![d],
                    read_rate: rng.range(20e9, 1000e9),
                    capacity: (total * rng.range(0.15, 0.7)) as u64,
                    layer_overhead_s: 0.0,
                })
                .collect();
            let slow: Vec<bool> = (0..n).map(|_| rng.next().is_multiple_of(3)).collect();
            let (mut hop, mut ring) = (vec![f64::INFINITY; n * n], vec![f64::INFINITY; n * n]);
            for a in 0..n {
                for b in a + 1..n {
                    if rng.next().is_multiple_of(7) {
                        continue;
                    }
                    let (lat, gbps) = if slow[a] || slow[b] {
                        (rng.range(2e-3, 5e-3), rng.range(0.2, 0.5))
                    } else {
                        (rng.range(2e-4, 5e-4), 1.0)
                    };
                    let h = lat + 8192.0 * 8.0 / (gbps * 1e9);
                    let r = lat + 32.0 / (gbps * 1e9);
                    (hop[a * n + b], hop[b * n + a]) = (h, h);
                    (ring[a * n + b], ring[b * n + a]) = (r, r);
                }
            }
            let mut physical: Vec<(usize, f64, u64)> = units
                .iter()
                .map(|u| (u.members[0], u.read_rate, u.capacity))
                .collect();
            physical.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let p = Problem {
                model: &m,
                context: 1024,
                objective: Objective::Latency,
                units,
                hop,
                ring,
                physical,
            };
            let (bb, sets) = both(&p);
            assert!(bb.complete && sets.complete, "seed {seed}");
            match (bb.best, sets.best) {
                (Some((_, a)), Some((path, b))) => {
                    solved += 1;
                    assert!(
                        !better(a, b, p.objective) && !better(b, a, p.objective),
                        "seed {seed}: branch-and-bound {a:?}, sets {b:?} {path:?}"
                    );
                }
                (None, None) => {}
                (a, b) => panic!("seed {seed}: {a:?} vs {b:?}"),
            }
        }
        assert!(solved >= 40, "only {solved} feasible");
    }
}
