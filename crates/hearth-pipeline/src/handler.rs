//! One stage of an instance: a thread that owns a [`Shard`], takes messages in arrival order
//! from a bounded queue, and sends what follows (hidden states to the next stage, tokens to the
//! sequence's owner) through an [`Outbox`].
//!
//! Messages of different sequences interleave freely, so while one sequence is on the next
//! stage this one already computes another: with several sequences in flight every stage works.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_engine::{LogitRows, Sampler, SequenceId, Shard, ShardInput, ShardOutput};
use tokio::sync::mpsc;

use crate::protocol::{ActDtype, Header, Hidden, Message, SequenceKey};

/// Where a stage's and an owner's messages go. Implementations may block (a full queue is
/// back-pressure); they are called from stage and generator threads, never from async tasks.
pub trait Outbox: Send + Sync + 'static {
    /// Sends `msg` to node `to`. A message that cannot be delivered is dropped (and counted by
    /// the transport): the owner's timeout and the cluster's loss detection take it from there.
    fn send(&self, to: &str, msg: Message);
}

/// What a stage needs besides its shard.
#[derive(Debug, Clone)]
pub struct StageConfig {
    pub instance: String,
    /// Node of the next stage; `None` on the last.
    pub next: Option<String>,
    pub act_dtype: ActDtype,
    /// A sequence untouched this long is dropped (its owner died without closing it).
    pub idle_timeout: Duration,
}

struct Sequence {
    local: SequenceId,
    owner: String,
    /// Only on the last stage.
    sampler: Option<Sampler>,
    last_used: Instant,
}

/// The stage's state; [`StageWorker::handle`] is all of its behaviour, so tests drive it
/// without threads.
pub struct StageWorker {
    shard: Shard,
    config: StageConfig,
    sequences: HashMap<SequenceKey, Sequence>,
    last_sweep: Instant,
}

impl StageWorker {
    pub fn new(shard: Shard, config: StageConfig) -> StageWorker {
        StageWorker {
            shard,
            config,
            sequences: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Sequences currently open on this stage.
    pub fn open_sequences(&self) -> usize {
        self.sequences.len()
    }

    pub fn handle(&mut self, msg: Message, out: &dyn Outbox) {
        self.sweep();
        match msg {
            Message::Open {
                header,
                sampling,
                draws,
            } => {
                self.close(header.sequence);
                let local = match self.shard.new_sequence() {
                    Ok(id) => id,
                    Err(e) => return fail(out, &header, format!("cannot open a sequence: {e}")),
                };
                let sampler = self.shard.is_last().then(|| {
                    let mut s = Sampler::new(sampling.clone());
                    s.skip_draws(draws);
                    s
                });
                self.sequences.insert(
                    header.sequence,
                    Sequence {
                        local,
                        owner: header.owner.clone(),
                        sampler,
                        last_used: Instant::now(),
                    },
                );
                if let Some(next) = &self.config.next {
                    out.send(
                        next,
                        Message::Open {
                            header,
                            sampling,
                            draws,
                        },
                    );
                }
            }
            Message::Forward {
                header,
                tokens,
                hidden,
                sample,
            } => {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.forward(&header, tokens, &hidden, sample, out)
                }));
                let failure = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(reason)) => reason,
                    Err(_) => "the stage's engine failed on this sequence".to_string(),
                };
                self.close(header.sequence);
                fail(out, &header, failure);
            }
            Message::Close { header } => {
                self.close(header.sequence);
                if let Some(next) = &self.config.next {
                    out.send(next, Message::Close { header });
                }
            }
            // Answers travel to owners, not stages; one arriving here was misrouted.
            Message::Token { .. } | Message::Failed { .. } => {}
        }
    }

    fn forward(
        &mut self,
        header: &Header,
        tokens: Vec<u32>,
        hidden: &Hidden,
        sample: bool,
        out: &dyn Outbox,
    ) -> Result<(), String> {
        let seq = self
            .sequences
            .get_mut(&header.sequence)
            .ok_or_else(|| format!("sequence {} is not open on this stage", header.sequence))?;
        seq.last_used = Instant::now();
        let local = seq.local;
        let owner = seq.owner.clone();
        let input_hidden;
        let input = if self.shard.is_first() {
            ShardInput::Tokens(&tokens)
        } else {
            input_hidden = hidden.to_f32();
            ShardInput::Hidden(&input_hidden)
        };
        let output = self
            .shard
            .forward(local, input, LogitRows::Last)
            .map_err(|e| e.to_string())?;
        match output {
            ShardOutput::Hidden(h) => {
                let hidden = self.config.act_dtype.encode(h);
                let next = self
                    .config
                    .next
                    .as_deref()
                    .ok_or("a stage without the last layer has no next stage")?;
                out.send(
                    next,
                    Message::Forward {
                        header: header.clone(),
                        tokens,
                        hidden,
                        sample,
                    },
                );
            }
            ShardOutput::Logits(logits) => {
                let sampler = seq_sampler(&mut self.sequences, header.sequence)?;
                for &t in &tokens {
                    sampler.accept(t);
                }
                if sample {
                    let token = sampler.sample(logits);
                    out.send(
                        &owner,
                        Message::Token {
                            sequence: header.sequence,
                            token,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, key: SequenceKey) {
        if let Some(seq) = self.sequences.remove(&key) {
            self.shard.drop_sequence(seq.local);
        }
    }

    fn sweep(&mut self) {
        if self.last_sweep.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_sweep = Instant::now();
        let timeout = self.config.idle_timeout;
        let stale: Vec<SequenceKey> = self
            .sequences
            .iter()
            .filter(|(_, s)| s.last_used.elapsed() > timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            tracing::info!(sequence = key, "dropping a sequence idle past the timeout");
            self.close(key);
        }
    }
}

fn seq_sampler(
    sequences: &mut HashMap<SequenceKey, Sequence>,
    key: SequenceKey,
) -> Result<&mut Sampler, String> {
    sequences
        .get_mut(&key)
        .and_then(|s| s.sampler.as_mut())
        .ok_or_else(|| "the last stage has no sampler for this sequence".to_string())
}

fn fail(out: &dyn Outbox, header: &Header, reason: String) {
    tracing::warn!(sequence = header.sequence, %reason, "sequence failed on this stage");
    out.send(
        &header.owner,
        Message::Failed {
            sequence: header.sequence,
            reason,
        },
    );
}

/// The sending side of a running stage's queue.
#[derive(Clone)]
pub struct StageHandle {
    queue: mpsc::Sender<Message>,
}

impl StageHandle {
    /// Queues a message, waiting while the queue is full (back-pressure to the sender).
    pub async fn send(&self, msg: Message) -> bool {
        self.queue.send(msg).await.is_ok()
    }

    /// The same from a thread outside the async runtime.
    pub fn blocking_send(&self, msg: Message) -> bool {
        self.queue.blocking_send(msg).is_ok()
    }
}

/// Starts the stage's thread. It ends when every [`StageHandle`] is dropped.
pub fn spawn(
    mut worker: StageWorker,
    out: Arc<dyn Outbox>,
    queue: usize,
) -> std::io::Result<StageHandle> {
    let (tx, mut rx) = mpsc::channel::<Message>(queue.max(1));
    std::thread::Builder::new()
        .name(format!("hearth-stage-{}", worker.config.instance))
        .spawn(move || {
            while let Some(msg) = rx.blocking_recv() {
                worker.handle(msg, out.as_ref());
                if rx.is_empty() {
                    worker.shard.pool().rest();
                }
            }
        })?;
    Ok(StageHandle { queue: tx })
}
