//! Admission: before a peer may use any hearth protocol, both sides prove they hold the cluster
//! key. The dialer opens `/hearth/admit/1` and the handshake runs:
//!
//! ```text
//! I → R  Hello     { version, nonce_i }
//! R → I  Challenge { nonce_r, mac(nonce_i, prover = R, verifier = I) }
//! I → R  Proof     { mac(nonce_r, prover = I, verifier = R), info_I }
//! R → I  Welcome   { info_R }
//! ```
//!
//! Peer ids come from the transport (TLS 1.3 / Noise), so they are authenticated; the MACs add
//! "and holds the key". The caller applies the timeout.

pub mod protocol;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use rand::RngCore;

use crate::error::FrameError;
use crate::frame::{read_frame, write_frame};
use crate::key::ClusterKey;
use protocol::{Challenge, Hello, NodeInfo, Proof, MAX_FRAME, NONCE_LEN, VERSION};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/admit/1");

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("peer's proof of the cluster key is wrong")]
    BadProof,
    #[error("peer closed the handshake (it rejected our proof, or is of another cluster)")]
    Closed,
    #[error("unsupported admission version {0}")]
    Version(u8),
    #[error("handshake message: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake timed out")]
    Timeout,
    #[error("cannot open admission stream: {0}")]
    Open(String),
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

async fn next<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, AdmitError> {
    read_frame(s, MAX_FRAME).await?.ok_or(AdmitError::Closed)
}

/// Dialer side. Returns the responder's info once both proofs have checked out.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
    local: &PeerId,
    remote: &PeerId,
    info: &NodeInfo,
) -> Result<NodeInfo, AdmitError> {
    let n_i = nonce();
    write_frame(
        s,
        &Hello {
            version: VERSION,
            nonce: n_i,
        }
        .encode(),
    )
    .await?;
    let ch = Challenge::decode(&next(s).await?)?;
    if !protocol::verify(key, &n_i, remote, local, &ch.proof) {
        let _ = s.close().await;
        return Err(AdmitError::BadProof);
    }
    let p = Proof {
        proof: protocol::proof(key, &ch.nonce, local, remote),
        info: info.clone(),
    };
    write_frame(s, &p.encode()).await?;
    let welcome = NodeInfo::decode(&next(s).await?)?;
    let _ = s.close().await;
    Ok(welcome)
}

/// Listener side. Returns the initiator's info once its proof has checked out.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
    local: &PeerId,
    remote: &PeerId,
    info: &NodeInfo,
) -> Result<NodeInfo, AdmitError> {
    let hello = Hello::decode(&next(s).await?)?;
    if hello.version != VERSION {
        return Err(AdmitError::Version(hello.version));
    }
    let n_r = nonce();
    let ch = Challenge {
        nonce: n_r,
        proof: protocol::proof(key, &hello.nonce, local, remote),
    };
    write_frame(s, &ch.encode()).await?;
    let p = Proof::decode(&next(s).await?)?;
    if !protocol::verify(key, &n_r, remote, local, &p.proof) {
        let _ = s.close().await;
        return Err(AdmitError::BadProof);
    }
    write_frame(s, &info.encode()).await?;
    let _ = s.close().await;
    Ok(p.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (tokio_util_compat::Duplex, tokio_util_compat::Duplex) {
        tokio_util_compat::duplex()
    }

    /// In-memory duplex over futures-io, enough for the handshake tests.
    mod tokio_util_compat {
        use futures::io::{AsyncRead, AsyncWrite};
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Duplex {
            rx: futures::channel::mpsc::Receiver<Vec<u8>>,
            tx: futures::channel::mpsc::Sender<Vec<u8>>,
            buf: Vec<u8>,
        }

        pub fn duplex() -> (Duplex, Duplex) {
            let (t1, r1) = futures::channel::mpsc::channel(16);
            let (t2, r2) = futures::channel::mpsc::channel(16);
            (
                Duplex {
                    rx: r1,
                    tx: t2,
                    buf: vec![],
                },
                Duplex {
                    rx: r2,
                    tx: t1,
                    buf: vec![],
                },
            )
        }

        impl AsyncRead for Duplex {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                out: &mut [u8],
            ) -> Poll<std::io::Result<usize>> {
                use futures::Stream;
                while self.buf.is_empty() {
                    match Pin::new(&mut self.rx).poll_next(cx) {
                        Poll::Ready(Some(v)) => self.buf = v,
                        Poll::Ready(None) => return Poll::Ready(Ok(0)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                Poll::Ready(Ok(n))
            }
        }

        impl AsyncWrite for Duplex {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                b: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                let _ = self.tx.try_send(b.to_vec());
                Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                self.tx.close_channel();
                Poll::Ready(Ok(()))
            }
        }
    }

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            instance: 1,
            probe_port: 2,
            name: name.into(),
        }
    }

    #[test]
    fn same_key_admits_both_ways_and_wrong_key_fails_both() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = (PeerId::random(), PeerId::random());
            let k = ClusterKey::generate();
            let (ia, ib) = (info("a"), info("b"));
            let (mut s1, mut s2) = pair();
            let (r1, r2) = futures::join!(
                initiate(&mut s1, &k, &a, &b, &ia),
                respond(&mut s2, &k, &b, &a, &ib)
            );
            assert_eq!(r1.unwrap().name, "b");
            assert_eq!(r2.unwrap().name, "a");

            let (mut s1, mut s2) = pair();
            let other = ClusterKey::generate();
            let (r1, r2) = futures::join!(
                initiate(&mut s1, &other, &a, &b, &ia),
                respond(&mut s2, &k, &b, &a, &ib)
            );
            assert!(matches!(r1, Err(AdmitError::BadProof)));
            assert!(r2.is_err());
        });
    }
}
