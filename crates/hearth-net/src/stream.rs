//! Data streams for bulk transfers (tensors, file chunks): length-prefixed frames over one
//! multiplexed stream. Writes wait for the transport's flow control, which is the back-pressure.

use std::fmt;

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream, StreamProtocol};

use crate::error::NetError;
use crate::frame::{read_frame, write_frame};

pub const DATA_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/data/1");

pub struct DataStream {
    peer: PeerId,
    inner: Stream,
    max_frame: usize,
}

impl fmt::Debug for DataStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataStream")
            .field("peer", &self.peer)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl DataStream {
    pub(crate) fn new(peer: PeerId, inner: Stream, max_frame: usize) -> Self {
        Self {
            peer,
            inner,
            max_frame,
        }
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Largest frame this side sends or accepts ([`crate::Limits::max_frame_bytes`]), so that
    /// protocols on top can size their messages to fit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sends one frame; returns once the transport has taken it.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), NetError> {
        if payload.len() > self.max_frame {
            return Err(NetError::TooLarge {
                size: payload.len(),
                limit: self.max_frame,
            });
        }
        Ok(write_frame(&mut self.inner, payload).await?)
    }

    /// Next frame, or `None` when the peer closed the stream. An oversized or truncated frame is
    /// an error; the stream is unusable after it.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        Ok(read_frame(&mut self.inner, self.max_frame).await?)
    }

    pub async fn close(mut self) -> Result<(), NetError> {
        self.inner.close().await.map_err(|e| NetError::Stream {
            peer: self.peer,
            reason: e.to_string(),
        })
    }
}
