//! Depth-first branch-and-bound over (next unit, its layer range), with memoised dominance and
//! an admissible fluid lower bound: the general search (throughput, tensor-parallel groups,
//! large fleets).

use super::*;

impl Solver<'_, '_> {
    /// Admissible bound on what covering layers `c..` still costs, with `used` taken, the last
    /// stage so far on `d` (`None` at the root) and the first on `f`. `None`: infeasible.
    pub(super) fn bound(
        &self,
        f: Option<usize>,
        d: Option<usize>,
        c: usize,
        used: &Mask,
    ) -> Option<Cost> {
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
            let walk = self
                .walk
                .get(more.min(self.walk.len().saturating_sub(1)))
                .map_or(0.0, |w| w[d * n + f]);
            lb.sum += (fwd + ring + more.saturating_sub(1) as f64 * self.min_hop).max(walk);
            lb.max = lb.max.max(fwd).max(ring);
            // The forward hops are in the fixed charge (each further stage is entered by
            // one); the ring hop back to `f` is not.
            lb.sum = lb.sum.max(self.fixed_charge(c, used, false)? + ring);
        }
        Some(lb)
    }

    /// Linear relaxation of "each further stage reads its bytes and pays a hop into it":
    /// the remaining read bytes go to unused units cheapest per byte first, where a byte costs
    /// its read time plus its share of the unit's cheapest entry hop. `None`: the unused
    /// units cannot read that much.
    pub(super) fn fixed_charge(&self, c: usize, used: &Mask, root: bool) -> Option<f64> {
        let (order, charge) = if root {
            (&self.by_charge_any, &self.charge_any)
        } else {
            (&self.by_charge_hop, &self.charge_hop)
        };
        let mut need = (self.pre_bytes[self.n_layers] - self.pre_bytes[c] + self.head_read) as f64;
        let mut sum = 0.0;
        for &u in order {
            if need <= 0.0 {
                break;
            }
            let u = u as usize;
            if overlaps(&self.masks[u], used) {
                continue;
            }
            let take = need.min(self.read_cap[u]);
            sum += take * charge[u];
            need -= take;
        }
        (need <= 0.0).then_some(sum)
    }

    pub(super) fn run(&mut self) {
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
    pub(super) fn place(
        &mut self,
        f: usize,
        prev: Option<usize>,
        e: usize,
        c: usize,
        used: Mask,
        g: Cost,
    ) {
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

    pub(super) fn node(&mut self, f: usize, d: usize, c: usize, used: Mask, g: Cost) {
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
