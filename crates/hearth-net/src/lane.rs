//! Lanes: direct TCP connections between admitted peers for small, latency-bound frames
//! (a pipeline's hidden states and tokens), beside the multiplexed libp2p connection.
//!
//! Every frame on a libp2p data stream passes through the swarm's connection task on both
//! sides; on a decode step, which crosses every stage once, those wake-ups cost more than the
//! bytes. A lane is a plain socket that the caller's thread writes and another thread reads,
//! with nothing in between.
//!
//! Lanes add no trust of their own. The initiator asks over the admitted, encrypted libp2p
//! connection ([`LANE_PROTOCOL`]); the responder answers with its lane port, a one-use ticket
//! and a fresh key. The initiator connects, presents the ticket, and from then on every frame
//! is sealed with ChaCha20-Poly1305 under that key with a counting nonce, so a frame that was
//! altered, replayed, reordered or injected fails to open. A lane carries one direction only
//! (initiator to responder); each key seals one lane.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::counters::bump;
use crate::error::{FrameError, NetError};
use crate::frame::{read_frame, write_frame, LEN_PREFIX};
use crate::node::Shared;
use crate::NetEvent;

pub const LANE_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/lane/1");

const KEY_LEN: usize = 32;
const TICKET_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// An offer not taken up by then is forgotten.
const TICKET_LIFETIME: Duration = Duration::from_secs(10);
/// Offers outstanding at once; a peer asking for more is refused rather than stored.
const MAX_OFFERS: usize = 256;
/// How long a new connection has to present its ticket.
const TICKET_WAIT: Duration = Duration::from_secs(5);
/// Connections waiting to present a ticket at once; more are closed at once (and counted), so
/// a flood of idle connections cannot hold unbounded tasks.
const MAX_UNPROVEN: usize = 64;

/// The responder's answer to a lane request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    /// 0 when this node takes no lanes.
    pub port: u16,
    pub ticket: [u8; TICKET_LEN],
    pub key: [u8; KEY_LEN],
}

impl Offer {
    const LEN: usize = 2 + TICKET_LEN + KEY_LEN;

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.port.to_be_bytes());
        v.extend_from_slice(&self.ticket);
        v.extend_from_slice(&self.key);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        if b.len() != Self::LEN {
            return Err(FrameError::Malformed("lane offer length"));
        }
        let port = u16::from_be_bytes([b[0], b[1]]);
        let ticket = b[2..2 + TICKET_LEN]
            .try_into()
            .map_err(|_| FrameError::Malformed("lane ticket"))?;
        let key = b[2 + TICKET_LEN..]
            .try_into()
            .map_err(|_| FrameError::Malformed("lane key"))?;
        Ok(Offer { port, ticket, key })
    }
}

struct Pending {
    peer: PeerId,
    key: [u8; KEY_LEN],
    expires: Instant,
}

/// The responder's side: its listening port and the offers it has made.
pub(crate) struct LaneDesk {
    port: Option<u16>,
    offers: Mutex<HashMap<[u8; TICKET_LEN], Pending>>,
}

impl LaneDesk {
    /// Lanes are on here when there is a port to take them on.
    pub fn enabled(&self) -> bool {
        self.port.is_some()
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn new(port: Option<u16>) -> LaneDesk {
        LaneDesk {
            port,
            offers: Mutex::new(HashMap::new()),
        }
    }

    fn offer(&self, peer: PeerId) -> Offer {
        let Some(port) = self.port else {
            return Offer {
                port: 0,
                ticket: [0; TICKET_LEN],
                key: [0; KEY_LEN],
            };
        };
        let offer = Offer {
            port,
            ticket: rand::random(),
            key: rand::random(),
        };
        if let Ok(mut offers) = self.offers.lock() {
            let now = Instant::now();
            offers.retain(|_, p| p.expires > now);
            if offers.len() >= MAX_OFFERS {
                return Offer { port: 0, ..offer };
            }
            offers.insert(
                offer.ticket,
                Pending {
                    peer,
                    key: offer.key,
                    expires: now + TICKET_LIFETIME,
                },
            );
        }
        offer
    }

    /// The peer and key of a ticket; each ticket is taken once.
    fn redeem(&self, ticket: &[u8; TICKET_LEN]) -> Option<(PeerId, [u8; KEY_LEN])> {
        let p = self.offers.lock().ok()?.remove(ticket)?;
        (p.expires > Instant::now()).then_some((p.peer, p.key))
    }
}

/// Seals or opens the frames of one lane: each frame's nonce is its position in the lane.
struct Sealing {
    key: LessSafeKey,
    next: u64,
}

impl Sealing {
    fn new(key: &[u8; KEY_LEN]) -> Sealing {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key");
        Sealing {
            key: LessSafeKey::new(unbound),
            next: 0,
        }
    }

