//! The network loop: owns the swarm, runs discovery and dial backoff, tracks admission, and
//! turns libp2p events into [`NetEvent`]s. Everything slow (handshakes, stream reads, probes)
//! runs in its own task and reports back over a bounded channel.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{
    gossipsub, identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admission::{self, protocol::NodeInfo, AdmitError};
use crate::behaviour::{self, Behaviour, BehaviourEvent};
use crate::config::{Limits, NetConfig};
use crate::counters::{bump, AtomicCounters};
use crate::error::{FrameError, NetError};
use crate::frame::read_frame;
use crate::key::{hex, load_or_create_identity};
use crate::lane::{self, LaneDesk, LANE_PROTOCOL};
use crate::probe::{self, RttWindow, UdpProbe, PROBE_PROTOCOL};
use crate::stream::{DataStream, DATA_PROTOCOL};
use crate::{NetEvent, NetHandle};

pub const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/msg/1");
const TICK: Duration = Duration::from_millis(100);
/// Consecutive ping failures after which an admitted peer's connections are closed.
const MAX_PING_FAILURES: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_millis(100);

pub(crate) enum Command {
    Broadcast(Vec<u8>, oneshot::Sender<Result<(), NetError>>),
    /// Dial this address (with its `/p2p/` id) like a listed peer: with backoff, and again
    /// after the connection is lost. Ignored when a target with the same address exists.
    AddPeer(Multiaddr),
    Shutdown(oneshot::Sender<()>),
}

/// What an admission means for the peer table.
enum Admission {
    New,
    /// The same process again (a second connection).
    Known,
    /// The same PeerId from a new process.
    Restarted,
}

/// Results of tasks spawned by the loop.
enum Internal {
    Admitted { peer: PeerId, info: NodeInfo },
    AdmitFailed { peer: PeerId, err: AdmitError },
}

pub(crate) struct PeerEntry {
    pub name: String,
    pub instance: u64,
    /// Where its connections come from: the host lanes to it are opened to.
    pub ip: Option<IpAddr>,
}

/// State readable from the handle and from stream tasks without going through the loop.
pub(crate) struct Shared {
    pub local: PeerId,
    pub cluster_id: String,
    pub limits: Limits,
    pub counters: AtomicCounters,
    pub admitted: RwLock<HashMap<PeerId, PeerEntry>>,
    pub listen: RwLock<Vec<Multiaddr>>,
    pub rtt: Mutex<HashMap<PeerId, RttWindow>>,
    pub probe_port: Option<u16>,
    pub lanes: LaneDesk,
    events: mpsc::Sender<NetEvent>,
}

impl Shared {
    pub fn is_admitted(&self, p: &PeerId) -> bool {
        self.admitted
            .read()
            .map(|a| a.contains_key(p))
            .unwrap_or(false)
    }

    /// Never blocks the caller: a full queue drops the event and counts it.
    pub fn emit(&self, ev: NetEvent) {
        if self.events.try_send(ev).is_err() {
            bump(&self.counters.dropped_events);
        }
    }
}

/// Dial targets beyond the listed peers (addresses learnt from the cluster state) are capped
/// so that a peer advertising many addresses cannot make this node dial without end.
const MAX_TARGETS: usize = 1024;

/// A `peers` entry: dialled until connected, with doubling delay; the delay resets only once
/// the peer is admitted, so a peer that keeps failing admission is tried ever more rarely.
struct DialTarget {
    addr: Multiaddr,
    peer: Option<PeerId>,
    connected: bool,
    /// A dial in flight; no second dial is started until it resolves.
    dialing: Option<ConnectionId>,
    next: Instant,
    backoff: Duration,
}

