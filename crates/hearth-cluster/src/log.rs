//! The bounded ring of recently applied events that every member keeps, so that any member can
//! serve a replay to a peer that fell behind (and a new coordinator can catch up from anyone).

use std::collections::VecDeque;

use crate::wire::OrderedEntry;

/// How a `CatchUp` request can be answered from this log.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayAnswer {
    /// The requester already holds exactly this state.
    UpToDate,
    /// The requester's history matches; these entries follow it (at most the requested number).
    Entries(Vec<OrderedEntry>),
    /// The requested point is older than the ring, or the requester is ahead of this node, or
    /// its state at that point differs from ours (another history): only a snapshot helps.
    NotReplayable,
}

#[derive(Debug, Clone)]
pub struct ReplayLog {
    capacity: usize,
    entries: VecDeque<OrderedEntry>,
}

impl ReplayLog {
    pub fn new(capacity: usize) -> Self {
        ReplayLog {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
        }
    }

    pub fn push(&mut self, entry: OrderedEntry) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Forgets everything: after adopting a snapshot the old entries belong to another history.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn entries(&self) -> impl Iterator<Item = &OrderedEntry> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Answers "from `from_seq` on, my state before it hashes to `have_hash`" for a node whose
    /// own state is at `last_seq` with hash `hash`.
    pub fn answer(
        &self,
        from_seq: u64,
        have_hash: u64,
        last_seq: u64,
        hash: u64,
        max_entries: usize,
    ) -> ReplayAnswer {
        let before = from_seq.saturating_sub(1);
        if from_seq == 0 || before > last_seq {
            return ReplayAnswer::NotReplayable;
        }
        if before == last_seq {
            return if have_hash == hash {
                ReplayAnswer::UpToDate
            } else {
                ReplayAnswer::NotReplayable
            };
        }
        let Some(first) = self.entries.front() else {
            return ReplayAnswer::NotReplayable;
        };
        let first_seq = first.event.seq;
        if from_seq < first_seq {
            return ReplayAnswer::NotReplayable;
        }
        // Entries are consecutive, so the index follows from the sequence number.
        let idx = (from_seq - first_seq) as usize;
        match self.entries.get(idx) {
            Some(e) if e.event.seq == from_seq && e.prev_hash == have_hash => {
                ReplayAnswer::Entries(
                    self.entries
                        .iter()
                        .skip(idx)
                        .take(max_entries.max(1))
                        .cloned()
                        .collect(),
                )
            }
            _ => ReplayAnswer::NotReplayable,
        }
    }
}
