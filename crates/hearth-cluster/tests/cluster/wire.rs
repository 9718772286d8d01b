//! Hostile bytes: random, truncated, mutated, oversized, other versions. Typed errors, never a
//! panic, and a member that receives them stays as it was.

use hearth_cluster::wire::DEFAULT_MAX_MESSAGE_BYTES;
use hearth_cluster::{Event, Heartbeat, Input, WireError, WireMessage};

use crate::sim::{device, node_id, Rng, Sim};

fn samples(sim: &Sim) -> Vec<Vec<u8>> {
    let m = sim.member(0);
    vec![
        WireMessage::Heartbeat(Heartbeat {
            node: node_id(0),
            name: "host-0".into(),
            addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
            incarnation: 1,
            epoch: 3,
            coordinator: Some(node_id(0)),
            acting: true,
            last_seq: 9,
            state_hash: 42,
        })
        .encode(),
        WireMessage::Propose {
            event: Event::DeviceInfo {
                node: node_id(1),
                devices: vec![device(1)],
            },
        }
        .encode(),
        WireMessage::Ordered {
            entries: m.log().cloned().collect(),
        }
        .encode(),
        WireMessage::Snapshot {
            state: m.state().clone(),
            hash: m.state_hash(),
        }
        .encode(),
        WireMessage::CatchUp {
            from_seq: 3,
            have_hash: 7,
        }
        .encode(),
    ]
}

#[test]
fn valid_messages_round_trip() {
    let mut sim = Sim::started(3, 1);
    sim.run(3_000);
    for bytes in samples(&sim) {
        let msg = WireMessage::decode(&bytes).expect("valid");
        assert_eq!(msg.encode(), bytes);
    }
}

#[test]
fn oversized_empty_and_foreign_versions_are_typed_errors() {
    let big = vec![b' '; DEFAULT_MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        WireMessage::decode(&big),
        Err(WireError::TooLarge { .. })
    ));
    assert_eq!(WireMessage::decode(b""), Err(WireError::Empty));
    assert!(matches!(
        WireMessage::decode(br#"{"v":2,"msg":{"type":"leaving"}}"#),
        Err(WireError::Version { got: 2, .. })
    ));
    assert!(WireMessage::decode(br#"{"v":1,"msg":{"type":"leaving"}}"#).is_ok());
    assert!(matches!(
        WireMessage::decode(br#"{"v":1,"msg":{"type":"launch"}}"#),
        Err(WireError::Malformed(_))
    ));
    let deep = "[".repeat(100_000);
    assert!(matches!(
        WireMessage::decode(deep.as_bytes()),
        Err(WireError::Malformed(_))
    ));
    let too_many = WireMessage::Replay {
        entries: vec![
            hearth_cluster::OrderedEntry {
                prev_hash: 0,
                event: hearth_cluster::SequencedEvent {
                    epoch: 1,
                    seq: 1,
                    at_ms: 0,
                    event: Event::NodeLeft { node: node_id(1) },
                },
            };
            hearth_cluster::wire::MAX_ENTRIES_PER_MESSAGE + 1
        ],
    };
    assert!(matches!(
        WireMessage::decode(&too_many.encode()),
        Err(WireError::TooManyEntries { .. })
    ));
    assert!(matches!(
        too_many.encode_bounded(100),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn random_truncated_and_mutated_bytes_never_panic() {
    let mut sim = Sim::started(3, 2);
    sim.run(3_000);
    let seeds = samples(&sim);
    let mut rng = Rng::new(99);
    let mut rejected = 0u64;
    for round in 0..20_000u64 {
        let base = &seeds[(round % seeds.len() as u64) as usize];
        let bytes: Vec<u8> = match round % 4 {
            0 => (0..rng.below(200)).map(|_| rng.next_u64() as u8).collect(),
            1 => base[..rng.below(base.len() as u64) as usize].to_vec(),
            2 => {
                let mut b = base.clone();
                for _ in 0..=rng.below(4) {
                    let k = rng.below(b.len() as u64) as usize;
                    b[k] = rng.next_u64() as u8;
                }
                b
            }
            _ => {
                // Splice two messages: structurally plausible, semantically garbage.
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                let cut = rng.below(base.len() as u64) as usize;
                let cut2 = rng.below(other.len() as u64) as usize;
                [&base[..cut], &other[cut2..]].concat()
            }
        };
        if WireMessage::decode(&bytes).is_err() {
            rejected += 1;
        }
        if round % 10 == 0 {
            // Through a live member too: it must count, not crash.
            sim.input(
                1,
                Input::Bytes {
                    from: node_id(2),
                    bytes,
                },
            );
        }
    }
    assert!(rejected > 10_000, "only {rejected} rejected");
    assert!(sim.member(1).counters().malformed_messages > 0);
    sim.run(5_000);
    assert!(sim.group_agrees(&[0, 1, 2]));
}
