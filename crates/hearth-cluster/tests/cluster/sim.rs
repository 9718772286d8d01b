//! A deterministic in-memory network for `Member`s: a virtual clock, a message queue whose
//! delivery order and losses come from a seeded RNG, crashes, restarts and partitions. It plays
//! the part of `hearth-net`: it reports peers up, carries encoded bytes, and never lies about
//! the sender.

use hearth_cluster::{
    ClusterState, Config, DeviceSummary, Event, Input, Member, NodeId, Output, WireMessage,
};

/// xorshift64*: enough randomness for schedules, reproducible from the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Queued {
    at: u64,
    key: u64,
    to: usize,
    from: NodeId,
    bytes: Vec<u8>,
}

pub struct SimNode {
    pub id: NodeId,
    pub member: Option<Member>,
    pub incarnation: u64,
    side: u8,
}

pub struct Sim {
    pub now: u64,
    pub nodes: Vec<SimNode>,
    pub rng: Rng,
    queue: Vec<Queued>,
    /// Per-mille chance that a message is lost.
    pub drop_per_mille: u64,
    pub max_latency_ms: u64,
    pub tick_ms: u64,
    pub delivered: u64,
}

pub fn node_id(i: usize) -> NodeId {
    NodeId(format!("node-{i}"))
}

pub fn device(i: usize) -> DeviceSummary {
    DeviceSummary {
        id: format!("cpu-{i}"),
        name: format!("CPU of node {i}"),
        backends: vec!["cpu".into()],
        memory_total_bytes: 16 << 30,
        memory_budget_bytes: 8 << 30,
        bandwidth_gbs: 20.0 + i as f64,
        tflops: 0.5,
        thermal_headroom: 1.0,
        declared: false,
    }
}

impl Sim {
    /// `n` nodes, none started.
    pub fn new(n: usize, seed: u64) -> Self {
        Sim {
            now: 0,
            nodes: (0..n)
                .map(|i| SimNode {
                    id: node_id(i),
                    member: None,
                    incarnation: 0,
                    side: 0,
                })
                .collect(),
            rng: Rng::new(seed),
            queue: Vec::new(),
            drop_per_mille: 0,
            max_latency_ms: 20,
            tick_ms: 100,
            delivered: 0,
        }
    }

    /// A simulator with all `n` nodes started at time 0.
    pub fn started(n: usize, seed: u64) -> Self {
        let mut sim = Sim::new(n, seed);
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a != b
            && self.nodes[a].member.is_some()
            && self.nodes[b].member.is_some()
            && self.nodes[a].side == self.nodes[b].side
    }

