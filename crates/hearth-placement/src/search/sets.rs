//! The set search for the latency objective: device sets in increasing order of an admissible
//! bound, each solved over its cyclic orders (Held–Karp remaining hops) with a DP over split
//! points.

use super::*;

impl Solver<'_, '_> {
    /// Whether the set search applies: the latency objective over single devices (a
    /// tensor-parallel group shares members with other units and pays per layer, which the
    /// set bounds do not model), and few enough units to list every set.
    pub(super) fn sets_apply(&self) -> bool {
        let n = self.p.units.len();
        self.p.objective == Objective::Latency
            && (1..=SET_UNITS).contains(&n)
            && self
                .p
                .units
                .iter()
                .all(|u| u.members.len() == 1 && u.layer_overhead_s == 0.0)
    }

    /// Admissible bound on the read time of any plan whose stages are exactly the units of
    /// `set`: each reads at least the smallest layer (the last stage, `last` when known, also
    /// the head), at most its read capacity, and the rest goes to the fastest first. `None`:
    /// the set cannot read the model that way.
    pub(super) fn set_read_bound(
        &self,
        set: u32,
        rate_order: &[usize],
        last: Option<usize>,
    ) -> Option<f64> {
        let total = (self.pre_bytes[self.n_layers] + self.head_read) as f64;
        let least = |u: usize| {
            self.min_layer
                + if last == Some(u) {
                    self.head_read as f64
                } else {
                    0.0
                }
        };
        let cap = |u: usize| self.read_cap[u].min(self.p.units[u].capacity as f64);
        let mut sum = 0.0;
        let mut rest = total;
        for &u in rate_order {
            if set & (1 << u) == 0 {
                continue;
            }
            if cap(u) < least(u) {
                return None;
            }
            sum += least(u) / self.p.units[u].read_rate;
            rest -= least(u);
        }
        for &u in rate_order {
            if rest <= 0.0 {
                break;
            }
            if set & (1 << u) == 0 {
                continue;
            }
            let take = rest.min(cap(u) - least(u));
            sum += take / self.p.units[u].read_rate;
            rest -= take;
        }
        (rest <= total * 1e-12).then_some(sum)
    }

