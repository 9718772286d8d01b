//! The planner's entry point and its report: stages, predictions, and why each unused device
//! is unused.

use crate::cost::{self, Prediction, StageSpec};
use crate::error::{gib, PlanError};
use crate::fleet::{Fleet, Precision};
use crate::model::ModelProfile;
use crate::policy::{Objective, Policy};
use crate::search::{self, Budget, Cost, Problem, Unit, UnitStage};
use crate::tensor_parallel::{self, TpReport};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStage {
    pub device: String,
    pub device_index: usize,
    /// Layers `first_layer..end_layer` (end exclusive).
    pub first_layer: usize,
    pub end_layer: usize,
    /// Weight bytes held (layers, plus embedding / head where held).
    pub bytes: u64,
    /// Weights plus KV cache for the policy's context.
    pub memory_bytes: u64,
    pub memory_free_bytes: u64,
    pub holds_embedding: bool,
    pub holds_head: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unused {
    pub device: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub model: String,
    pub objective: Objective,
    pub context: usize,
    pub stages: Vec<PlannedStage>,
    pub prediction: Prediction,
    pub solve_time: Duration,
    /// The search was exhaustive: no plan is better under the objective.
    pub optimal: bool,
    /// Search work done: nodes, sets, DP cells (the deterministic work measure).
    pub nodes: u64,
    /// Lower bound on the objective's figure (seconds): the plan's own when optimal.
    pub lower_bound_s: f64,
    pub unused: Vec<Unused>,
    /// A plan where fast-linked devices share stages, when the fleet has such links.
    pub tensor_parallel: Option<TpReport>,
}

impl Plan {
    pub fn act_dtype(&self) -> Precision {
        self.prediction.act_dtype
    }

    pub fn stage_specs(&self) -> Vec<StageSpec> {
        self.stages
            .iter()
            .map(|s| StageSpec {
                device: s.device_index,
                first_layer: s.first_layer,
                end_layer: s.end_layer,
            })
            .collect()
    }

    /// The objective's figure in seconds (decode time or pipeline period).
    pub fn objective_s(&self) -> f64 {
        match self.objective {
            Objective::Latency => self.prediction.decode_s,
            Objective::Throughput => self.prediction.bottleneck_s,
        }
    }

    /// How far the plan may be from the optimum: `objective / lower bound - 1`.
    pub fn gap(&self) -> f64 {
        if self.lower_bound_s > 0.0 {
            (self.objective_s() / self.lower_bound_s - 1.0).max(0.0)
        } else {
            0.0
        }
    }
}

/// Why a device cannot take part at all under this model and policy; `None` if it can.
pub fn exclusion(fleet: &Fleet, i: usize, m: &ModelProfile, policy: &Policy) -> Option<String> {
    let d = &fleet.devices()[i];
    if d.on_battery && !policy.allow_battery {
        return Some("on battery".into());
    }
    if d.thermal_headroom < policy.min_headroom {
        return Some(format!(
            "thermal headroom {:.2} is below the policy minimum {:.2}",
            d.thermal_headroom, policy.min_headroom
        ));
    }
    if let Some(t) = m
        .tensor_types
        .iter()
        .find(|t| !d.backend.runs_tensor_type(t))
    {
        return Some(format!("backend {} cannot run tensor type {t}", d.backend));
    }
    if !d.supports(Precision::F16) && !d.supports(Precision::F32) {
        return Some("computes in neither f16 nor f32, the dtypes activations travel in".into());
    }
    let one_layer = (0..m.n_layers())
        .map(|l| cost::stage_memory(m, l, l + 1, false, false, policy.context))
        .min()
        .unwrap_or(0);
    if one_layer > d.memory_bytes() {
        return Some(format!(
            "needs {} for one layer and its KV cache, has {}",
            gib(one_layer),
            gib(d.memory_bytes())
        ));
    }
    None
}

/// Single-device units and the hop tables between them, for activations in `act`.
pub(crate) fn pipeline_problem<'a>(
    fleet: &Fleet,
    m: &'a ModelProfile,
    policy: &Policy,
    devices: &[usize],
    act: Precision,
) -> (Problem<'a>, Vec<usize>) {
    let units: Vec<Unit> = devices
        .iter()
        .map(|&d| {
            let dev = &fleet.devices()[d];
            Unit {
                members: vec![d],
                read_rate: dev.read_rate(),
                capacity: dev.memory_bytes(),
                layer_overhead_s: 0.0,
            }
        })
        .collect();
    let n = units.len();
    let hidden = cost::hidden_bytes(m, act, 1);
    let mut hop = vec![f64::INFINITY; n * n];
    let mut ring = vec![f64::INFINITY; n * n];
    for (u, &a) in devices.iter().enumerate() {
        for (v, &b) in devices.iter().enumerate() {
            if let Some(l) = fleet.link(a, b) {
                hop[u * n + v] = l.transfer_s(hidden);
                ring[u * n + v] = l.transfer_s(cost::TOKEN_ID_BYTES);
            }
        }
    }
    let physical = physical_order(fleet, devices);
    (
        Problem {
            model: m,
            context: policy.context,
            objective: policy.objective,
            units,
            hop,
            ring,
            physical,
        },
        devices.to_vec(),
    )
}

