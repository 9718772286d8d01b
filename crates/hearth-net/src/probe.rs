//! Link measurement: RTT window (fed by libp2p ping), timed transfers for throughput, and
//! numbered UDP datagrams for loss, which TCP and QUIC would otherwise hide by retransmitting.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use hmac::Mac;
use libp2p::{Stream, StreamProtocol};
use tokio::net::UdpSocket;

use crate::error::FrameError;
use crate::key::{ClusterKey, HmacSha256};

pub const PROBE_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/probe/1");
/// Largest transfer a peer may ask us to swallow in one probe.
pub const MAX_PROBE_BYTES: usize = 8 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Last `cap` RTT samples of one peer.
#[derive(Debug, Clone)]
pub struct RttWindow {
    samples: VecDeque<f64>,
    cap: usize,
}

impl RttWindow {
    pub fn new(cap: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(cap.max(1)),
            cap: cap.max(1),
        }
    }
    pub fn push(&mut self, rtt: Duration) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt.as_secs_f64() * 1e3);
    }
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    /// (p50, p95) in milliseconds by nearest rank; `None` without samples.
    pub fn percentiles(&self) -> Option<(f64, f64)> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.samples.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[(((p * v.len() as f64).ceil() as usize).max(1) - 1).min(v.len() - 1)];
        Some((rank(0.50), rank(0.95)))
    }
    pub fn min(&self) -> Option<f64> {
        self.samples.iter().copied().min_by(f64::total_cmp)
    }
}

/// Sender side of a throughput probe: announces the size, streams it, waits for the one-byte
/// acknowledgement. Returns Mbit/s, with one RTT (the acknowledgement's) taken off the time.
pub async fn send_throughput(s: &mut Stream, bytes: usize, rtt_ms: f64) -> Result<f64, FrameError> {
    let bytes = bytes.min(MAX_PROBE_BYTES);
    let chunk = vec![0x5Au8; CHUNK.min(bytes.max(1))];
    let t0 = Instant::now();
    s.write_all(&(bytes as u32).to_be_bytes()).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await?;
        left -= n;
    }
    s.flush().await?;
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = s.close().await;
    // Only subtract the RTT when it is a small part of the transfer; otherwise the estimate
    // would swing wildly on tiny transfers over slow links.
    let rtt = rtt_ms / 1e3;
    let t = if rtt < elapsed / 2.0 {
        elapsed - rtt
    } else {
        elapsed
    };
    Ok(bytes as f64 * 8.0 / t.max(1e-6) / 1e6)
}

/// Receiver side: reads the announced number of bytes (bounded) and acknowledges.
pub async fn serve_throughput(s: &mut Stream) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PROBE_BYTES {
        return Err(FrameError::TooLarge {
            size: len,
            limit: MAX_PROBE_BYTES,
        });
    }
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = s.read(&mut buf[..left.min(CHUNK)]).await?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        left -= n;
    }
    s.write_all(&[1]).await?;
    s.flush().await?;
    let _ = s.close().await;
    Ok(len)
}

// --- loss probe -------------------------------------------------------------------------

const MAGIC: &[u8; 4] = b"HLP1";
const HEADER: usize = 4 + 1 + 4 + 4;
const TAG: usize = 16;
pub const PACKET_LEN: usize = HEADER + TAG;
const KIND_PROBE: u8 = 0;
const KIND_ECHO: u8 = 1;

/// One loss-probe datagram: `"HLP1" ‖ kind ‖ round ‖ seq ‖ tag`, the tag being the first 16
/// bytes of HMAC-SHA256 over the header with a key derived from the cluster key. Only members
/// can make us echo, so the echo cannot be used to reflect traffic at a stranger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub echo: bool,
    pub round: u32,
    pub seq: u32,
}

impl Packet {
    pub fn encode(&self, key: &[u8; 32]) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = if self.echo { KIND_ECHO } else { KIND_PROBE };
        b[5..9].copy_from_slice(&self.round.to_be_bytes());
        b[9..13].copy_from_slice(&self.seq.to_be_bytes());
        let tag = tag(key, &b[..HEADER]);
        b[HEADER..].copy_from_slice(&tag[..TAG]);
        b
    }

    pub fn decode(b: &[u8], key: &[u8; 32]) -> Result<Self, FrameError> {
        if b.len() != PACKET_LEN || &b[..4] != MAGIC {
            return Err(FrameError::Malformed("probe packet"));
        }
        let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
        m.update(&b[..HEADER]);
        m.verify_truncated_left(&b[HEADER..])
            .map_err(|_| FrameError::Malformed("probe tag"))?;
        let echo = match b[4] {
            KIND_PROBE => false,
            KIND_ECHO => true,
            _ => return Err(FrameError::Malformed("probe kind")),
        };
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Self {
            echo,
            round: word(5),
            seq: word(9),
        })
    }
}

fn tag(key: &[u8; 32], header: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(header);
    m.finalize().into_bytes().into()
}