struct Node {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    cfg: NetConfig,
    control: libp2p_stream::Control,
    internal_tx: mpsc::Sender<Internal>,
    info: NodeInfo,
    /// Connections whose peer has not been admitted yet, with their deadline.
    pending: HashMap<PeerId, Instant>,
    conns: HashMap<PeerId, HashMap<ConnectionId, Multiaddr>>,
    targets: Vec<DialTarget>,
    links: HashMap<PeerId, JoinHandle<()>>,
    ping_failures: HashMap<PeerId, u32>,
    udp: Option<Arc<UdpProbe>>,
    topic: gossipsub::IdentTopic,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a node and returns once it listens on every configured address.
pub async fn start(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let keypair = load_or_create_identity(&cfg.data_dir)?;
    let local = keypair.public().to_peer_id();
    let cluster_id = cfg.cluster_key.cluster_id();
    let limits = cfg.limits.clone();

    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(limits.max_gossip_bytes + 64 * 1024)
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let probe_cfg = cfg.link_probe.clone();
    let mdns_on = cfg.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| {
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_cfg,
            )?;
            let mdns = if mdns_on {
                let c = mdns::Config {
                    query_interval: Duration::from_secs(5),
                    ..Default::default()
                };
                Some(mdns::tokio::Behaviour::new(c, key.public().to_peer_id())?)
            } else {
                None
            };
            Ok(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(behaviour::IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(behaviour::agent_version(&cluster_id)),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(probe_cfg.ping_interval),
                ),
                gossipsub,
                mdns: mdns.into(),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(limits.idle_timeout))
        .build();

    // The topic name is derived from the secret key, not the public id, so that a node that
    // only knows the cluster id cannot even name the topic.
    let topic = gossipsub::IdentTopic::new(format!(
        "hearth/{}",
        &hex(&cfg.cluster_key.derive(b"topic"))[..32]
    ));
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| NetError::Transport(e.to_string()))?;

    let udp = if cfg.link_probe.enabled {
        Some(
            UdpProbe::bind(&cfg.cluster_key)
                .await
                .map_err(|e| NetError::Listen {
                    addr: "udp 0.0.0.0:0 (loss probe)".into(),
                    reason: e.to_string(),
                })?,
        )
    } else {
        None
    };

    let lane_listener = if cfg.lanes {
        let ip = lane::listen_ip(&cfg.listen);
        let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|e| NetError::Listen {
                addr: format!("tcp {ip}:0 (lanes)"),
                reason: e.to_string(),
            })?;
        Some(l)
    } else {
        None
    };
    let lane_port = lane_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());

    let (events_tx, events_rx) = mpsc::channel(limits.event_queue.max(1));
    let shared = Arc::new(Shared {
        local,
        cluster_id: cluster_id.clone(),
        limits: limits.clone(),
        counters: AtomicCounters::default(),
        admitted: RwLock::new(HashMap::new()),
        listen: RwLock::new(Vec::new()),
        rtt: Mutex::new(HashMap::new()),
        probe_port: udp.as_ref().map(|u| u.port()),
        lanes: LaneDesk::new(lane_port),
        events: events_tx,
    });

    wait_listening(&mut swarm, &cfg.listen, &shared).await?;

    let mut control = swarm.behaviour().stream.new_control();
    let (internal_tx, internal_rx) = mpsc::channel(256);
    let (cmd_tx, cmd_rx) = mpsc::channel(limits.command_queue.max(1));
    let info = NodeInfo {
        instance: rand::random(),
        probe_port: udp.as_ref().map(|u| u.port()).unwrap_or(0),
        name: crate::admission::protocol::truncate_utf8(&cfg.node_name, crate::MAX_NAME_LEN)
            .to_owned(),
    };

    let mut tasks = Vec::new();
    let accept = |c: &mut libp2p_stream::Control, p: StreamProtocol| {
        c.accept(p.clone())
            .map_err(|e| NetError::Transport(format!("protocol {p} registered twice: {e}")))
    };
    tasks.push(tokio::spawn(accept_admission(
        accept(&mut control, admission::PROTOCOL)?,
        cfg.cluster_key.clone(),
        local,
        info.clone(),
        limits.admission_timeout,
        internal_tx.clone(),
    )));
    tasks.push(tokio::spawn(accept_messages(
        accept(&mut control, MSG_PROTOCOL)?,
        shared.clone(),
    )));
    tasks.push(tokio::spawn(accept_data(
        accept(&mut control, DATA_PROTOCOL)?,
        shared.clone(),
    )));
    tasks.push(tokio::spawn(accept_probes(
        accept(&mut control, PROBE_PROTOCOL)?,
        shared.clone(),
    )));
    tasks.push(tokio::spawn(lane::serve_offers(
        accept(&mut control, LANE_PROTOCOL)?,
        shared.clone(),
    )));
    if let Some(l) = lane_listener {
        tasks.push(tokio::spawn(lane::accept_connections(l, shared.clone())));
    }
    if let Some(u) = &udp {
        let s = shared.clone();
        tasks.push(tokio::spawn(
            u.clone().serve(move || bump(&s.counters.dropped_malformed)),
        ));
    }

    let now = Instant::now();
    let targets = cfg
        .peers
        .iter()
        .map(|a| DialTarget {
            addr: a.clone(),
            peer: peer_of(a),
            connected: false,
            dialing: None,
            next: now,
            backoff: limits.initial_backoff,
        })
        .collect();

    let node = Node {
        swarm,
        shared: shared.clone(),
        cfg,
        control: control.clone(),
        internal_tx,
        info,
        pending: HashMap::new(),
        conns: HashMap::new(),
        targets,
        links: HashMap::new(),
        ping_failures: HashMap::new(),
        udp,
        topic,
        tasks,
    };
    tokio::spawn(node.run(cmd_rx, internal_rx));
    tracing::info!(peer = %local, cluster = %cluster_id, "hearth-net started");
    Ok((
        NetHandle {
            shared,
            cmd: cmd_tx,
            control,
        },
        events_rx,
    ))
}