    /// Exact search over device sets: every plan runs on one set of units, and its cost is at
    /// least the set's read bound plus, for each unit, the cheapest edge into it (every stage
    /// is entered once, the first by the ring hop, the others by a forward hop). Sets are
    /// solved in increasing order of that bound until the bound cannot beat the best plan.
    pub(super) fn run_sets(&mut self) {
        let n = self.p.units.len();
        let l = self.n_layers;
        let m = self.p.model;
        let whole = self.stage_mem(0, l, true, true);
        let multi =
            self.pre_mem[l] + cost::end_bytes(m, true, false) + cost::end_bytes(m, false, true);
        let mut by_rate: Vec<usize> = (0..n).collect();
        by_rate.sort_by(|&a, &b| {
            self.p.units[b]
                .read_rate
                .total_cmp(&self.p.units[a].read_rate)
                .then(a.cmp(&b))
        });
        let into: Vec<f64> = (0..n)
            .map(|u| {
                (0..n)
                    .filter(|&v| v != u)
                    .map(|v| self.p.hop[v * n + u].min(self.p.ring[v * n + u]))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        // Memory and entry hops of each set from those of the set without its lowest unit.
        let mut caps = vec![0u64; 1 << n];
        let mut entries = vec![0.0f64; 1 << n];
        let mut sets: Vec<(f64, u32)> = Vec::new();
        for set in 1u32..(1u32 << n) {
            if self.tick() {
                return;
            }
            let low = set.trailing_zeros() as usize;
            let rest = (set & (set - 1)) as usize;
            let cap = caps[rest].saturating_add(self.p.units[low].capacity);
            caps[set as usize] = cap;
            let hops = entries[rest] + into[low];
            entries[set as usize] = hops;
            let k = set.count_ones() as usize;
            if k > l || cap < if k == 1 { whole } else { multi } {
                continue;
            }
            let hops = if k == 1 { 0.0 } else { hops };
            if !hops.is_finite() {
                continue;
            }
            if let Some(read) = self.set_read_bound(set, &by_rate, None) {
                sets.push((read + hops, set));
            }
        }
        sets.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(lb, set) in &sets {
            if self.aborted || !may_beat(Cost { sum: lb, max: 0.0 }, self.best, self.p.objective) {
                return;
            }
            self.solve_set(set, &by_rate);
        }
    }

    /// The best plan on exactly the units of `set`: every cyclic order (first unit explicit,
    /// since the ring hop is priced apart), pruned by the hops so far plus the cheapest edge
    /// into each unit still to place, then the exact split of the layers for that order.
    pub(super) fn solve_set(&mut self, set: u32, rate_order: &[usize]) {
        let n = self.p.units.len();
        let members: Vec<usize> = (0..n).filter(|&u| set & (1 << u) != 0).collect();
        if self.tick() {
            return;
        }
        if members.len() == 1 {
            let u = members[0];
            if self.stage_mem(0, self.n_layers, true, true) <= self.p.units[u].capacity {
                let t = Cost::ZERO.add(self.stage_time(u, 0, self.n_layers, true));
                if better(t, self.best, self.p.objective) {
                    self.best = t;
                    self.best_path = Some(vec![UnitStage {
                        unit: u,
                        first_layer: 0,
                        end_layer: self.n_layers,
                    }]);
                }
            }
            return;
        }
        let entry = |table: &[f64], u: usize| {
            members
                .iter()
                .filter(|&&v| v != u)
                .map(|&v| table[v * n + u])
                .fold(f64::INFINITY, f64::min)
        };
        let in_hop: Vec<f64> = members.iter().map(|&u| entry(&self.p.hop, u)).collect();
        let in_ring: Vec<f64> = members.iter().map(|&u| entry(&self.p.ring, u)).collect();
        let all_in: f64 = in_hop.iter().sum();
        // The last stage reads the head as well: the set's bound is the best over which
        // unit that is, and each complete order is checked against its own.
        let last_read: Vec<f64> = members
            .iter()
            .map(|&u| {
                self.set_read_bound(set, rate_order, Some(u))
                    .unwrap_or(f64::INFINITY)
            })
            .collect();
        let read = last_read.iter().copied().fold(f64::INFINITY, f64::min);
        if !read.is_finite() {
            return;
        }
        let k = members.len();
        let full = (1u32 << k) - 1;
        let mut tail = Vec::new();
        let mut order = Vec::with_capacity(k);
        for i in 0..k {
            if k <= EXACT_TAIL_UNITS {
                if !self.tails(&members, i, &mut tail) {
                    return;
                }
                let cycle = tail[(full & !(1 << i)) as usize * k + i];
                let lb = Cost {
                    sum: read + cycle,
                    max: 0.0,
                };
                if !may_beat(lb, self.best, self.p.objective) {
                    continue;
                }
            }
            order.push(i);
            let rest = all_in - in_hop[i] + in_ring[i];
            self.orders(
                &members,
                &in_hop,
                &tail,
                &last_read,
                read,
                &mut order,
                1 << i,
                Cost::ZERO,
                rest,
            );
            order.pop();
            if self.aborted {
                return;
            }
        }
    }

    /// Fills `tail[r * k + d]` (member indices, `d` not in the set `r`, neither holding
    /// `first`): the cheapest path from `d` through every member of `r` by forward hops, then
    /// the ring hop into `first`. It is exactly what the rest of an order starting at `first`
    /// and standing at `d` pays in hops. `false`: the work budget ran out.
    pub(super) fn tails(&mut self, members: &[usize], first: usize, tail: &mut Vec<f64>) -> bool {
        let n = self.p.units.len();
        let k = members.len();
        tail.clear();
        tail.resize((1 << k) * k, f64::INFINITY);
        let f = members[first];
        for r in 0u32..(1 << k) {
            if r & (1 << first) != 0 {
                continue;
            }
            if self.tick() {
                return false;
            }
            for d in 0..k {
                if r & (1 << d) != 0 {
                    continue;
                }
                let from = members[d];
                let t = if r == 0 {
                    self.p.ring[from * n + f]
                } else {
                    let mut best = f64::INFINITY;
                    for e in 0..k {
                        if r & (1 << e) != 0 {
                            let rest = tail[(r & !(1 << e)) as usize * k + e];
                            best = best.min(self.p.hop[from * n + members[e]] + rest);
                        }
                    }
                    best
                };
                tail[r as usize * k + d] = t;
            }
        }
        true
    }

    /// Extends the order (indices into `members`); `hops` prices the forward hops so far, and
    /// the edges still to come cost `tail` of the members left (when the set is small enough
    /// for that table), else at least `rest`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn orders(
        &mut self,
        members: &[usize],
        in_hop: &[f64],
        tail: &[f64],
        last_read: &[f64],
        read: f64,
        order: &mut Vec<usize>,
        seen: u32,
        hops: Cost,
        rest: f64,
    ) {
        if self.tick() {
            return;
        }
        let o = self.p.objective;
        let n = self.p.units.len();
        let k = members.len();
        let di = *order.last().expect("order starts with the first unit");
        let d = members[di];
        let to_come = if tail.is_empty() {
            rest
        } else {
            let left = ((1u32 << k) - 1) & !seen;
            tail[left as usize * k + di]
        };
        if !may_beat(
            Cost {
                sum: read + hops.sum + to_come,
                max: 0.0,
            },
            self.best,
            o,
        ) {
            return;
        }
        if order.len() == k {
            let ring = self.p.ring[d * n + members[order[0]]];
            let last = *order.last().expect("order is not empty");
            if ring.is_finite() {
                self.split(members, order, hops.add(ring), last_read[last]);
            }
            return;
        }
        for i in 0..k {
            if seen & (1 << i) != 0 {
                continue;
            }
            let h = self.p.hop[d * n + members[i]];
            if !h.is_finite() {
                continue;
            }
            order.push(i);
            self.orders(
                members,
                in_hop,
                tail,
                last_read,
                read,
                order,
                seen | 1 << i,
                hops.add(h),
                rest - in_hop[i],
            );
            order.pop();
            if self.aborted {
                return;
            }
        }
    }

    /// The best split of the layers over the units in `order` (each at least one layer, the
    /// first holding the embedding, the last the head), by dynamic programming over split
    /// points; keeps it if it beats the best plan.
    pub(super) fn split(&mut self, members: &[usize], order: &[usize], hops: Cost, read: f64) {
        let o = self.p.objective;
        if !may_beat(
            Cost {
                sum: read + hops.sum,
                max: 0.0,
            },
            self.best,
            o,
        ) {
            return;
        }
        let l = self.n_layers;
        let k = order.len();
        let mut cur = vec![Cost::INFINITE; l + 1];
        cur[0] = Cost::ZERO;
        let mut from = vec![usize::MAX; k * (l + 1)];
        for (i, &oi) in order.iter().enumerate() {
            let u = members[oi];
            let (first, last) = (i == 0, i + 1 == k);
            let cap = self.p.units[u].capacity;
            let end = cost::end_bytes(self.p.model, first, last);
            let mut next = vec![Cost::INFINITE; l + 1];
            let ends = if last { l..=l } else { i + 1..=l - (k - 1 - i) };
            for c in ends {
                if self.tick() {
                    return;
                }
                for b in (i..c).rev() {
                    if self.pre_mem[c] - self.pre_mem[b] + end > cap {
                        break;
                    }
                    if !cur[b].sum.is_finite() {
                        continue;
                    }
                    let t = cur[b].add(self.stage_time(u, b, c, last));
                    if better(t, next[c], o) {
                        next[c] = t;
                        from[i * (l + 1) + c] = b;
                    }
                }
            }
            cur = next;
        }
        if !cur[l].sum.is_finite() {
            return;
        }
        let total = Cost {
            sum: cur[l].sum + hops.sum,
            max: cur[l].max.max(hops.max),
        };
        if !better(total, self.best, o) {
            return;
        }
        let mut path = vec![
            UnitStage {
                unit: 0,
                first_layer: 0,
                end_layer: 0
            };
            k
        ];
        let mut c = l;
        for i in (0..k).rev() {
            let b = from[i * (l + 1) + c];
            path[i] = UnitStage {
                unit: members[order[i]],
                first_layer: b,
                end_layer: c,
            };
            c = b;
        }
        self.best = total;
        self.best_path = Some(path);
    }
}
