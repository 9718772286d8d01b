//! Exact search for the best pipeline: depth-first branch-and-bound over (next unit, its layer
//! range), with memoised dominance on (first unit, last unit, layers covered, units used) and
//! an admissible fluid lower bound. Stops at a node budget (deterministic) or a wall-clock
//! deadline, whichever comes first, and says whether it finished.

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
        Solver {
            p,
            n_layers,
            by_capacity,
            min_hop,
            prev_twin,
            pre_bytes,
            pre_mem,
            head_read: cost::head_read_bytes(m),
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

    /// Admissible bound on what covering layers `c..` still costs, with `used` taken, the last
    /// stage so far on `d` (`None` at the root) and the first on `f`. `None`: infeasible.
    fn bound(&self, f: Option<usize>, d: Option<usize>, c: usize, used: &Mask) -> Option<Cost> {
        let m = self.p.model;
        let need_mem =
            self.pre_mem[self.n_layers] - self.pre_mem[c] + cost::end_bytes(m, d.is_none(), true);
        let mut need_read =
            (self.pre_bytes[self.n_layers] - self.pre_bytes[c] + self.head_read) as f64;
        // Every remaining byte is read by an unused device at its own rate, no faster than if
        // the fastest ones took as much as their memory allows (read bytes <= held bytes).
        let mut sum = 0.0;
        let mut total_rate = 0.0;
        let mut cap_left = 0u64;
        for &(dev, rate, mem) in &self.p.physical {
            if has(used, dev) {
                continue;
            }
            total_rate += rate;
            cap_left = cap_left.saturating_add(mem);
            if need_read > 0.0 {
                let take = need_read.min(mem as f64);
                sum += take / rate;
                need_read -= take;
            }
        }
        if cap_left < need_mem || need_read > 0.0 {
            return None;
        }
        let mut lb = Cost {
            sum,
            max: (self.pre_bytes[self.n_layers] - self.pre_bytes[c] + self.head_read) as f64
                / total_rate,
        };
        if let (Some(f), Some(d)) = (f, d) {
            let n = self.p.units.len();
            let fwd = self.by_hop[d]
                .iter()
                .find(|&&e| !overlaps(&self.masks[e as usize], used))
                .map(|&e| self.p.hop[d * n + e as usize])?;
            let ring = self.by_ring[f]
                .iter()
                .find(|&&e| !overlaps(&self.masks[e as usize], used))
                .map(|&e| self.p.ring[e as usize * n + f])?;
            // At least this many more stages, each after a hop of its own.
            let mut more = 0usize;
            let mut held = 0u64;
            for &u in &self.by_capacity {
                if held >= need_mem {
                    break;
                }
                if !overlaps(&self.masks[u as usize], used) {
                    held = held.saturating_add(self.p.units[u as usize].capacity);
                    more += 1;
                }
            }
            if held < need_mem {
                return None;
            }
            lb.sum += fwd + ring + more.saturating_sub(1) as f64 * self.min_hop;
            lb.max = lb.max.max(fwd).max(ring);
        }
        Some(lb)
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

    fn run(&mut self) {
        let order = {
            let mut o: Vec<usize> = (0..self.p.units.len()).collect();
            o.sort_by(|&a, &b| {
                self.p.units[b]
                    .read_rate
                    .total_cmp(&self.p.units[a].read_rate)
                    .then(a.cmp(&b))
            });
            o
        };
        for f in order {
            if self.aborted {
                return;
            }
            if self.prev_twin[f].is_some() {
                continue;
            }
            self.place(f, None, f, 0, [0; 4], Cost::ZERO);
        }
    }

    /// Puts a stage on unit `e`, starting at layer `c`, after the stage on `prev`.
    fn place(&mut self, f: usize, prev: Option<usize>, e: usize, c: usize, used: Mask, g: Cost) {
        let n = self.p.units.len();
        let first = prev.is_none();
        let g = match prev {
            Some(d) => g.add(self.p.hop[d * n + e]),
            None => g,
        };
        let cap = self.p.units[e].capacity;
        let o = self.p.objective;
        if self.stage_mem(c, self.n_layers, first, true) <= cap {
            let ring = if first {
                None
            } else {
                Some(self.p.ring[e * n + f])
            };
            if ring.is_none_or(f64::is_finite) {
                let mut total = g.add(self.stage_time(e, c, self.n_layers, true));
                if let Some(r) = ring {
                    total = total.add(r);
                }
                if better(total, self.best, o) {
                    self.best = total;
                    self.path.push(UnitStage {
                        unit: e,
                        first_layer: c,
                        end_layer: self.n_layers,
                    });
                    self.best_path = Some(self.path.clone());
                    self.path.pop();
                }
            }
        }
        // Non-final stages: the most layers that fit first, so the first plans found are the
        // greedy ones and the bound prunes early.
        let end_fixed = cost::end_bytes(self.p.model, first, false);
        let base = self.pre_mem[c];
        let mut hi = c;
        {
            let (mut lo, mut up) = (c, self.n_layers - 1);
            while lo < up {
                let mid = (lo + up).div_ceil(2);
                if self.pre_mem[mid] - base + end_fixed <= cap {
                    lo = mid;
                } else {
                    up = mid - 1;
                }
            }
            if lo > c && self.pre_mem[lo] - base + end_fixed <= cap {
                hi = lo;
            }
        }
        let used = union(&used, &self.masks[e]);
        for b in (c + 1..=hi).rev() {
            if self.aborted {
                return;
            }
            let g2 = g.add(self.stage_time(e, c, b, false));
            self.path.push(UnitStage {
                unit: e,
                first_layer: c,
                end_layer: b,
            });
            self.node(f, e, b, used, g2);
            self.path.pop();
        }
    }

    fn node(&mut self, f: usize, d: usize, c: usize, used: Mask, g: Cost) {
        if self.tick() {
            return;
        }
        let o = self.p.objective;
        let key = (used, f as u16, d as u16, c as u16);
        if let Some(seen) = self.memo.get(&key) {
            if seen.sum <= g.sum && seen.max <= g.max {
                return;
            }
        }
        if self.memo.len() < MEMO_CAP || self.memo.contains_key(&key) {
            self.memo.insert(key, g);
        }
        let Some(rest) = self.bound(Some(f), Some(d), c, &used) else {
            return;
        };
        let lb = Cost {
            sum: g.sum + rest.sum,
            max: g.max.max(rest.max),
        };
        if !may_beat(lb, self.best, o) {
            return;
        }
        for i in 0..self.by_rate[d].len() {
            let e = self.by_rate[d][i] as usize;
            if overlaps(&self.masks[e], &used) {
                continue;
            }
            if let Some(t) = self.prev_twin[e] {
                if !overlaps(&self.masks[t as usize], &used) {
                    continue;
                }
            }
            self.place(f, Some(d), e, c, used, g);
            if self.aborted {
                return;
            }
        }
    }
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
    let root_bound = s.bound(None, None, 0, &[0; 4]).unwrap_or(Cost::INFINITE);
    if root_bound.sum.is_finite() {
        s.run();
    }
    Outcome {
        best: s.best_path.take().map(|path| (path, s.best)),
        complete: !s.aborted,
        nodes: s.nodes,
        root_bound,
    }
}
