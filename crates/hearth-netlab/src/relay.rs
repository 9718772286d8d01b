//! A userspace relay that adds a fixed one-way delay, in place of `netem` (absent from the
//! kernel these tests run on). Each chunk (TCP) or datagram (UDP) is stamped when it is
//! received and released `delay` later from a per-direction FIFO queue: since every item has
//! the same delay, release times are in order, the queue stays FIFO, and many items are in
//! flight at once, so throughput is limited by the queue size over the delay, not by one
//! chunk per delay.

use crate::RelayError;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// TCP read size; one queue item holds at most this much.
const TCP_CHUNK: usize = 16 * 1024;
/// Chunks queued per direction: 4 MiB, enough for ~1.6 Gbit/s at 20 ms. A full queue
/// stops reading, and TCP flow control pushes back on the sender.
const TCP_QUEUE_CHUNKS: usize = 256;
/// Datagrams queued per direction; beyond it datagrams are dropped (and counted), as a
/// full router queue would.
const UDP_QUEUE: usize = 4096;
const UDP_MAX_DATAGRAM: usize = 65_535;
/// Concurrent TCP connections and UDP client client_flows; more are refused (and counted).
const MAX_FLOWS: usize = 1024;
/// A UDP client flow with no traffic either way for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(120);
/// How often blocked UDP reads wake to notice that the relay is stopping.
const POLL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a relay has forwarded so far. "Up" is client to target, "down" target to client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// TCP connections accepted and connected through, or UDP client client_flows opened.
    pub flows: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub datagrams_up: u64,
    pub datagrams_down: u64,
    /// Datagrams dropped on a full queue, and flows refused (limit or target unreachable).
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    flows: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    datagrams_up: AtomicU64,
    datagrams_down: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Registered TCP streams, shut down when the relay stops so blocked threads return.
type Registry = Arc<Mutex<HashMap<u64, [TcpStream; 2]>>>;

enum Kind {
    Tcp { registry: Registry },
    Udp,
}

/// A running delay relay; it stops when dropped.
pub struct Relay {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    kind: Kind,
    main: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local", &self.local)
            .field("stats", &self.stats())
            .finish()
    }
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

impl Relay {
    /// Listens on `listen` (port 0 picks one; see [`Relay::local_addr`]) and forwards each
    /// accepted connection to `target`, both directions `one_way_delay` late.
    pub fn tcp(
        listen: SocketAddr,
        target: SocketAddr,
        one_way_delay: Duration,
    ) -> Result<Relay, RelayError> {
        let listener = TcpListener::bind(listen).map_err(|source| RelayError::Bind {
            addr: listen,
            source,
        })?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
        let main = {
            let (stop, counters, registry) = (stop.clone(), counters.clone(), registry.clone());
            std::thread::Builder::new()
                .name("relay-tcp-accept".into())
                .spawn(move || {
                    tcp_accept_loop(listener, target, one_way_delay, stop, counters, registry)
                })?
        };
        Ok(Relay {
            local,
            stop,
            counters,
            kind: Kind::Tcp { registry },
            main: Some(main),
        })
    }

