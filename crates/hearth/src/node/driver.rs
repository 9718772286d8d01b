//! The node loop: network events and a timer in, cluster-member inputs; member outputs out,
//! network sends. One task owns the member, so its state needs no lock; readers get a copy
//! through the shared [`View`].

use super::instances::plan::Reconciler;
use super::instances::transport::Transport;
use super::security::audit::Audit;
use super::view::{Refusal, SharedView};
use hearth_cluster::ClusterState;
use hearth_cluster::{Event, Input, LinkMeasurement, Member, NodeId, Output, Role};
use hearth_net::DataStream;
use hearth_net::{NetEvent, NetHandle, PeerId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Milliseconds since the Unix epoch: the clock the member and the state's timestamps use.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Local facts fed into the loop from other tasks (device measurement, telemetry sampler).
#[derive(Debug)]
pub enum LocalFact {
    Propose(Event),
}

pub struct Driver {
    pub member: Member,
    pub net: NetHandle,
    pub view: SharedView,
    /// How often the member is ticked; at most half its heartbeat.
    pub tick: Duration,
    /// How often this node's refusal counters are republished when they changed.
    pub refusal_report: Duration,
    /// Serving's side of the loop: where states and incoming data streams go, and the
    /// coordinator's placement decisions.
    pub serving: ServingHooks,
    /// Peer admissions and refusals are recorded here.
    pub audit: Audit,
}

pub struct ServingHooks {
    pub states: tokio::sync::watch::Sender<Arc<ClusterState>>,
    pub streams: mpsc::Sender<DataStream>,
    pub transport: Arc<Transport>,
    pub reconciler: Reconciler,
    /// Hash of the state last sent on `states`, so watchers wake only for a new state.
    pub published_hash: u64,
}

/// How often the coordinator reconsiders placements when nothing changed.
const RECONCILE_EVERY_MS: u64 = 250;

impl Driver {
    /// Runs until `shutdown` fires, then says goodbye to the cluster.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut facts: mpsc::Receiver<LocalFact>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refusals: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_refusal_report = 0u64;
        let mut last_mesh_check = 0u64;
        let mut last_reconcile = 0u64;
        let mut facts_open = true;
        loop {
            let input = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.net_input(ev),
                    None => break,
                },
                // Once every local source has finished the channel closes; stop polling it
                // rather than spin on its end.
                fact = facts.recv(), if facts_open => match fact {
                    Some(LocalFact::Propose(e)) => Some(Input::Propose(e)),
                    None => {
                        facts_open = false;
                        None
                    }
                },
                _ = tick.tick() => Some(Input::Tick),
                _ = shutdown.changed() => break,
            };
            let now = now_ms();
            // Publish when the state changed (a new shared copy, for the API and the serving
            // tasks alike) and on each tick for what moves without events (live peers,
            // counters), not per message.
            let mut changed = matches!(input, Some(Input::Tick));
            if let Some(input) = input {
                let outputs = self.member.handle(input, now);
                changed |= self.dispatch(outputs);
            }
            if now.saturating_sub(last_refusal_report) >= self.refusal_report.as_millis() as u64 {
                last_refusal_report = now;
                let counts = refusal_counts(&self.net.counters());
                if counts != last_refusals {
                    last_refusals = counts.clone();
                    let node = self.member.id().clone();
                    let outputs = self
                        .member
                        .handle(Input::Propose(Event::RefusalCounts { node, counts }), now);
                    changed |= self.dispatch(outputs);
                }
            }
            if self.member.is_acting_coordinator()
                && (changed || now.saturating_sub(last_reconcile) >= RECONCILE_EVERY_MS)
            {
                last_reconcile = now;
                for event in self.serving.reconciler.decide(self.member.state(), now) {
                    if let Some((kind, fields)) = placement_audit(&event) {
                        self.audit.record(kind, fields);
                    }
                    let outputs = self.member.handle(Input::Propose(event), now);
                    changed |= self.dispatch(outputs);
                }
            }
            if now.saturating_sub(last_mesh_check) >= 1000 {
                last_mesh_check = now;
                self.connect_to_members(now);
            }
            if changed {
                self.publish(now);
            }
        }
        let outputs = self.member.handle(Input::Leave, now_ms());
        self.dispatch(outputs);
        // Give the goodbye a moment to leave before the connections close.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.net.shutdown().await;
    }

    fn net_input(&mut self, ev: NetEvent) -> Option<Input> {
        match ev {
            NetEvent::PeerAdmitted { peer, name, addrs } => {
                tracing::info!(%peer, %name, "peer admitted");
                self.audit.record(
                    "peer.admitted",
                    serde_json::json!({
                        "peer": peer.to_string(),
                        "name": name,
                        "addrs": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    }),
                );
                Some(Input::PeerUp {
                    id: node_id(&peer),
                    name,
                    addresses: addrs.iter().map(|a| a.to_string()).collect(),
                })
            }
            NetEvent::PeerLost { peer } => Some(Input::PeerDown(node_id(&peer))),
            NetEvent::Message { from, bytes, .. } => Some(Input::Bytes {
                from: node_id(&from),
                bytes,
            }),
            NetEvent::Refused { peer, addr, reason } => {
                tracing::warn!(%peer, addr = ?addr.as_ref().map(|a| a.to_string()), %reason, "peer refused");
                self.audit.record(
                    "peer.refused",
                    serde_json::json!({
                        "peer": peer.to_string(),
                        "addr": addr.as_ref().map(|a| a.to_string()),
                        "reason": reason.to_string(),
                    }),
                );
                if let Ok(mut v) = self.view.write() {
                    v.record_refusal(Refusal {
                        at_ms: now_ms(),
                        peer: peer.to_string(),
                        addr: addr.map(|a| a.to_string()),
                        reason,
                    });
                }
                None
            }
            NetEvent::LinkMeasured {
                peer,
                rtt_p50_ms,
                rtt_p95_ms,
                throughput_mbps,
                loss,
            } => Some(Input::Propose(Event::LinkMeasured {
                from: self.member.id().clone(),
                to: node_id(&peer),
                stats: LinkMeasurement {
                    rtt_p50_ms,
                    rtt_p95_ms,
                    throughput_mbps,
                    loss,
                },
            })),
            NetEvent::Listening { addr } => {
                tracing::info!(%addr, "listening");
                if let Ok(mut v) = self.view.write() {
                    v.listen.push(addr.to_string());
                }
                None
            }
            NetEvent::Stream { stream, .. } => {
                if self.serving.streams.try_send(stream).is_err() {
                    tracing::warn!("too many data streams waiting; one dropped");
                }
                None
            }
            NetEvent::Lane { lane, .. } => {
                self.serving.transport.read_lane(*lane);
                None
            }
        }
    }

    /// Sends what the member asks for; true when its state changed.
    fn dispatch(&self, outputs: Vec<Output>) -> bool {
        let mut changed = false;
        for out in outputs {
            match out {
                Output::Broadcast(msg) => match self.member.encode(&msg) {
                    Ok(bytes) => {
                        let net = self.net.clone();
                        tokio::spawn(async move {
                            if let Err(e) = net.broadcast(bytes).await {
                                tracing::debug!(error = %e, "broadcast not sent");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "message not encodable"),
                },
                Output::Send { to, msg } => {
                    let Ok(peer) = to.as_str().parse::<PeerId>() else {
                        tracing::warn!(%to, "not a peer id");
                        continue;
                    };
                    match self.member.encode(&msg) {
                        Ok(bytes) => {
                            let net = self.net.clone();
                            tokio::spawn(async move {
                                if let Err(e) = net.send(peer, bytes).await {
                                    tracing::debug!(%peer, error = %e, "direct message not sent");
                                }
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "message not encodable"),
                    }
                }
                Output::StateChanged => changed = true,
                Output::Refused(e) => tracing::debug!(error = %e, "proposal refused"),
            }
        }
        changed
    }

    /// Members learnt from the state, and peers heard through gossip, that are not connected
    /// are dialled at the addresses they announce: catch-up and direct messages need a
    /// connection to every member, while a node may have been given only one `--peer` (and a
    /// node that has not caught up yet knows the coordinator only from its heartbeats).
    fn connect_to_members(&self, now: u64) {
        let connected: std::collections::HashSet<String> = self
            .net
            .peers()
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        let me = self.member.id();
        let known = self
            .member
            .state()
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.addresses.clone()))
            .chain(self.member.live_peer_addresses(now));
        for (id, addresses) in known {
            if &id == me || connected.contains(id.as_str()) {
                continue;
            }
            for a in &addresses {
                let Ok(addr) = format!("{a}/p2p/{id}").parse::<hearth_net::Multiaddr>() else {
                    continue;
                };
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.add_peer(addr).await;
                });
            }
        }
    }

    fn publish(&mut self, now: u64) {
        let m = &self.member;
        let hash = m.state_hash();
        let fresh = (self.serving.published_hash != hash).then(|| {
            self.serving.published_hash = hash;
            let state = Arc::new(m.state().clone());
            self.serving.states.send_replace(Arc::clone(&state));
            state
        });
        let Ok(mut v) = self.view.write() else {
            return;
        };
        if let Some(state) = fresh {
            v.state = state;
        }
        v.state_hash = m.state_hash();
        v.coordinator = Some(m.coordinator(now));
        v.role = role_name(m.role()).to_string();
        v.live_peers = m.live_peers(now).iter().map(|p| p.to_string()).collect();
        v.net = self.net.counters();
        v.cluster = m.counters().clone();
        v.placement_errors = if m.is_acting_coordinator() {
            self.serving
                .reconciler
                .placement_errors()
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        } else {
            Default::default()
        };
        v.log = m
            .log()
            .map(|e| (e.event.seq, e.event.epoch, e.event.event.kind()))
            .collect();
    }
}