    fn nonce(&mut self) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[NONCE_LEN - 8..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        Nonce::assume_unique_for_key(n)
    }
}

/// The initiator's end: blocking writes of sealed frames, from the caller's thread.
pub struct LaneSender {
    peer: PeerId,
    socket: TcpStream,
    sealing: Sealing,
    max_frame: usize,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LaneSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSender")
            .field("peer", &self.peer)
            .finish()
    }
}

impl LaneSender {
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Sends one frame; blocks while the peer's socket buffer is full (back-pressure).
    pub fn send(&mut self, payload: &[u8]) -> Result<(), NetError> {
        if payload.len() > self.max_frame {
            return Err(NetError::TooLarge {
                size: payload.len(),
                limit: self.max_frame,
            });
        }
        let sealed = payload.len() + TAG_LEN;
        self.buf.clear();
        self.buf.extend_from_slice(&(sealed as u32).to_be_bytes());
        self.buf.extend_from_slice(payload);
        let nonce = self.sealing.nonce();
        let tag = self
            .sealing
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut self.buf[LEN_PREFIX..])
            .map_err(|_| FrameError::Malformed("lane frame could not be sealed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.socket
            .write_all(&self.buf)
            .map_err(|e| NetError::Frame(FrameError::Io(e)))
    }
}

/// The responder's end: blocking reads, for a thread of the caller's.
pub struct LaneReceiver {
    peer: PeerId,
    socket: TcpStream,
    sealing: Sealing,
    max_frame: usize,
}

impl std::fmt::Debug for LaneReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneReceiver")
            .field("peer", &self.peer)
            .finish()
    }
}

impl LaneReceiver {
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The next frame, or `None` when the peer closed the lane. A frame that is too large or
    /// fails to open is an error and the lane is unusable after it.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut prefix = [0u8; LEN_PREFIX];
        match self.socket.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(FrameError::Io(e)),
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame + TAG_LEN {
            return Err(FrameError::TooLarge {
                size: len,
                limit: self.max_frame + TAG_LEN,
            });
        }
        if len < TAG_LEN {
            return Err(FrameError::Malformed("lane frame shorter than its tag"));
        }
        let mut body = vec![0u8; len];
        self.socket
            .read_exact(&mut body)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                _ => FrameError::Io(e),
            })?;
        let nonce = self.sealing.nonce();
        let plain = self
            .sealing
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .map_err(|_| FrameError::Malformed("lane frame failed authentication"))?
            .len();
        body.truncate(plain);
        Ok(Some(body))
    }

    /// Ends the lane from this side. Unlike dropping it, this also ends it for the copies
    /// [`LaneReceiver::closer`] handed out, and the sender sees its writes fail.
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// A handle that ends this lane from another thread: a blocked [`LaneReceiver::recv`]
    /// then returns. For a caller that keeps one lane per peer and closes the one a newer
    /// lane replaces.
    pub fn closer(&self) -> std::io::Result<LaneCloser> {
        Ok(LaneCloser(self.socket.try_clone()?))
    }
}

/// Ends a lane from outside its reading thread ([`LaneReceiver::closer`]).
#[derive(Debug)]
pub struct LaneCloser(TcpStream);

