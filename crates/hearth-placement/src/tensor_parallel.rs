//! Tensor-parallel groups at plan level: devices joined by fast links share one stage, each
//! holding an even share of every layer's attention heads and FFN columns.
//!
//! Cost model of a group of `k` devices running layers `a..b` (added to the pipeline model):
//! - memory: each member holds `stage_memory / k`, so the stage fits when
//!   `stage_memory <= k × min(member memory)`;
//! - decode: members read their shares in parallel, so the stage takes
//!   `stage_bytes / (k × min(member read rate))`, plus per layer two ring all-reduces (after
//!   attention and after the FFN) of the hidden state:
//!   `allreduce(x) = 2(k-1) × latency + 2(k-1)/k × x × 8 / bandwidth` with the slowest fast link
//!   of the group (highest latency, lowest bandwidth) and `x = hidden_size × act_dtype_bytes`;
//! - prefill: `2 × stage_params × P / (k × min(member FLOP/s))` plus the same two all-reduces
//!   per layer with `x = P × hidden_size × act_dtype_bytes`;
//! - hops to and from a group use the quickest link between any member and the other stage.
//!
//! Execution is not implemented: the planner reports the best such plan beside the pipeline
//! plan and says whether it would win.

use crate::cost::{self, Prediction, PREFILL_TOKENS, TOKEN_ID_BYTES};
use crate::fleet::{Fleet, Link, Precision};
use crate::model::ModelProfile;
use crate::plan::{dtype_runs, physical_order, solve_runs};
use crate::policy::{Objective, Policy};
use crate::search::{Problem, Unit};
use std::time::{Duration, Instant};

/// Links at least this good may join a tensor-parallel group.
pub const MAX_LATENCY_MS: f64 = 0.5;
pub const MIN_BANDWIDTH_GBPS: f64 = 10.0;
/// Largest group considered, and most groups enumerated (in lexicographic order).
pub const MAX_GROUP: usize = 4;
pub const MAX_GROUPS: usize = 512;

pub fn is_fast(l: &Link) -> bool {
    l.latency_ms < MAX_LATENCY_MS && l.bandwidth_gbps >= MIN_BANDWIDTH_GBPS
}

/// Seconds of one ring all-reduce of `bytes` over `k` devices.
pub fn allreduce_s(k: usize, latency_s: f64, bandwidth_bps: f64, bytes: f64) -> f64 {
    if k < 2 {
        return 0.0;
    }
    let steps = 2.0 * (k as f64 - 1.0);
    steps * latency_s + steps / k as f64 * bytes * 8.0 / bandwidth_bps
}

/// Slowest link inside a group: (latency seconds, bandwidth bit/s); `None` if a pair is not
/// fast-linked.
fn group_link(fleet: &Fleet, g: &[usize]) -> Option<(f64, f64)> {
    let (mut lat, mut bw) = (0.0f64, f64::INFINITY);
    for (i, &a) in g.iter().enumerate() {
        for &b in &g[i + 1..] {
            let l = fleet.link(a, b).filter(|l| is_fast(l))?;
            lat = lat.max(l.latency_ms / 1e3);
            bw = bw.min(l.bandwidth_gbps * 1e9);
        }
    }
    Some((lat, bw))
}

/// Cliques of fast links among `devices`, sizes 2..=[`MAX_GROUP`], lexicographic.
pub fn groups(fleet: &Fleet, devices: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    fn extend(
        fleet: &Fleet,
        devices: &[usize],
        from: usize,
        cur: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        for i in from..devices.len() {
            if out.len() >= MAX_GROUPS {
                return;
            }
            let d = devices[i];
            if cur.iter().all(|&c| fleet.link(c, d).is_some_and(is_fast)) {
                cur.push(d);
                if cur.len() >= 2 {
                    out.push(cur.clone());
                }
                if cur.len() < MAX_GROUP {
                    extend(fleet, devices, i + 1, cur, out);
                }
                cur.pop();
            }
        }
    }
    extend(fleet, devices, 0, &mut cur, &mut out);
    out
}

fn unit_of(fleet: &Fleet, m: &ModelProfile, g: &[usize], act: Precision) -> Unit {
    let k = g.len();
    let devs = g.iter().map(|&d| &fleet.devices()[d]);
    let min_rate = devs
        .clone()
        .map(|d| d.read_rate())
        .fold(f64::INFINITY, f64::min);
    let min_mem = devs.map(|d| d.memory_bytes()).min().unwrap_or(0);
    let layer_overhead_s = match group_link(fleet, g) {
        Some((lat, bw)) => 2.0 * allreduce_s(k, lat, bw, cost::hidden_bytes(m, act, 1)),
        None => 0.0,
    };
    Unit {
        members: g.to_vec(),
        read_rate: k as f64 * min_rate,
        capacity: min_mem.saturating_mul(k as u64),
        layer_overhead_s,
    }
}

/// Quickest link between any member of `a` and any member of `b`, for `bytes`.
fn best_hop(fleet: &Fleet, a: &[usize], b: &[usize], bytes: f64) -> f64 {
    let mut t = f64::INFINITY;
    for &x in a {
        for &y in b {
            if let Some(l) = fleet.link(x, y) {
                t = t.min(l.transfer_s(bytes));
            }
        }
    }
    t
}

/// A stage of a tensor-parallel plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TpStage {
    pub devices: Vec<usize>,
    pub first_layer: usize,
    pub end_layer: usize,
}