/// Devices by read rate, fastest first (ties by fleet order), for the fluid bound.
pub(crate) fn physical_order(fleet: &Fleet, devices: &[usize]) -> Vec<(usize, f64, u64)> {
    let mut p: Vec<(usize, f64, u64)> = devices
        .iter()
        .map(|&d| {
            let dev = &fleet.devices()[d];
            (d, dev.read_rate(), dev.memory_bytes())
        })
        .collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    p
}

/// One run of the search per activation dtype that some set of devices can share.
pub(crate) struct DtypeRuns {
    pub runs: Vec<(Precision, Vec<usize>)>,
}

pub(crate) fn dtype_runs(fleet: &Fleet, eligible: &[usize]) -> DtypeRuns {
    let with = |p: Precision| -> Vec<usize> {
        eligible
            .iter()
            .copied()
            .filter(|&d| fleet.devices()[d].supports(p))
            .collect()
    };
    let f16 = with(Precision::F16);
    let f32 = with(Precision::F32);
    let mut runs = Vec::new();
    if !f16.is_empty() {
        runs.push((Precision::F16, f16.clone()));
    }
    // Plans over f32 devices that all list f16 are priced better by the f16 run, so the f32
    // run only matters when it can use a device the f16 run cannot.
    if f32.iter().any(|d| !f16.contains(d)) {
        runs.push((Precision::F32, f32));
    }
    DtypeRuns { runs }
}

/// Result of searching over every activation dtype.
pub(crate) struct Solved {
    pub best: Option<(Precision, Vec<usize>, Vec<UnitStage>, Cost)>,
    pub complete: bool,
    pub nodes: u64,
    pub root_bound: Cost,
}

pub(crate) fn solve_runs<'a>(
    runs: &DtypeRuns,
    mut make: impl FnMut(Precision, &[usize]) -> Problem<'a>,
    start: Instant,
    policy: &Policy,
) -> Solved {
    let deadline = start + policy.budget;
    let total_work = policy.work_limit();
    let mut spent = 0u64;
    let mut out = Solved {
        best: None,
        complete: true,
        nodes: 0,
        root_bound: Cost::INFINITE,
    };
    let k = runs.runs.len() as u64;
    for (i, (act, devices)) in runs.runs.iter().enumerate() {
        let share = (total_work - spent) / (k - i as u64);
        let problem = make(*act, devices);
        let incumbent = out.best.as_ref().map_or(Cost::INFINITE, |b| b.3);
        let o = search::search(
            &problem,
            Budget {
                deadline,
                work_limit: share.max(1),
            },
            incumbent,
        );
        spent += o.nodes.min(share);
        out.nodes += o.nodes;
        out.complete &= o.complete;
        let rb = o.root_bound.key(policy.objective).0;
        if rb < out.root_bound.key(policy.objective).0 {
            out.root_bound = o.root_bound;
        }
        if let Some((path, c)) = o.best {
            out.best = Some((*act, devices.clone(), path, c));
        }
    }
    out
}

