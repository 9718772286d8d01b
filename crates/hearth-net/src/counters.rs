use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the node's counters. Every drop of something a peer sent is counted here, so
/// the binary can show refusals and malformed traffic without reading logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Peers disconnected for failing or not completing admission, or of another cluster.
    pub refused_admission: u64,
    /// Frames or datagrams that did not decode.
    pub dropped_malformed: u64,
    /// Messages or frames over the configured limits.
    pub dropped_oversized: u64,
    /// Messages or streams from peers that are not (yet) admitted.
    pub dropped_unadmitted: u64,
    /// Events not delivered because the caller's event queue was full.
    pub dropped_events: u64,
    pub gossip_in: u64,
    pub gossip_out: u64,
    pub direct_in: u64,
    pub direct_out: u64,
    pub dial_attempts: u64,
    pub admitted: u64,
    /// Lane connections that presented no valid ticket.
    pub refused_lanes: u64,
    pub lanes_accepted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub refused_admission: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_oversized: AtomicU64,
    pub dropped_unadmitted: AtomicU64,
    pub dropped_events: AtomicU64,
    pub gossip_in: AtomicU64,
    pub gossip_out: AtomicU64,
    pub direct_in: AtomicU64,
    pub direct_out: AtomicU64,
    pub dial_attempts: AtomicU64,
    pub admitted: AtomicU64,
    pub refused_lanes: AtomicU64,
    pub lanes_accepted: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl AtomicCounters {
    pub fn snapshot(&self) -> Counters {
        Counters {
            refused_admission: self.refused_admission.load(Relaxed),
            dropped_malformed: self.dropped_malformed.load(Relaxed),
            dropped_oversized: self.dropped_oversized.load(Relaxed),
            dropped_unadmitted: self.dropped_unadmitted.load(Relaxed),
            dropped_events: self.dropped_events.load(Relaxed),
            gossip_in: self.gossip_in.load(Relaxed),
            gossip_out: self.gossip_out.load(Relaxed),
            direct_in: self.direct_in.load(Relaxed),
            direct_out: self.direct_out.load(Relaxed),
            dial_attempts: self.dial_attempts.load(Relaxed),
            admitted: self.admitted.load(Relaxed),
            refused_lanes: self.refused_lanes.load(Relaxed),
            lanes_accepted: self.lanes_accepted.load(Relaxed),
        }
    }
}