    /// Binds `listen` and forwards datagrams to `target`, one upstream socket per client
    /// source address (so replies find their way back), both directions `one_way_delay` late.
    pub fn udp(
        listen: SocketAddr,
        target: SocketAddr,
        one_way_delay: Duration,
    ) -> Result<Relay, RelayError> {
        let sock = UdpSocket::bind(listen).map_err(|source| RelayError::Bind {
            addr: listen,
            source,
        })?;
        sock.set_read_timeout(Some(POLL))?;
        let local = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let main = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name("relay-udp".into())
                .spawn(move || udp_main(sock, target, one_way_delay, stop, counters))?
        };
        Ok(Relay {
            local,
            stop,
            counters,
            kind: Kind::Udp,
            main: Some(main),
        })
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> RelayStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            flows: g(&c.flows),
            bytes_up: g(&c.bytes_up),
            bytes_down: g(&c.bytes_down),
            datagrams_up: g(&c.datagrams_up),
            datagrams_down: g(&c.datagrams_down),
            dropped: g(&c.dropped),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Kind::Tcp { registry } = &self.kind {
            // accept() does not notice the flag; a connection to ourselves wakes it.
            let mut wake = self.local;
            if wake.ip().is_unspecified() {
                wake.set_ip(match wake {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
            let streams = registry.lock().unwrap_or_else(PoisonError::into_inner);
            for pair in streams.values() {
                for s in pair {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
        if let Some(h) = self.main.take() {
            let _ = h.join();
        }
    }
}

fn tcp_accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    delay: Duration,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    registry: Registry,
) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        let full = registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            >= MAX_FLOWS;
        if full {
            Counters::add(&counters.dropped, 1);
            continue;
        }
        next_id += 1;
        let id = next_id;
        let counters_main = counters.clone();
        let (counters, registry) = (counters.clone(), registry.clone());
        // Connecting can take up to the timeout; do it off the accept thread.
        let spawned = std::thread::Builder::new()
            .name("relay-tcp-conn".into())
            .spawn(move || tcp_connection(id, client, target, delay, counters, registry));
        if spawned.is_err() {
            // The client socket went with the closure and is closed.
            Counters::add(&counters_main.dropped, 1);
        }
    }
}

/// Removes a connection from the registry once both directions are done.
struct ConnGuard {
    id: u64,
    registry: Registry,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn tcp_connection(
    id: u64,
    client: TcpStream,
    target: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
    registry: Registry,
) {
    let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        Counters::add(&counters.dropped, 1);
        return;
    };
    Counters::add(&counters.flows, 1);
    // The delay is the point; Nagle would add its own on top for small writes.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let clones = (|| Some((client.try_clone().ok()?, upstream.try_clone().ok()?)))();
    let Some((client2, upstream2)) = clones else {
        return;
    };
    if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
        registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, [a, b]);
    }
    let guard = Arc::new(ConnGuard { id, registry });
    let down = {
        let (counters, guard) = (counters.clone(), guard.clone());
        std::thread::Builder::new()
            .name("relay-tcp-down".into())
            .spawn(move || {
                pump(upstream2, client2, delay, &counters.bytes_down);
                drop(guard);
            })
    };
    pump(client, upstream, delay, &counters.bytes_up);
    if let Ok(h) = down {
        let _ = h.join();
    }
    drop(guard);
}