/// Plans `m` on `fleet` under `policy`.
pub fn plan(fleet: &Fleet, m: &ModelProfile, policy: &Policy) -> Result<Plan, PlanError> {
    let start = Instant::now();
    m.validate()?;
    policy.validate()?;
    let n = fleet.len();
    let mut reasons: Vec<Option<String>> = (0..n).map(|i| exclusion(fleet, i, m, policy)).collect();
    let eligible: Vec<usize> = (0..n).filter(|&i| reasons[i].is_none()).collect();
    let excluded: Vec<String> = (0..n)
        .filter_map(|i| {
            reasons[i]
                .as_ref()
                .map(|r| format!("{}: {r}", fleet.devices()[i].name))
        })
        .collect();
    if eligible.is_empty() {
        return Err(PlanError::NoUsableDevice { reasons: excluded });
    }
    let needed = cost::whole_model_memory(m, policy.context);
    let available: u64 = eligible
        .iter()
        .map(|&d| fleet.devices()[d].memory_bytes())
        .sum();
    if available < needed {
        return Err(PlanError::DoesNotFit {
            model: m.name.clone(),
            context: policy.context,
            needed,
            available,
            excluded,
        });
    }
    let runs = dtype_runs(fleet, &eligible);
    let solved = solve_runs(
        &runs,
        |act, devices| pipeline_problem(fleet, m, policy, devices, act).0,
        start,
        policy,
    );
    let Some((act, devices, path, best_cost)) = solved.best else {
        if !solved.complete {
            return Err(PlanError::BudgetExhausted);
        }
        return Err(PlanError::NoChain {
            model: m.name.clone(),
            needed,
            available,
            detail: chain_detail(fleet, &eligible, needed),
        });
    };
    let specs: Vec<StageSpec> = path
        .iter()
        .map(|s| StageSpec {
            device: devices[s.unit],
            first_layer: s.first_layer,
            end_layer: s.end_layer,
        })
        .collect();
    let prediction = cost::predict(fleet, m, &specs).expect("searched plans are linked");
    debug_assert_eq!(prediction.act_dtype, act);
    let stages = describe_stages(fleet, m, &specs, policy.context);
    let solve_time = start.elapsed();
    let lower_bound_s = if solved.complete {
        best_cost.key(policy.objective).0
    } else {
        solved.root_bound.key(policy.objective).0
    };
    for &d in &eligible {
        if !specs.iter().any(|s| s.device == d) {
            reasons[d] = Some(unused_reason(fleet, m, policy, &specs, act, d));
        }
    }
    let unused = (0..n)
        .filter_map(|i| {
            reasons[i].take().map(|reason| Unused {
                device: fleet.devices()[i].name.clone(),
                reason,
            })
        })
        .collect();
    let tensor_parallel = if policy.tensor_parallel {
        tensor_parallel::compare(fleet, m, policy, &eligible, &prediction)
    } else {
        None
    };
    Ok(Plan {
        model: m.name.clone(),
        objective: policy.objective,
        context: policy.context,
        stages,
        prediction,
        solve_time,
        optimal: solved.complete,
        nodes: solved.nodes,
        lower_bound_s,
        unused,
        tensor_parallel,
    })
}

pub fn describe_stages(
    fleet: &Fleet,
    m: &ModelProfile,
    specs: &[StageSpec],
    context: usize,
) -> Vec<PlannedStage> {
    let k = specs.len();
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (first, last) = (i == 0, i + 1 == k);
            let dev = &fleet.devices()[s.device];
            let memory = cost::stage_memory(m, s.first_layer, s.end_layer, first, last, context);
            PlannedStage {
                device: dev.name.clone(),
                device_index: s.device,
                first_layer: s.first_layer,
                end_layer: s.end_layer,
                bytes: cost::stage_weight_bytes(m, s.first_layer, s.end_layer, first, last),
                memory_bytes: memory,
                memory_free_bytes: dev.memory_bytes().saturating_sub(memory),
                holds_embedding: first || (last && m.tied_embeddings),
                holds_head: last,
            }
        })
        .collect()
}

