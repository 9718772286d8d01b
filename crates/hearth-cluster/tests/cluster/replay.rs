//! The replay ring: what it can answer from, and when only a snapshot helps.

use hearth_cluster::log::{ReplayAnswer, ReplayLog};
use hearth_cluster::{apply_in_place, ClusterState, Event, OrderedEntry, SequencedEvent};

use crate::sim::node_id;

/// A ring of `cap` over a log of `n` events; also the hash after each event (index = seq).
fn ring(cap: usize, n: u64) -> (ReplayLog, ClusterState, Vec<u64>) {
    let mut log = ReplayLog::new(cap);
    let mut s = ClusterState::default();
    let mut hashes = vec![s.state_hash()];
    for seq in 1..=n {
        let event = if seq == 1 {
            Event::CoordinatorChanged {
                coordinator: node_id(0),
                epoch: 1,
            }
        } else {
            Event::NodeJoined {
                node: node_id(seq as usize),
                name: String::new(),
                addresses: vec![],
                incarnation: 1,
            }
        };
        let ev = SequencedEvent {
            epoch: 1,
            seq,
            at_ms: seq,
            event,
        };
        let prev_hash = s.state_hash();
        apply_in_place(&mut s, &ev).expect("valid");
        log.push(OrderedEntry {
            prev_hash,
            event: ev,
        });
        hashes.push(s.state_hash());
    }
    (log, s, hashes)
}

#[test]
fn replay_serves_matching_histories_and_refuses_the_rest() {
    let (log, s, h) = ring(8, 20);
    assert_eq!(log.len(), 8);
    let last = s.last_seq;
    let hash = s.state_hash();
    // Within the ring, same history: the entries that follow.
    match log.answer(15, h[14], last, hash, 100) {
        ReplayAnswer::Entries(e) => {
            assert_eq!(e.first().map(|e| e.event.seq), Some(15));
            assert_eq!(e.len(), 6);
        }
        other => panic!("expected entries, got {other:?}"),
    }
    // Bounded batch.
    assert!(
        matches!(log.answer(15, h[14], last, hash, 2), ReplayAnswer::Entries(e) if e.len() == 2)
    );
    assert_eq!(
        log.answer(21, hash, last, hash, 100),
        ReplayAnswer::UpToDate
    );
    // Another history at that point, older than the ring, or ahead of us: a snapshot.
    assert_eq!(
        log.answer(15, h[3], last, hash, 100),
        ReplayAnswer::NotReplayable
    );
    assert_eq!(
        log.answer(5, h[4], last, hash, 100),
        ReplayAnswer::NotReplayable
    );
    assert_eq!(
        log.answer(30, 0, last, hash, 100),
        ReplayAnswer::NotReplayable
    );
    assert_eq!(
        log.answer(21, 1, last, hash, 100),
        ReplayAnswer::NotReplayable
    );
    assert_eq!(
        log.answer(0, 0, last, hash, 100),
        ReplayAnswer::NotReplayable
    );
}