/// Forwards `src` to `dst`, each chunk `delay` after it was read: a reader thread stamps
/// and queues, this thread waits for each chunk's time and writes it.
fn pump(src: TcpStream, mut dst: TcpStream, delay: Duration, bytes: &AtomicU64) {
    // `None` marks the end of the stream.
    let (tx, rx) = sync_channel::<(Instant, Option<Vec<u8>>)>(TCP_QUEUE_CHUNKS);
    let Ok(src_for_reader) = src.try_clone() else {
        return;
    };
    let reader = std::thread::Builder::new()
        .name("relay-tcp-read".into())
        .spawn(move || {
            let mut src = src_for_reader;
            let mut buf = vec![0u8; TCP_CHUNK];
            loop {
                match src.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        // End of stream (or reset) travels with the same delay as data.
                        let _ = tx.send((Instant::now(), None));
                        break;
                    }
                    Ok(n) => {
                        if tx.send((Instant::now(), Some(buf[..n].to_vec()))).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    if reader.is_err() {
        return;
    }
    while let Ok((at, chunk)) = rx.recv() {
        sleep_until(at + delay);
        match chunk {
            Some(data) => {
                if dst.write_all(&data).is_err() {
                    // The far side is gone: stop reading from the near side too.
                    let _ = src.shutdown(Shutdown::Both);
                    break;
                }
                Counters::add(bytes, data.len() as u64);
            }
            None => {
                let _ = dst.shutdown(Shutdown::Write);
                break;
            }
        }
    }
    drop(rx);
    if let Ok(h) = reader {
        let _ = h.join();
    }
}

struct ClientFlow {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the relay started at the last datagram either way.
    last_ms: Arc<AtomicU64>,
}

type Datagram<A> = (Instant, A, Vec<u8>);

fn udp_main(
    sock: UdpSocket,
    target: SocketAddr,
    delay: Duration,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let started = Instant::now();
    let Ok(down_sock) = sock.try_clone() else {
        return;
    };
    let (up_tx, up_rx) = sync_channel::<Datagram<Arc<UdpSocket>>>(UDP_QUEUE);
    let (down_tx, down_rx) = sync_channel::<Datagram<SocketAddr>>(UDP_QUEUE);
    let up_sender = {
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("relay-udp-up".into())
            .spawn(move || {
                udp_sender(up_rx, delay, |s: &Arc<UdpSocket>, d| {
                    if s.send(d).is_ok() {
                        Counters::add(&counters.datagrams_up, 1);
                        Counters::add(&counters.bytes_up, d.len() as u64);
                    }
                })
            })
    };
    let down_sender = {
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("relay-udp-down".into())
            .spawn(move || {
                udp_sender(down_rx, delay, |to: &SocketAddr, d| {
                    if down_sock.send_to(d, to).is_ok() {
                        Counters::add(&counters.datagrams_down, 1);
                        Counters::add(&counters.bytes_down, d.len() as u64);
                    }
                })
            })
    };
    let mut client_flows: HashMap<SocketAddr, ClientFlow> = HashMap::new();
    let mut readers = Vec::new();
    let mut buf = vec![0u8; UDP_MAX_DATAGRAM];
    while !stop.load(Ordering::SeqCst) {
        let now_ms = started.elapsed().as_millis() as u64;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                client_flows.retain(|_, s| {
                    now_ms.saturating_sub(s.last_ms.load(Ordering::Relaxed))
                        < UDP_IDLE.as_millis() as u64
                });
                readers.retain(|h: &JoinHandle<()>| !h.is_finished());
                continue;
            }
            // ICMP errors from earlier sends surface here; they are not ours to act on.
            Err(_) => continue,
        };
        let at = Instant::now();
        if !client_flows.contains_key(&from) {
            if client_flows.len() >= MAX_FLOWS {
                Counters::add(&counters.dropped, 1);
                continue;
            }
            match udp_flow(target, from, started, &stop, &counters, down_tx.clone()) {
                Some((s, h)) => {
                    Counters::add(&counters.flows, 1);
                    client_flows.insert(from, s);
                    readers.push(h);
                }
                None => {
                    Counters::add(&counters.dropped, 1);
                    continue;
                }
            }
        }
        let Some(s) = client_flows.get(&from) else {
            continue;
        };
        s.last_ms.store(now_ms, Ordering::Relaxed);
        if let Err(TrySendError::Full(_)) =
            up_tx.try_send((at, s.upstream.clone(), buf[..n].to_vec()))
        {
            Counters::add(&counters.dropped, 1);
        }
    }
    drop(up_tx);
    drop(down_tx);
    drop(client_flows);
    for h in readers {
        let _ = h.join();
    }
    for h in [up_sender, down_sender].into_iter().flatten() {
        let _ = h.join();
    }
}

/// Opens the upstream socket for one client and starts the thread that queues its replies.
fn udp_flow(
    target: SocketAddr,
    client: SocketAddr,
    started: Instant,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
    down_tx: SyncSender<Datagram<SocketAddr>>,
) -> Option<(ClientFlow, JoinHandle<()>)> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let upstream = UdpSocket::bind(bind).ok()?;
    upstream.connect(target).ok()?;
    upstream.set_read_timeout(Some(POLL)).ok()?;
    let upstream = Arc::new(upstream);
    let last_ms = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
    let h = {
        let (upstream, last_ms, stop, counters) = (
            upstream.clone(),
            last_ms.clone(),
            stop.clone(),
            counters.clone(),
        );
        std::thread::Builder::new()
            .name("relay-udp-flow".into())
            .spawn(move || {
                let mut buf = vec![0u8; UDP_MAX_DATAGRAM];
                while !stop.load(Ordering::SeqCst) {
                    let now_ms = started.elapsed().as_millis() as u64;
                    match upstream.recv(&mut buf) {
                        Ok(n) => {
                            last_ms.store(now_ms, Ordering::Relaxed);
                            let item = (Instant::now(), client, buf[..n].to_vec());
                            if let Err(TrySendError::Full(_)) = down_tx.try_send(item) {
                                Counters::add(&counters.dropped, 1);
                            }
                        }
                        Err(_) => {
                            // Timeout or an ICMP error; end the flow once it is idle.
                            let idle = now_ms.saturating_sub(last_ms.load(Ordering::Relaxed));
                            if idle >= UDP_IDLE.as_millis() as u64 {
                                break;
                            }
                        }
                    }
                }
            })
            .ok()?
    };
    Some((ClientFlow { upstream, last_ms }, h))
}

fn udp_sender<A>(rx: Receiver<Datagram<A>>, delay: Duration, mut send: impl FnMut(&A, &[u8])) {
    while let Ok((at, to, data)) = rx.recv() {
        sleep_until(at + delay);
        send(&to, &data);
    }
}