impl LaneCloser {
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Answers lane requests from admitted peers.
pub(crate) async fn serve_offers(
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
) {
    while let Some((peer, mut s)) = incoming.next().await {
        if !shared.is_admitted(&peer) {
            bump(&shared.counters.dropped_unadmitted);
            continue;
        }
        let offer = shared.lanes.offer(peer);
        tokio::spawn(async move {
            let sent = tokio::time::timeout(TICKET_WAIT, async {
                write_frame(&mut s, &offer.encode()).await?;
                s.close().await.map_err(FrameError::Io)
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!(%peer, "lane offer not delivered");
            }
        });
    }
}

/// Takes connections on the lane port; each must present a ticket this node offered.
pub(crate) async fn accept_connections(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let unproven = Arc::new(tokio::sync::Semaphore::new(MAX_UNPROVEN));
    loop {
        let (mut socket, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin on the error.
                tracing::debug!(error = %e, "lane listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&unproven).try_acquire_owned() else {
            bump(&shared.counters.refused_lanes);
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut ticket = [0u8; TICKET_LEN];
            let read = tokio::time::timeout(TICKET_WAIT, socket.read_exact(&mut ticket)).await;
            let redeemed = match read {
                Ok(Ok(_)) => shared.lanes.redeem(&ticket),
                _ => None,
            };
            drop(permit);
            let Some((peer, key)) = redeemed else {
                bump(&shared.counters.refused_lanes);
                tracing::debug!(%from, "lane connection without a valid ticket; closed");
                return;
            };
            let Ok(socket) = socket.into_std() else {
                return;
            };
            if socket.set_nonblocking(false).is_err() || socket.set_nodelay(true).is_err() {
                return;
            }
            bump(&shared.counters.lanes_accepted);
            shared.emit(NetEvent::Lane {
                peer,
                lane: Box::new(LaneReceiver {
                    peer,
                    socket,
                    sealing: Sealing::new(&key),
                    max_frame: shared.limits.max_frame_bytes,
                }),
            });
        });
    }
}

/// The initiator's half of opening a lane: ask over `stream`, connect to `ip`, show the ticket.
pub(crate) async fn open(
    peer: PeerId,
    ip: IpAddr,
    mut stream: libp2p::Stream,
    max_frame: usize,
) -> Result<LaneSender, NetError> {
    let fail = |reason: String| NetError::Stream { peer, reason };
    let answer = read_frame(&mut stream, Offer::LEN)
        .await?
        .ok_or_else(|| fail("the peer closed the lane request".into()))?;
    let offer = Offer::decode(&answer)?;
    if offer.port == 0 {
        return Err(fail("the peer takes no lanes".into()));
    }
    let mut socket = tokio::net::TcpStream::connect(SocketAddr::new(ip, offer.port))
        .await
        .map_err(|e| fail(format!("lane connection: {e}")))?;
    socket
        .write_all(&offer.ticket)
        .await
        .map_err(|e| fail(format!("lane ticket: {e}")))?;
    let socket = socket
        .into_std()
        .map_err(|e| fail(format!("lane socket: {e}")))?;
    socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_nodelay(true))
        .map_err(|e| fail(format!("lane socket: {e}")))?;
    Ok(LaneSender {
        peer,
        socket,
        sealing: Sealing::new(&offer.key),
        max_frame,
        buf: Vec::new(),
    })
}

/// The address to take lanes on: the host of the first IP listen address, so a node that
/// listens on loopback only also takes lanes on loopback only.
pub(crate) fn listen_ip(listen: &[libp2p::Multiaddr]) -> IpAddr {
    listen
        .iter()
        .find_map(crate::node::ip_of)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: [u8; KEY_LEN]) -> (LaneSender, LaneReceiver) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        let peer = PeerId::random();
        (
            LaneSender {
                peer,
                socket: a,
                sealing: Sealing::new(&key),
                max_frame: 1024,
                buf: Vec::new(),
            },
            LaneReceiver {
                peer,
                socket: b,
                sealing: Sealing::new(&key),
                max_frame: 1024,
            },
        )
    }

    #[test]
    fn frames_arrive_in_order_and_intact() {
        let (mut tx, mut rx) = pair([7; KEY_LEN]);
        for i in 0..50u32 {
            tx.send(&vec![i as u8; i as usize * 3]).unwrap();
        }
        for i in 0..50u32 {
            assert_eq!(rx.recv().unwrap().unwrap(), vec![i as u8; i as usize * 3]);
        }
        drop(tx);
        assert!(rx.recv().unwrap().is_none());
    }

    #[test]
    fn a_frame_under_another_key_fails_to_open() {
        let (mut tx, mut rx) = pair([7; KEY_LEN]);
        rx.sealing = Sealing::new(&[8; KEY_LEN]);
        tx.send(b"hidden state").unwrap();
        assert!(matches!(rx.recv(), Err(FrameError::Malformed(_))));
    }

    /// What `payload` looks like on the wire as the lane's first frame under `key`.
    fn wire_frame(key: [u8; KEY_LEN], payload: &[u8]) -> Vec<u8> {
        let (mut tx, rx) = pair(key);
        tx.send(payload).unwrap();
        let mut frame = vec![0u8; LEN_PREFIX + payload.len() + TAG_LEN];
        (&rx.socket).read_exact(&mut frame).unwrap();
        frame
    }

    #[test]
    fn altered_replayed_or_oversized_frames_are_refused() {
        let key = [1; KEY_LEN];
        let frame = wire_frame(key, b"first");

        let mut altered = frame.clone();
        altered[LEN_PREFIX] ^= 1;
        let (mut tx, mut rx) = pair(key);
        tx.socket.write_all(&altered).unwrap();
        assert!(matches!(rx.recv(), Err(FrameError::Malformed(_))));

        // The same sealed frame twice: the copy sits at the wrong position.
        let (mut tx, mut rx) = pair(key);
        tx.socket.write_all(&frame).unwrap();
        tx.socket.write_all(&frame).unwrap();
        assert_eq!(rx.recv().unwrap().unwrap(), b"first");
        assert!(matches!(rx.recv(), Err(FrameError::Malformed(_))));

        // Refused from the prefix alone, before the body is read or allocated.
        let (mut tx, mut rx) = pair(key);
        tx.socket.write_all(&4096u32.to_be_bytes()).unwrap();
        assert!(matches!(rx.recv(), Err(FrameError::TooLarge { .. })));
        assert!(matches!(
            tx.send(&[0; 2048]),
            Err(NetError::TooLarge { .. })
        ));
    }

    #[test]
    fn offers_round_trip_and_tickets_are_taken_once() {
        let desk = LaneDesk::new(Some(4000));
        let peer = PeerId::random();
        let offer = desk.offer(peer);
        assert_eq!(Offer::decode(&offer.encode()).unwrap(), offer);
        assert!(Offer::decode(&offer.encode()[1..]).is_err());
        assert_eq!(desk.redeem(&offer.ticket), Some((peer, offer.key)));
        assert_eq!(desk.redeem(&offer.ticket), None);
        assert_eq!(LaneDesk::new(None).offer(peer).port, 0);
    }

    #[test]
    fn random_and_mutated_input_is_refused_without_panicking() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let offer = LaneDesk::new(Some(1)).offer(PeerId::random()).encode();
        for _ in 0..5000 {
            let mut b = offer.clone();
            match rng.gen_range(0..3) {
                0 => b.truncate(rng.gen_range(0..b.len())),
                1 => b.push(rng.gen()),
                _ => {
                    let i = rng.gen_range(0..b.len());
                    b[i] ^= 1 << rng.gen_range(0..8);
                }
            }
            // A same-length mutation is a valid offer of another port, ticket or key.
            assert_eq!(Offer::decode(&b).is_ok(), b.len() == Offer::LEN);
        }
        // Random bytes on a lane: nothing opens as a frame.
        for round in 0..200u64 {
            let (tx, mut rx) = pair([3; KEY_LEN]);
            let mut raw = tx.socket.try_clone().unwrap();
            let mut junk = vec![0u8; rng.gen_range(1..600)];
            rng.fill(&mut junk[..]);
            if round % 2 == 0 {
                // A plausible length, so the body is read and must fail authentication.
                let len = (junk.len() as u32).saturating_sub(4).max(TAG_LEN as u32);
                junk[..4].copy_from_slice(&len.to_be_bytes());
            }
            raw.write_all(&junk).unwrap();
            drop(raw);
            drop(tx);
            // An error, or an end (fewer bytes than a length prefix), never a frame.
            assert!(
                !matches!(rx.recv(), Ok(Some(_))),
                "round {round}: junk opened as a frame"
            );
        }
    }
}