fn unused_reason(
    fleet: &Fleet,
    m: &ModelProfile,
    policy: &Policy,
    specs: &[StageSpec],
    act: Precision,
    d: usize,
) -> String {
    let dev = &fleet.devices()[d];
    if !dev.supports(act) {
        return format!(
            "lists no {act}; the plan's activations travel in {act}, faster than any plan with it"
        );
    }
    let linked: Vec<usize> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| fleet.link(d, s.device).is_some())
        .map(|(i, _)| i)
        .collect();
    if linked.is_empty() {
        return if specs.len() == 1 {
            format!(
                "no link to stage 1 ({})",
                fleet.devices()[specs[0].device].name
            )
        } else {
            format!("no link to any of stages 1-{}", specs.len())
        };
    }
    let whole = cost::whole_model_memory(m, policy.context);
    let slowest = specs
        .iter()
        .map(|s| fleet.devices()[s.device].read_rate())
        .fold(f64::INFINITY, f64::min);
    let gbs = |r: f64| r / 1e9;
    if dev.read_rate() <= slowest {
        return format!(
            "slower ({:.0} GB/s effective) than every stage (slowest {:.0} GB/s); the model fits without it",
            gbs(dev.read_rate()),
            gbs(slowest)
        );
    }
    // Faster than some stage yet left out: its hops would cost more than its speed saves.
    // Name its cheapest hop to a stage, the figure every plan with it pays at least twice.
    let hidden = cost::hidden_bytes(m, act, 1);
    let cheapest_hop_ms = linked
        .iter()
        .filter_map(|&i| fleet.link(d, specs[i].device))
        .map(|l| l.transfer_s(hidden) * 1e3)
        .fold(f64::INFINITY, f64::min);
    let why = format!(
        "as one more stage its hops (cheapest to a stage {cheapest_hop_ms:.2} ms) cost more than its {:.0} GB/s effective saves over the slowest stage ({:.0} GB/s)",
        gbs(dev.read_rate()),
        gbs(slowest)
    );
    if whole > dev.memory_bytes() {
        format!(
            "needs {}, has {} to run the model alone; {why}",
            gib(whole),
            gib(dev.memory_bytes())
        )
    } else {
        let (alone, planned) = alone_vs_plan_ms(fleet, m, specs, d);
        format!(
            "holds the model alone ({} of {}) but decodes in {alone:.2} ms against the plan's {planned:.2} ms; {why}",
            gib(whole),
            gib(dev.memory_bytes())
        )
    }
}

/// Decode milliseconds per token of the device alone (whole model at its rate, no hops) and
/// of the plan.
fn alone_vs_plan_ms(fleet: &Fleet, m: &ModelProfile, specs: &[StageSpec], d: usize) -> (f64, f64) {
    let alone = (cost::layer_bytes(m, 0, m.n_layers()) + cost::head_read_bytes(m)) as f64
        / fleet.devices()[d].read_rate();
    let planned = cost::predict(fleet, m, specs).map_or(f64::INFINITY, |p| p.decode_s);
    (alone * 1e3, planned * 1e3)
}

/// Why no chain exists although memory suffices: report the best-connected group.
fn chain_detail(fleet: &Fleet, eligible: &[usize], needed: u64) -> String {
    let mut comp = vec![usize::MAX; fleet.len()];
    let mut best = (0u64, Vec::new());
    for &s in eligible {
        if comp[s] != usize::MAX {
            continue;
        }
        let mut stack = vec![s];
        comp[s] = s;
        let mut members = Vec::new();
        while let Some(u) = stack.pop() {
            members.push(u);
            for &v in eligible {
                if comp[v] == usize::MAX && fleet.link(u, v).is_some() {
                    comp[v] = s;
                    stack.push(v);
                }
            }
        }
        let cap: u64 = members
            .iter()
            .map(|&d| fleet.devices()[d].memory_bytes())
            .sum();
        if cap > best.0 {
            members.sort();
            best = (cap, members);
        }
    }
    let names: Vec<&str> = best
        .1
        .iter()
        .map(|&d| fleet.devices()[d].name.as_str())
        .collect();
    if best.0 < needed {
        format!(
            "the largest group of linked devices ({}) offers {}, {} short",
            names.join(", "),
            gib(best.0),
            gib(needed - best.0)
        )
    } else {
        format!(
            "linked groups such as ({}) have the memory, but no order of them links each stage to the next and the last back to the first, with every stage's layers fitting",
            names.join(", ")
        )
    }
}