/// Prices a plan whose stages may be groups, by the model in this module's docs. One-device
/// stages are priced exactly as [`cost::predict`] does.
pub fn predict(fleet: &Fleet, m: &ModelProfile, stages: &[TpStage]) -> Option<Prediction> {
    let act = cost::act_dtype(
        stages
            .iter()
            .flat_map(|s| s.devices.iter().map(|&d| &fleet.devices()[d])),
    )?;
    let (mut decode, mut bottleneck, mut prefill) = (0.0, 0.0f64, 0.0);
    let k = stages.len();
    for (i, s) in stages.iter().enumerate() {
        let last = i + 1 == k;
        let g = s.devices.len();
        let devs = s.devices.iter().map(|&d| &fleet.devices()[d]);
        let rate = g as f64
            * devs
                .clone()
                .map(|d| d.read_rate())
                .fold(f64::INFINITY, f64::min);
        let flops = g as f64 * devs.map(|d| d.flop_rate()).fold(f64::INFINITY, f64::min);
        let layers = (s.end_layer - s.first_layer) as f64;
        let mut t = cost::stage_read_bytes(m, s.first_layer, s.end_layer, last) as f64 / rate;
        let mut p = 2.0
            * cost::stage_params(m, s.first_layer, s.end_layer, last) as f64
            * PREFILL_TOKENS as f64
            / flops;
        if g > 1 {
            let (lat, bw) = group_link(fleet, &s.devices)?;
            t += layers * 2.0 * allreduce_s(g, lat, bw, cost::hidden_bytes(m, act, 1));
            p += layers * 2.0 * allreduce_s(g, lat, bw, cost::hidden_bytes(m, act, PREFILL_TOKENS));
        }
        decode += t;
        bottleneck = bottleneck.max(t);
        prefill += p;
    }
    if k > 1 {
        for i in 0..k {
            let (a, b) = (&stages[i].devices, &stages[(i + 1) % k].devices);
            let (dec, pre) = if i + 1 < k {
                (
                    cost::hidden_bytes(m, act, 1),
                    cost::hidden_bytes(m, act, PREFILL_TOKENS),
                )
            } else {
                (TOKEN_ID_BYTES, TOKEN_ID_BYTES)
            };
            let t = best_hop(fleet, a, b, dec);
            if !t.is_finite() {
                return None;
            }
            decode += t;
            bottleneck = bottleneck.max(t);
            prefill += best_hop(fleet, a, b, pre);
        }
    }
    Some(Prediction {
        act_dtype: act,
        decode_s: decode,
        bottleneck_s: bottleneck,
        prefill_s: prefill,
    })
}

/// The best plan with tensor-parallel groups allowed, beside the pipeline plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TpReport {
    pub stages: Vec<TpStage>,
    pub prediction: Prediction,
    /// Better than the pipeline plan under the policy's objective.
    pub wins: bool,
    pub optimal: bool,
    pub solve_time: Duration,
}

/// Searches with groups of fast-linked devices as extra units (a group excludes its members);
/// `None` when the fleet has no fast links among usable devices or no plan came out.
pub fn compare(
    fleet: &Fleet,
    m: &ModelProfile,
    policy: &Policy,
    eligible: &[usize],
    pipeline: &Prediction,
) -> Option<TpReport> {
    if groups(fleet, eligible).is_empty() {
        return None;
    }
    let start = Instant::now();
    let runs = dtype_runs(fleet, eligible);
    let solved = solve_runs(
        &runs,
        |act, devices| problem(fleet, m, policy, devices, act),
        start,
        policy,
    );
    let (_, devices, path, _) = solved.best?;
    let unit_members: Vec<Vec<usize>> = units_members(fleet, &devices);
    let stages: Vec<TpStage> = path
        .iter()
        .map(|s| TpStage {
            devices: unit_members[s.unit].clone(),
            first_layer: s.first_layer,
            end_layer: s.end_layer,
        })
        .collect();
    let prediction = predict(fleet, m, &stages)?;
    let (mine, theirs) = match policy.objective {
        Objective::Latency => (prediction.decode_s, pipeline.decode_s),
        Objective::Throughput => (prediction.bottleneck_s, pipeline.bottleneck_s),
    };
    Some(TpReport {
        wins: stages.iter().any(|s| s.devices.len() > 1) && mine < theirs * (1.0 - 1e-9),
        stages,
        prediction,
        optimal: solved.complete,
        solve_time: start.elapsed(),
    })
}

fn units_members(fleet: &Fleet, devices: &[usize]) -> Vec<Vec<usize>> {
    devices
        .iter()
        .map(|&d| vec![d])
        .chain(groups(fleet, devices))
        .collect()
}

/// Search instance with single devices and groups as units.
pub fn problem<'a>(
    fleet: &Fleet,
    m: &'a ModelProfile,
    policy: &Policy,
    devices: &[usize],
    act: Precision,
) -> Problem<'a> {
    let members = units_members(fleet, devices);
    let units: Vec<Unit> = members.iter().map(|g| unit_of(fleet, m, g, act)).collect();
    let n = units.len();
    let hidden = cost::hidden_bytes(m, act, 1);
    let mut hop = vec![f64::INFINITY; n * n];
    let mut ring = vec![f64::INFINITY; n * n];
    for u in 0..n {
        for v in 0..n {
            if u != v && !members[u].iter().any(|d| members[v].contains(d)) {
                hop[u * n + v] = best_hop(fleet, &members[u], &members[v], hidden);
                ring[u * n + v] = best_hop(fleet, &members[u], &members[v], TOKEN_ID_BYTES);
            }
        }
    }
    Problem {
        model: m,
        context: policy.context,
        objective: policy.objective,
        units,
        hop,
        ring,
        physical: physical_order(fleet, devices),
    }
}