/// The node's UDP probe socket: echoes members' probes and counts echoes of its own rounds.
pub struct UdpProbe {
    socket: UdpSocket,
    key: [u8; 32],
    next_round: AtomicU32,
    /// round → distinct sequence numbers echoed so far; bounded by the number of live rounds.
    rounds: Mutex<HashMap<u32, Vec<bool>>>,
}

impl UdpProbe {
    pub async fn bind(cluster_key: &ClusterKey) -> std::io::Result<Arc<Self>> {
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        Ok(Arc::new(Self {
            socket,
            key: cluster_key.derive(b"loss-probe"),
            next_round: AtomicU32::new(rand::random()),
            rounds: Mutex::new(HashMap::new()),
        }))
    }

    pub fn port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Receive loop; returns only on a socket error. `malformed` is called per bad datagram.
    pub async fn serve(self: Arc<Self>, malformed: impl Fn()) {
        let mut buf = [0u8; 64];
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "loss probe socket failed");
                    return;
                }
            };
            match Packet::decode(&buf[..n], &self.key) {
                Ok(p) if !p.echo => {
                    let reply = Packet { echo: true, ..p }.encode(&self.key);
                    let _ = self.socket.send_to(&reply, from).await;
                }
                Ok(p) => {
                    if let Ok(mut r) = self.rounds.lock() {
                        if let Some(seen) = r.get_mut(&p.round) {
                            if let Some(s) = seen.get_mut(p.seq as usize) {
                                *s = true;
                            }
                        }
                    }
                }
                Err(_) => malformed(),
            }
        }
    }

    /// Sends `n` numbered datagrams `spacing` apart to `to`, waits `wait` for stragglers, and
    /// returns the fraction not echoed (round-trip loss, both directions together).
    pub async fn round(
        &self,
        to: SocketAddr,
        n: u32,
        spacing: Duration,
        wait: Duration,
    ) -> Option<f64> {
        let n = n.clamp(1, 10_000);
        let round = self.next_round.fetch_add(1, Ordering::Relaxed);
        self.rounds
            .lock()
            .ok()?
            .insert(round, vec![false; n as usize]);
        let mut tick = tokio::time::interval(spacing.max(Duration::from_millis(1)));
        for seq in 0..n {
            tick.tick().await;
            let p = Packet {
                echo: false,
                round,
                seq,
            }
            .encode(&self.key);
            if self.socket.send_to(&p, to).await.is_err() {
                break;
            }
        }
        tokio::time::sleep(wait).await;
        let seen = self.rounds.lock().ok()?.remove(&round)?;
        let got = seen.iter().filter(|s| **s).count();
        // Not one echo while the connection itself is alive means the datagrams cannot reach
        // the peer at all (a relay, a firewall, NAT): that says nothing about loss.
        if got == 0 {
            return None;
        }
        Some(1.0 - got as f64 / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut w = RttWindow::new(100);
        assert_eq!(w.percentiles(), None);
        for ms in 1..=100 {
            w.push(Duration::from_millis(ms));
        }
        let (p50, p95) = w.percentiles().unwrap();
        assert!((p50 - 50.0).abs() < 1e-9 && (p95 - 95.0).abs() < 1e-9);
        w.push(Duration::from_millis(1000));
        assert_eq!(w.len(), 100);
        assert_eq!(w.min(), Some(2.0));
    }

    #[test]
    fn packets_authenticate_and_survive_mutation() {
        let k = ClusterKey::generate().derive(b"loss-probe");
        let other = ClusterKey::generate().derive(b"loss-probe");
        let p = Packet {
            echo: false,
            round: 7,
            seq: 3,
        };
        let b = p.encode(&k);
        assert_eq!(Packet::decode(&b, &k).unwrap(), p);
        assert!(Packet::decode(&b, &other).is_err());
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let mut m = b.to_vec();
            let i = rng.gen_range(0..m.len());
            m[i] ^= rng.gen_range(1..=255u8);
            assert!(Packet::decode(&m, &k).is_err());
            m.truncate(rng.gen_range(0..=m.len()));
            let _ = Packet::decode(&m, &k);
        }
    }

    #[test]
    fn loopback_round_sees_no_loss() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let key = ClusterKey::generate();
            let a = UdpProbe::bind(&key).await.unwrap();
            let b = UdpProbe::bind(&key).await.unwrap();
            let to: SocketAddr = ([127, 0, 0, 1], b.port()).into();
            tokio::spawn(a.clone().serve(|| {}));
            tokio::spawn(b.clone().serve(|| {}));
            let loss = a
                .round(to, 20, Duration::from_millis(1), Duration::from_millis(200))
                .await
                .unwrap();
            assert_eq!(loss, 0.0);
            // A probe keyed for another cluster gets no echo at all, which reads as "cannot
            // measure", not as a dead link.
            let c = UdpProbe::bind(&ClusterKey::generate()).await.unwrap();
            tokio::spawn(c.clone().serve(|| {}));
            let loss = c
                .round(to, 5, Duration::from_millis(1), Duration::from_millis(100))
                .await;
            assert_eq!(loss, None);
        });
    }
}
