//! Wire messages of the admission handshake and the MAC that binds a proof to both peer ids.
//! All decoders are total: any byte string gives a value or an error, never a panic.

use hmac::Mac;
use libp2p::PeerId;

use crate::config::MAX_NAME_LEN;
use crate::error::FrameError;
use crate::key::{ClusterKey, HmacSha256};

pub const VERSION: u8 = 1;
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
/// No admission frame is anywhere near this; it bounds what an unadmitted peer can make us read.
pub const MAX_FRAME: usize = 256;
const LABEL: &[u8] = b"hearth-admit-v1";

/// `HMAC-SHA256(k_admit, label ‖ nonce ‖ prover ‖ verifier)`. Binding both ids means a proof
/// captured on one connection is worthless on any other pairing, and the verifier's fresh nonce
/// makes it worthless on a later connection of the same pair.
pub fn proof(
    key: &ClusterKey,
    nonce: &[u8; NONCE_LEN],
    prover: &PeerId,
    verifier: &PeerId,
) -> [u8; MAC_LEN] {
    mac(key, nonce, prover, verifier)
        .finalize()
        .into_bytes()
        .into()
}

pub fn verify(
    key: &ClusterKey,
    nonce: &[u8; NONCE_LEN],
    prover: &PeerId,
    verifier: &PeerId,
    tag: &[u8],
) -> bool {
    // `verify_slice` compares in constant time.
    mac(key, nonce, prover, verifier).verify_slice(tag).is_ok()
}

fn mac(
    key: &ClusterKey,
    nonce: &[u8; NONCE_LEN],
    prover: &PeerId,
    verifier: &PeerId,
) -> HmacSha256 {
    let k = key.derive(b"admit");
    let mut m = <HmacSha256 as Mac>::new_from_slice(&k).expect("HMAC accepts any key length");
    m.update(LABEL);
    m.update(nonce);
    let p = prover.to_bytes();
    let v = verifier.to_bytes();
    // Length-prefix the ids so that no two (prover, verifier) pairs share an encoding.
    m.update(&[p.len() as u8]);
    m.update(&p);
    m.update(&[v.len() as u8]);
    m.update(&v);
    m
}

/// Initiator → responder: protocol version and the initiator's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.version];
        v.extend_from_slice(&self.nonce);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        if b.len() != 1 + NONCE_LEN {
            return Err(FrameError::Malformed("hello length"));
        }
        let nonce = b[1..]
            .try_into()
            .map_err(|_| FrameError::Malformed("hello nonce"))?;
        Ok(Self {
            version: b[0],
            nonce,
        })
    }
}

/// Responder → initiator: the responder's proof over the initiator's nonce, and its own
/// challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: [u8; NONCE_LEN],
    pub proof: [u8; MAC_LEN],
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.nonce.to_vec();
        v.extend_from_slice(&self.proof);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        if b.len() != NONCE_LEN + MAC_LEN {
            return Err(FrameError::Malformed("challenge length"));
        }
        let nonce = b[..NONCE_LEN]
            .try_into()
            .map_err(|_| FrameError::Malformed("challenge nonce"))?;
        let proof = b[NONCE_LEN..]
            .try_into()
            .map_err(|_| FrameError::Malformed("challenge proof"))?;
        Ok(Self { nonce, proof })
    }
}

/// What a node tells an admitted peer about itself: sent by the initiator with its proof and by
/// the responder once that proof checks out, so neither side reveals it to a non-member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Random per process start: a changed value on a known PeerId means the peer restarted.
    pub instance: u64,
    /// UDP port of the loss-probe echo, 0 when probing is off.
    pub probe_port: u16,
    pub name: String,
}

