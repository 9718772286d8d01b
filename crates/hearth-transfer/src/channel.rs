//! The transport the protocol runs over: anything that moves whole frames both ways.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

/// Why a channel could not move a frame.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the other side closed the channel")]
    Closed,
    #[error(transparent)]
    Net(#[from] hearth_net::NetError),
    /// For transports and sources defined outside this crate.
    #[error("{0}")]
    Other(String),
}

/// A bidirectional, ordered, framed byte channel with back-pressure.
///
/// `recv` need not be cancel-safe: the protocol never drops a pending `recv` and keeps using
/// the channel afterwards.
pub trait FrameChannel: Send {
    /// Sends one frame of at most [`FrameChannel::max_frame`] bytes; waits for flow control.
    fn send(&mut self, frame: &[u8]) -> impl Future<Output = Result<(), ChannelError>> + Send;

    /// The next frame, or `None` once the other side has closed.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, ChannelError>> + Send;

    /// Largest frame this side sends or accepts.
    fn max_frame(&self) -> usize;
}

impl FrameChannel for hearth_net::DataStream {
    async fn send(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        Ok(hearth_net::DataStream::send(self, frame).await?)
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        Ok(hearth_net::DataStream::recv(self).await?)
    }

    fn max_frame(&self) -> usize {
        hearth_net::DataStream::max_frame(self)
    }
}

/// One end of an in-process channel made by [`memory_pair`].
#[derive(Debug)]
pub struct MemoryChannel {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    max_frame: usize,
}

/// Two connected ends, each direction holding up to `capacity` frames. The fetcher sends up to
/// its window of small requests before it reads, so `capacity` should be at least the window:
/// a real transport buffers such requests too.
pub fn memory_pair(capacity: usize, max_frame: usize) -> (MemoryChannel, MemoryChannel) {
    let (a_tx, b_rx) = mpsc::channel(capacity.max(1));
    let (b_tx, a_rx) = mpsc::channel(capacity.max(1));
    (
        MemoryChannel {
            tx: a_tx,
            rx: a_rx,
            max_frame,
        },
        MemoryChannel {
            tx: b_tx,
            rx: b_rx,
            max_frame,
        },
    )
}

impl FrameChannel for MemoryChannel {
    async fn send(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        if frame.len() > self.max_frame {
            return Err(ChannelError::TooLarge {
                size: frame.len(),
                limit: self.max_frame,
            });
        }
        self.tx
            .send(frame.to_vec())
            .await
            .map_err(|_| ChannelError::Closed)
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        Ok(self.rx.recv().await)
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }
}

type OpenFuture<C> = Pin<Box<dyn Future<Output = Result<C, ChannelError>> + Send>>;

/// A peer that has the file: a name for reports and a way to open a fresh channel to it. The
/// fetcher opens a new channel after a failure, so one broken stream does not end a fetch.
pub struct Source<C> {
    name: String,
    open: Box<dyn FnMut() -> OpenFuture<C> + Send>,
}

impl<C> std::fmt::Debug for Source<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

impl<C: FrameChannel> Source<C> {
    /// `open` is called for every (re)connection, e.g.
    /// `move || { let net = net.clone(); async move { Ok(net.open_stream(peer).await?) } }`.
    pub fn new<F, Fut>(name: impl Into<String>, mut open: F) -> Source<C>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<C, ChannelError>> + Send + 'static,
    {
        Source {
            name: name.into(),
            open: Box::new(move || Box::pin(open())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn open(&mut self) -> OpenFuture<C> {
        (self.open)()
    }
}