    /// Starts (or restarts with a new incarnation) node `i` and announces its device.
    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        let mut cfg = Config::new(n.id.clone(), format!("host-{i}"), n.incarnation);
        cfg.addresses = vec![format!("/ip4/127.0.0.1/tcp/{}", 52400 + i)];
        n.member = Some(Member::new(cfg, self.now));
        let dev = Event::DeviceInfo {
            node: node_id(i),
            devices: vec![device(i)],
        };
        self.input(i, Input::Propose(dev));
        for j in 0..self.nodes.len() {
            if self.connected(i, j) {
                self.peer_up(i, j);
            }
        }
    }

    fn peer_up(&mut self, a: usize, b: usize) {
        let up = |k: usize| Input::PeerUp {
            id: node_id(k),
            name: format!("host-{k}"),
            addresses: vec![format!("/ip4/127.0.0.1/tcp/{}", 52400 + k)],
        };
        self.input(a, up(b));
        self.input(b, up(a));
    }

    /// `kill -9`: no goodbye, no connection reports; peers notice by silence.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].member = None;
        self.queue.retain(|q| q.to != i);
    }

    /// Splits the nodes into two sides that cannot reach each other.
    pub fn partition(&mut self, side_b: &[usize]) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.side = u8::from(side_b.contains(&i));
        }
        let nodes = &self.nodes;
        self.queue.retain(|q| {
            let from = nodes.iter().position(|n| n.id == q.from);
            from.is_none_or(|f| nodes[f].side == nodes[q.to].side)
        });
    }

    /// Rejoins the sides; the network reconnects across them.
    pub fn heal(&mut self) {
        let sides: Vec<u8> = self.nodes.iter().map(|n| n.side).collect();
        for n in &mut self.nodes {
            n.side = 0;
        }
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                if sides[a] != sides[b] && self.connected(a, b) {
                    self.peer_up(a, b);
                }
            }
        }
    }

    pub fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(m) = self.nodes[i].member.as_mut() else {
            return;
        };
        let outputs = m.handle(input, now);
        let m = self.nodes[i].member.as_ref().expect("just used");
        let bytes_of = |m: &Member, msg: &WireMessage| m.encode(msg).ok();
        let mut sends = Vec::new();
        for o in outputs {
            match o {
                Output::Broadcast(msg) => {
                    if let Some(b) = bytes_of(m, &msg) {
                        for j in 0..self.nodes.len() {
                            sends.push((j, b.clone()));
                        }
                    }
                }
                Output::Send { to, msg } => {
                    if let (Some(j), Some(b)) = (
                        self.nodes.iter().position(|n| n.id == to),
                        bytes_of(m, &msg),
                    ) {
                        sends.push((j, b));
                    }
                }
                Output::StateChanged | Output::Refused(_) => {}
            }
        }
        let from = self.nodes[i].id.clone();
        for (j, bytes) in sends {
            if !self.connected(i, j) || self.rng.chance(self.drop_per_mille) {
                continue;
            }
            let at = now + 1 + self.rng.below(self.max_latency_ms);
            let key = self.rng.next_u64();
            self.queue.push(Queued {
                at,
                key,
                to: j,
                from: from.clone(),
                bytes,
            });
        }
    }

    /// Runs the virtual clock forward by `ms`, in 1 ms steps.
    pub fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 1;
            loop {
                // Deliver everything due, in an order the seed decides.
                let due = self
                    .queue
                    .iter()
                    .enumerate()
                    .filter(|(_, q)| q.at <= self.now)
                    .min_by_key(|(_, q)| (q.at, q.key))
                    .map(|(k, _)| k);
                let Some(k) = due else { break };
                let q = self.queue.swap_remove(k);
                if self.nodes[q.to].member.is_some() {
                    self.delivered += 1;
                    self.input(
                        q.to,
                        Input::Bytes {
                            from: q.from,
                            bytes: q.bytes,
                        },
                    );
                }
            }
            if self.now.is_multiple_of(self.tick_ms) {
                for i in 0..self.nodes.len() {
                    self.input(i, Input::Tick);
                }
            }
        }
    }

    /// Runs until `done` holds (checked every 50 ms) or `limit_ms` passed; the time it took.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit_ms {
            if done(self) {
                return Some(self.now - start);
            }
            self.run(50);
        }
        None
    }

    pub fn alive(&self) -> impl Iterator<Item = (usize, &Member)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.member.as_ref().map(|m| (i, m)))
    }

    pub fn member(&self, i: usize) -> &Member {
        self.nodes[i].member.as_ref().expect("node is running")
    }

    pub fn state(&self, i: usize) -> &ClusterState {
        self.member(i).state()
    }

    /// Every running node of `group` has the same state, whose coordinator is the group's
    /// smallest id, acting, and whose members are exactly `group` (each with its device).
    pub fn group_agrees(&self, group: &[usize]) -> bool {
        let Some(&first) = group.first() else {
            return true;
        };
        let want_coord = group.iter().map(|&i| node_id(i)).min();
        let want_members: Vec<NodeId> = {
            let mut v: Vec<NodeId> = group.iter().map(|&i| node_id(i)).collect();
            v.sort();
            v
        };
        let hash = self.member(first).state_hash();
        group.iter().all(|&i| {
            let m = self.member(i);
            let s = m.state();
            m.state_hash() == hash
                && s.coordinator == want_coord
                && s.members.keys().cloned().collect::<Vec<_>>() == want_members
                && s.members.values().all(|e| !e.devices.is_empty())
                && want_coord.as_ref() == Some(&m.coordinator(self.now))
        }) && want_coord
            .and_then(|c| group.iter().find(|&&i| node_id(i) == c))
            .is_some_and(|&c| self.member(c).is_acting_coordinator())
    }
}