impl NodeInfo {
    pub fn encode(&self) -> Vec<u8> {
        let name = truncate_utf8(&self.name, MAX_NAME_LEN);
        let mut v = Vec::with_capacity(11 + name.len());
        v.extend_from_slice(&self.instance.to_be_bytes());
        v.extend_from_slice(&self.probe_port.to_be_bytes());
        v.push(name.len() as u8);
        v.extend_from_slice(name.as_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        if b.len() < 11 {
            return Err(FrameError::Malformed("info length"));
        }
        let instance = u64::from_be_bytes(
            b[..8]
                .try_into()
                .map_err(|_| FrameError::Malformed("instance"))?,
        );
        let probe_port = u16::from_be_bytes([b[8], b[9]]);
        let n = b[10] as usize;
        if n > MAX_NAME_LEN || b.len() != 11 + n {
            return Err(FrameError::Malformed("info name length"));
        }
        let name =
            std::str::from_utf8(&b[11..]).map_err(|_| FrameError::Malformed("info name utf-8"))?;
        Ok(Self {
            instance,
            probe_port,
            name: name.to_owned(),
        })
    }
}

/// Initiator → responder: proof over the responder's nonce, then the initiator's info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub proof: [u8; MAC_LEN],
    pub info: NodeInfo,
}

impl Proof {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.proof.to_vec();
        v.extend_from_slice(&self.info.encode());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        if b.len() < MAC_LEN {
            return Err(FrameError::Malformed("proof length"));
        }
        let proof = b[..MAC_LEN]
            .try_into()
            .map_err(|_| FrameError::Malformed("proof"))?;
        Ok(Self {
            proof,
            info: NodeInfo::decode(&b[MAC_LEN..])?,
        })
    }
}

pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn proof_is_bound_to_both_ids_and_key() {
        let k = ClusterKey::generate();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let n = [9u8; NONCE_LEN];
        let t = proof(&k, &n, &a, &b);
        assert!(verify(&k, &n, &a, &b, &t));
        assert!(!verify(&k, &n, &b, &a, &t));
        assert!(!verify(&k, &n, &a, &c, &t));
        assert!(!verify(&k, &[8u8; NONCE_LEN], &a, &b, &t));
        assert!(!verify(&ClusterKey::generate(), &n, &a, &b, &t));
    }

    #[test]
    fn messages_round_trip() {
        let info = NodeInfo {
            instance: 42,
            probe_port: 5000,
            name: "laptöp".into(),
        };
        assert_eq!(NodeInfo::decode(&info.encode()).unwrap(), info);
        let p = Proof {
            proof: [3; MAC_LEN],
            info,
        };
        assert_eq!(Proof::decode(&p.encode()).unwrap(), p);
        let h = Hello {
            version: VERSION,
            nonce: [1; NONCE_LEN],
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let c = Challenge {
            nonce: [1; NONCE_LEN],
            proof: [2; MAC_LEN],
        };
        assert_eq!(Challenge::decode(&c.encode()).unwrap(), c);
        let long = NodeInfo {
            instance: 1,
            probe_port: 1,
            name: "é".repeat(100),
        };
        assert!(NodeInfo::decode(&long.encode()).unwrap().name.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn decoders_survive_random_and_mutated_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let info = NodeInfo {
            instance: 7,
            probe_port: 9,
            name: "node".into(),
        };
        let seeds = [
            Hello {
                version: 1,
                nonce: [5; NONCE_LEN],
            }
            .encode(),
            Challenge {
                nonce: [1; NONCE_LEN],
                proof: [2; MAC_LEN],
            }
            .encode(),
            Proof {
                proof: [4; MAC_LEN],
                info: info.clone(),
            }
            .encode(),
            info.encode(),
        ];
        for i in 0..40_000 {
            let mut b = if i % 4 == 0 {
                (0..rng.gen_range(0..120)).map(|_| rng.gen()).collect()
            } else {
                seeds[i % seeds.len()].clone()
            };
            if !b.is_empty() {
                let j = rng.gen_range(0..b.len());
                b[j] = rng.gen();
            }
            if rng.gen_bool(0.3) {
                b.truncate(rng.gen_range(0..=b.len()));
            }
            let _ = Hello::decode(&b);
            let _ = Challenge::decode(&b);
            let _ = Proof::decode(&b);
            let _ = NodeInfo::decode(&b);
        }
    }
}
