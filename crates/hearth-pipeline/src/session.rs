//! The owner's side: a node that drives sequences through an instance's stages. It opens a
//! sequence on the first stage (which passes it on), feeds positions, and waits for the last
//! stage's token; deciding when to stop (end tokens, `max_tokens`, stop strings, a client that
//! left) stays with the owner, so stages know nothing of requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_engine::SamplerConfig;

use crate::error::SessionError;
use crate::handler::Outbox;
use crate::protocol::{Header, Hidden, Message, SequenceKey};

enum Reply {
    Token(u32),
    Failed(String),
}

/// Routes answers to the sessions waiting for them. One per node.
pub struct Owner {
    node: String,
    out: Arc<dyn Outbox>,
    salt: u64,
    next: AtomicU64,
    waiting: Mutex<HashMap<SequenceKey, mpsc::Sender<Reply>>>,
}

/// Where a sequence goes: the instance and the node of its first stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub instance: String,
    pub first: String,
}

impl Owner {
    /// `node` is this node's id, where stages send tokens; `salt` keeps sequence keys of
    /// different owners (and restarts of one) apart.
    pub fn new(node: String, out: Arc<dyn Outbox>, salt: u64) -> Arc<Owner> {
        Arc::new(Owner {
            node,
            out,
            salt,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Hands an answer to its session. Returns `false` for answers nobody waits for (a
    /// session that ended, or a message that is not an answer).
    pub fn deliver(&self, msg: Message) -> bool {
        let (key, reply) = match msg {
            Message::Token { sequence, token } => (sequence, Reply::Token(token)),
            Message::Failed { sequence, reason } => (sequence, Reply::Failed(reason)),
            _ => return false,
        };
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.get(&key).is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.len())
    }

    /// Opens a sequence on `route`. `draws` is the number of samples already made for this
    /// sequence elsewhere (0 for a new one).
    pub fn open(self: &Arc<Self>, route: Route, sampling: SamplerConfig, draws: u64) -> Session {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = self.salt.rotate_left(32) ^ n;
        let (tx, rx) = mpsc::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, tx);
        let header = Header {
            instance: route.instance.clone(),
            sequence: key,
            owner: self.node.clone(),
        };
        self.out.send(
            &route.first,
            Message::Open {
                header: header.clone(),
                sampling,
                draws,
            },
        );
        Session {
            owner: Arc::clone(self),
            route,
            header,
            replies: rx,
        }
    }
}

/// One sequence in flight. Dropping it closes the sequence on every stage.
pub struct Session {
    owner: Arc<Owner>,
    route: Route,
    header: Header,
    replies: mpsc::Receiver<Reply>,
}

/// How long to wait for a token, and how to tell that waiting is pointless.
pub struct Wait<'a> {
    pub timeout: Duration,
    /// Polled while waiting; `false` ends the wait with [`SessionError::InstanceGone`].
    pub alive: &'a dyn Fn() -> bool,
}

impl Session {
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Feeds `tokens` (split into batches of `batch`, the size the stages' shards compute at
    /// once, so results match a local run bit for bit) and returns the token sampled after the
    /// last one.
    pub fn feed(
        &mut self,
        tokens: &[u32],
        batch: usize,
        wait: &Wait<'_>,
    ) -> Result<u32, SessionError> {
        let batch = batch.max(1);
        let chunks: Vec<&[u32]> = tokens.chunks(batch).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.owner.out.send(
                &self.route.first,
                Message::Forward {
                    header: self.header.clone(),
                    tokens: chunk.to_vec(),
                    hidden: Hidden::None,
                    sample: i == last,
                },
            );
        }
        self.wait(wait)
    }

    fn wait(&mut self, wait: &Wait<'_>) -> Result<u32, SessionError> {
        let start = Instant::now();
        let slice = Duration::from_millis(50);
        loop {
            match self.replies.recv_timeout(slice) {
                Ok(Reply::Token(t)) => return Ok(t),
                Ok(Reply::Failed(reason)) => return Err(SessionError::StageFailed(reason)),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SessionError::StageFailed("the owner stopped".into()))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !(wait.alive)() {
                        return Err(SessionError::InstanceGone);
                    }
                    if start.elapsed() >= wait.timeout {
                        return Err(SessionError::TimedOut(wait.timeout));
                    }
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.owner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.header.sequence);
        self.owner.out.send(
            &self.route.first,
            Message::Close {
                header: self.header.clone(),
            },
        );
    }
}