/// Binds every listener before returning, so `listen_addrs()` is usable at once (tests and the
/// binary print or hand them out immediately).
async fn wait_listening(
    swarm: &mut Swarm<Behaviour>,
    listen: &[Multiaddr],
    shared: &Shared,
) -> Result<(), NetError> {
    let mut waiting = HashMap::new();
    for a in listen {
        let id = swarm.listen_on(a.clone()).map_err(|e| NetError::Listen {
            addr: a.to_string(),
            reason: e.to_string(),
        })?;
        waiting.insert(id, a.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| NetError::Listen {
                addr: format!("{:?}", waiting.values()),
                reason: "timed out".into(),
            })?;
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                waiting.remove(&listener_id);
                if let Ok(mut l) = shared.listen.write() {
                    l.push(address.clone());
                }
                shared.emit(NetEvent::Listening { addr: address });
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason: Err(e),
                ..
            }
            | SwarmEvent::ListenerError {
                listener_id,
                error: e,
            } => {
                let addr = waiting
                    .get(&listener_id)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                return Err(NetError::Listen {
                    addr,
                    reason: e.to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn peer_of(a: &Multiaddr) -> Option<PeerId> {
    a.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn without_p2p(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

pub(crate) fn ip_of(a: &Multiaddr) -> Option<IpAddr> {
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Node {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        let done = loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(i) = internal.recv() => self.on_internal(i),
                cmd = cmds.recv() => match cmd {
                    Some(Command::Broadcast(bytes, reply)) => {
                        let r = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes)
                            .map(|_| bump(&self.shared.counters.gossip_out))
                            .map_err(|e| NetError::Broadcast(e.to_string()));
                        let _ = reply.send(r);
                    }
                    Some(Command::AddPeer(addr)) => self.add_target(addr),
                    Some(Command::Shutdown(reply)) => break Some(reply),
                    None => break None,
                },
                _ = tick.tick() => self.on_tick(),
            }
        };
        for t in self
            .tasks
            .drain(..)
            .chain(self.links.drain().map(|(_, t)| t))
        {
            t.abort();
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        drop(self.swarm);
        if let Some(reply) = done {
            let _ = reply.send(());
        }
    }

    fn add_target(&mut self, addr: Multiaddr) {
        if self.targets.len() >= MAX_TARGETS || self.targets.iter().any(|t| t.addr == addr) {
            return;
        }
        let peer = peer_of(&addr);
        if peer == Some(self.shared.local) {
            return;
        }
        let connected = peer.is_some_and(|p| self.swarm.is_connected(&p));
        self.targets.push(DialTarget {
            addr,
            peer,
            connected,
            dialing: None,
            next: Instant::now(),
            backoff: self.cfg.limits.initial_backoff,
        });
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.refuse(p, "admission timed out".into());
        }
        for i in 0..self.targets.len() {
            let t = &mut self.targets[i];
            if t.connected || t.dialing.is_some() || t.next > now {
                continue;
            }
            t.next = now + t.backoff;
            t.backoff = (t.backoff * 2).min(self.cfg.limits.max_backoff);
            let addr = t.addr.clone();
            bump(&self.shared.counters.dial_attempts);
            let opts = match peer_of(&addr) {
                Some(p) => DialOpts::peer_id(p).addresses(vec![addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.targets[i].dialing = Some(id),
                Err(e) => tracing::debug!(%addr, error = %e, "dial failed"),
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(c) = self.conns.get_mut(&peer_id) {
                    c.remove(&connection_id);
                }
                if num_established == 0 {
                    self.on_disconnected(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                for t in &mut self.targets {
                    if t.dialing == Some(connection_id) {
                        t.dialing = None;
                        tracing::debug!(addr = %t.addr, %error, "dial failed");
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                if let Ok(mut l) = self.shared.listen.write() {
                    if !l.contains(&address) {
                        l.push(address.clone());
                    }
                }
                self.shared.emit(NetEvent::Listening { addr: address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if let Ok(mut l) = self.shared.listen.write() {
                    l.retain(|a| a != &address);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => match behaviour::agent_cluster_id(&info.agent_version) {
                Some(id) if id == self.shared.cluster_id => {}
                Some(id) => self.refuse(peer_id, format!("node of another cluster ({id})")),
                None => self.refuse(
                    peer_id,
                    format!("not a hearth node ({})", info.agent_version),
                ),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => {
                match result {
                    Ok(rtt) => {
                        self.ping_failures.remove(&peer);
                        if self.shared.is_admitted(&peer) {
                            if let Ok(mut m) = self.shared.rtt.lock() {
                                let w = self.cfg.link_probe.rtt_window;
                                m.entry(peer).or_insert_with(|| RttWindow::new(w)).push(rtt);
                            }
                        }
                    }
                    Err(e) => {
                        let n = self.ping_failures.entry(peer).or_insert(0);
                        *n += 1;
                        if *n >= MAX_PING_FAILURES {
                            tracing::info!(%peer, error = %e, "peer stopped answering pings, closing");
                            let _ = self.swarm.disconnect_peer_id(peer);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (p, a) in list {
                    by_peer.entry(p).or_default().push(a);
                }
                for (p, addrs) in by_peer {
                    if p != self.shared.local && !self.swarm.is_connected(&p) {
                        bump(&self.shared.counters.dial_attempts);
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(p).addresses(addrs).build());
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let remote = endpoint.get_remote_address().clone();
        self.conns
            .entry(peer)
            .or_default()
            .insert(id, remote.clone());
        let dialed = match &endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(without_p2p(address)),
            ConnectedPoint::Listener { .. } => None,
        };
        for t in &mut self.targets {
            // The dial resolved: without this the target would count as dialling forever and
            // never be redialled after the connection is lost.
            if t.dialing == Some(id) {
                t.dialing = None;
            }
            // A connection the peer opened to us serves as well as one we dialled.
            if t.peer == Some(peer) || dialed.as_ref() == Some(&without_p2p(&t.addr)) {
                t.connected = true;
                t.peer = Some(peer);
            }
        }
        if !self.shared.is_admitted(&peer) {
            let deadline = Instant::now() + self.cfg.limits.admission_timeout;
            self.pending.entry(peer).or_insert(deadline);
        }
        // The dialer proves first on every new connection, including a second one from a
        // known peer: that is how a restarted process (new instance id) is noticed.
        if endpoint.is_dialer() {
            self.start_handshake(peer, Duration::ZERO);
        }
    }

    fn start_handshake(&self, peer: PeerId, delay: Duration) {
        let control = self.control.clone();
        let key = self.cfg.cluster_key.clone();
        let (local, info, tx) = (
            self.shared.local,
            self.info.clone(),
            self.internal_tx.clone(),
        );
        let timeout = self.cfg.limits.admission_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let r = tokio::time::timeout(timeout, async {
                let mut s = control
                    .clone()
                    .open_stream(peer, admission::PROTOCOL)
                    .await
                    .map_err(|e| AdmitError::Open(e.to_string()))?;
                admission::initiate(&mut s, &key, &local, &peer, &info).await
            })
            .await
            .unwrap_or(Err(AdmitError::Timeout));
            let _ = tx
                .send(match r {
                    Ok(info) => Internal::Admitted { peer, info },
                    Err(err) => Internal::AdmitFailed { peer, err },
                })
                .await;
        });
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        self.conns.remove(&peer);
        self.pending.remove(&peer);
        self.ping_failures.remove(&peer);
        let now = Instant::now();
        for t in &mut self.targets {
            if t.peer == Some(peer) && t.connected {
                t.connected = false;
                t.next = now + t.backoff.min(self.cfg.limits.initial_backoff * 2);
            }
        }
        if let Some(h) = self.links.remove(&peer) {
            h.abort();
        }
        if let Ok(mut m) = self.shared.rtt.lock() {
            m.remove(&peer);
        }
        let was = self
            .shared
            .admitted
            .write()
            .ok()
            .and_then(|mut a| a.remove(&peer));
        if was.is_some() {
            tracing::info!(%peer, "peer lost");
            self.shared.emit(NetEvent::PeerLost { peer });
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Admitted { peer, info } => self.admit(peer, info),
            Internal::AdmitFailed { peer, err } => {
                // Only a wrong answer (or walking away from the handshake) proves anything
                // against the peer. Transport trouble, such as one of two parallel connections
                // closing mid-handshake, is left to the admission deadline, which still refuses
                // a peer that never completes.
                let proof_failed = matches!(
                    err,
                    AdmitError::BadProof
                        | AdmitError::Closed
                        | AdmitError::Version(_)
                        | AdmitError::Frame(FrameError::Malformed(_) | FrameError::TooLarge { .. })
                );
                // Counted even when the peer has already hung up: the attempt was real.
                if proof_failed {
                    self.refuse(peer, err.to_string());
                } else if self.pending.contains_key(&peer) && self.swarm.is_connected(&peer) {
                    // Try again over whatever connection is left; the deadline bounds this.
                    tracing::debug!(%peer, error = %err, "admission attempt did not complete, retrying");
                    self.start_handshake(peer, RETRY_DELAY);
                }
            }
        }
    }

    fn admit(&mut self, peer: PeerId, info: NodeInfo) {
        let Some(conns) = self.conns.get(&peer) else {
            return; // disconnected while the handshake finished
        };
        let addrs: Vec<Multiaddr> = conns.values().cloned().collect();
        self.pending.remove(&peer);
        let replaced = {
            let Ok(mut a) = self.shared.admitted.write() else {
                return;
            };
            let prev = a.insert(
                peer,
                crate::node::PeerEntry {
                    name: info.name.clone(),
                    instance: info.instance,
                    ip: addrs.iter().find_map(ip_of),
                },
            );
            match prev {
                None => Admission::New,
                Some(p) if p.instance == info.instance => Admission::Known,
                Some(_) => Admission::Restarted,
            }
        };
        for t in &mut self.targets {
            if t.peer == Some(peer) {
                t.backoff = self.cfg.limits.initial_backoff;
            }
        }
        match replaced {
            Admission::Known => return,
            Admission::Restarted => {
                // The old process's connections may linger (a killed QUIC peer sends no close),
                // and gossipsub, seeing a second connection rather than a first, would never
                // exchange subscriptions with the new process. Drop them all; the redial (ours
                // or the peer's) makes a clean first connection, whose admission announces it.
                tracing::info!(%peer, "peer restarted; reconnecting");
                let _ = self.swarm.disconnect_peer_id(peer);
                return;
            }
            Admission::New => {}
        }
        bump(&self.shared.counters.admitted);
        tracing::info!(%peer, name = %info.name, "peer admitted");
        self.shared.emit(NetEvent::PeerAdmitted {
            peer,
            name: info.name.clone(),
            addrs: addrs.clone(),
        });
        if self.cfg.link_probe.enabled {
            let udp_to = addrs
                .iter()
                .find_map(ip_of)
                .filter(|_| info.probe_port != 0)
                .map(|ip| SocketAddr::new(ip, info.probe_port));
            if let Some(h) = self.links.remove(&peer) {
                h.abort();
            }
            let h = tokio::spawn(measure_link(
                peer,
                udp_to,
                self.udp.clone(),
                self.control.clone(),
                self.shared.clone(),
                self.cfg.link_probe.clone(),
            ));
            self.links.insert(peer, h);
        }
    }

    fn refuse(&mut self, peer: PeerId, reason: String) {
        let addr = self
            .conns
            .get(&peer)
            .and_then(|c| c.values().next().cloned());
        self.pending.remove(&peer);
        if let Ok(mut a) = self.shared.admitted.write() {
            a.remove(&peer);
        }
        bump(&self.shared.counters.refused_admission);
        tracing::warn!(%peer, addr = ?addr, %reason, "peer refused");
        self.shared.emit(NetEvent::Refused { peer, addr, reason });
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, msg: gossipsub::Message) {
        let ok_source = self.shared.is_admitted(&source);
        let ok_size = msg.data.len() <= self.cfg.limits.max_gossip_bytes;
        let verdict = if ok_source && ok_size {
            gossipsub::MessageAcceptance::Accept
        } else {
            bump(if ok_source {
                &self.shared.counters.dropped_oversized
            } else {
                &self.shared.counters.dropped_unadmitted
            });
            gossipsub::MessageAcceptance::Reject
        };
        let accepted = matches!(verdict, gossipsub::MessageAcceptance::Accept);
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, verdict);
        if accepted {
            bump(&self.shared.counters.gossip_in);
            let from = msg.source.unwrap_or(source);
            self.shared.emit(NetEvent::Message {
                from,
                bytes: msg.data,
                direct: false,
            });
        }
    }
}

async fn accept_admission(
    mut incoming: libp2p_stream::IncomingStreams,
    key: crate::ClusterKey,
    local: PeerId,
    info: NodeInfo,
    timeout: Duration,
    tx: mpsc::Sender<Internal>,
) {
    while let Some((peer, mut s)) = incoming.next().await {
        let (key, info, tx) = (key.clone(), info.clone(), tx.clone());
        tokio::spawn(async move {
            let r = tokio::time::timeout(
                timeout,
                admission::respond(&mut s, &key, &local, &peer, &info),
            )
            .await
            .unwrap_or(Err(AdmitError::Timeout));
            let _ = tx
                .send(match r {
                    Ok(info) => Internal::Admitted { peer, info },
                    Err(err) => Internal::AdmitFailed { peer, err },
                })
                .await;
        });
    }
}

fn count_frame_error(shared: &Shared, e: &FrameError) {
    match e {
        FrameError::TooLarge { .. } => bump(&shared.counters.dropped_oversized),
        _ => bump(&shared.counters.dropped_malformed),
    }
}

async fn accept_messages(mut incoming: libp2p_stream::IncomingStreams, shared: Arc<Shared>) {
    while let Some((peer, mut s)) = incoming.next().await {
        if !shared.is_admitted(&peer) {
            bump(&shared.counters.dropped_unadmitted);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let max = shared.limits.max_message_bytes;
            let r = tokio::time::timeout(shared.limits.admission_timeout, read_frame(&mut s, max))
                .await
                .unwrap_or(Err(FrameError::Timeout));
            match r {
                Ok(Some(bytes)) => {
                    bump(&shared.counters.direct_in);
                    shared.emit(NetEvent::Message {
                        from: peer,
                        bytes,
                        direct: true,
                    });
                }
                Ok(None) => bump(&shared.counters.dropped_malformed),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "direct message dropped");
                    count_frame_error(&shared, &e);
                }
            }
        });
    }
}

async fn accept_data(mut incoming: libp2p_stream::IncomingStreams, shared: Arc<Shared>) {
    while let Some((peer, s)) = incoming.next().await {
        if !shared.is_admitted(&peer) {
            bump(&shared.counters.dropped_unadmitted);
            continue;
        }
        shared.emit(NetEvent::Stream {
            peer,
            stream: DataStream::new(peer, s, shared.limits.max_frame_bytes),
        });
    }
}

async fn accept_probes(mut incoming: libp2p_stream::IncomingStreams, shared: Arc<Shared>) {
    // One probe at a time per node: a peer cannot make us sink more than one transfer at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    while let Some((peer, mut s)) = incoming.next().await {
        if !shared.is_admitted(&peer) {
            bump(&shared.counters.dropped_unadmitted);
            continue;
        }
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), probe::serve_throughput(&mut s))
                .await;
            if let Ok(Err(e)) = r {
                count_frame_error(&shared, &e);
            }
            drop(permit);
        });
    }
}

/// Per admitted peer: a loss round every report interval, a throughput transfer every
/// throughput interval, and one `LinkMeasured` per report.
async fn measure_link(
    peer: PeerId,
    udp_to: Option<SocketAddr>,
    udp: Option<Arc<UdpProbe>>,
    control: libp2p_stream::Control,
    shared: Arc<Shared>,
    cfg: crate::LinkProbeConfig,
) {
    let mut throughput: Option<f64> = None;
    let mut loss: Option<f64> = None;
    let mut last_tp: Option<Instant> = None;
    loop {
        let rtt = shared.rtt.lock().ok().and_then(|m| {
            m.get(&peer)
                .and_then(|w| w.percentiles().map(|p| (p, w.min())))
        });
        if last_tp.is_none_or(|t| t.elapsed() >= cfg.throughput_interval) {
            last_tp = Some(Instant::now());
            let rtt_ms = rtt.and_then(|(_, m)| m).unwrap_or(0.0);
            let r = async {
                let mut s = control
                    .clone()
                    .open_stream(peer, PROBE_PROTOCOL)
                    .await
                    .ok()?;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    probe::send_throughput(&mut s, cfg.throughput_bytes, rtt_ms),
                )
                .await
                .ok()?
                .ok()
            }
            .await;
            if r.is_some() {
                throughput = r;
            }
        }
        if let (Some(u), Some(to)) = (&udp, udp_to) {
            if let Some(l) = u
                .round(to, cfg.loss_packets, cfg.loss_spacing, cfg.loss_wait)
                .await
            {
                loss = Some(l);
            }
        }
        let rtt = shared
            .rtt
            .lock()
            .ok()
            .and_then(|m| m.get(&peer).and_then(|w| w.percentiles()));
        if let Some((p50, p95)) = rtt {
            shared.emit(NetEvent::LinkMeasured {
                peer,
                rtt_p50_ms: p50,
                rtt_p95_ms: p95,
                throughput_mbps: throughput,
                loss,
            });
        }
        tokio::time::sleep(cfg.report_interval).await;
    }
}