/// The audit log's line for a placement decision of the coordinator.
fn placement_audit(event: &Event) -> Option<(&'static str, serde_json::Value)> {
    use hearth_cluster::InstanceStatus;
    use serde_json::json;
    match event {
        Event::InstancePlaced {
            id,
            model,
            stages,
            predicted_tokens_per_s,
        } => Some((
            "placement.placed",
            json!({
                "instance": id,
                "model": model,
                "predicted_tokens_per_s": predicted_tokens_per_s,
                "stages": stages.iter().map(|s| json!({
                    "node": s.node.as_str(),
                    "device": s.device,
                    "first_layer": s.first_layer,
                    "end_layer": s.end_layer,
                })).collect::<Vec<_>>(),
            }),
        )),
        Event::InstanceStatus { id, status } => {
            let kind = match status {
                InstanceStatus::Ready => "placement.ready",
                InstanceStatus::Draining => "placement.draining",
                _ => return None,
            };
            Some((kind, json!({"instance": id})))
        }
        Event::InstanceRemoved { id } => Some(("placement.removed", json!({"instance": id}))),
        _ => None,
    }
}

fn node_id(peer: &PeerId) -> NodeId {
    NodeId(peer.to_string())
}

fn role_name(r: &Role) -> &'static str {
    match r {
        Role::Starting { .. } => "starting",
        Role::Follower => "follower",
        Role::Candidate { .. } => "candidate",
        Role::Coordinator { .. } => "coordinator",
    }
}

fn refusal_counts(c: &hearth_net::Counters) -> BTreeMap<String, u64> {
    [
        ("admission", c.refused_admission),
        ("malformed", c.dropped_malformed),
        ("oversized", c.dropped_oversized),
        ("unadmitted", c.dropped_unadmitted),
    ]
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .map(|(k, n)| (k.to_string(), n))
    .collect()
}
