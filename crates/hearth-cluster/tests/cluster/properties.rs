//! Properties over many seeds: whatever events are proposed, members that apply the
//! coordinator's order end in the same state.

use std::collections::BTreeMap;

use hearth_cluster::{
    apply_in_place, ClusterState, DeviceTelemetry, Event, Input, InstanceStatus, LinkMeasurement,
    SequencedEvent, Stage,
};

use crate::sim::{device, node_id, Rng, Sim};

fn random_event(rng: &mut Rng, node_count: usize, any_subject: bool) -> (usize, Event) {
    let n = |rng: &mut Rng| rng.below(node_count as u64) as usize;
    let me = n(rng);
    let subject = if any_subject { n(rng) } else { me };
    let e = match rng.below(if any_subject { 10 } else { 5 }) {
        0 => Event::Telemetry {
            node: node_id(subject),
            samples: vec![DeviceTelemetry {
                device: format!("cpu-{subject}"),
                memory_used_bytes: rng.below(1 << 34),
                utilisation: rng.unit(),
                temperature_c: Some(30.0 + 60.0 * rng.unit()),
                power_w: Some(100.0 * rng.unit()),
                battery: None,
                on_battery: false,
                throttled: rng.chance(100),
                thermal_headroom: rng.unit(),
                sampled_ms: rng.below(1_000_000),
            }],
        },
        1 => Event::LinkMeasured {
            from: node_id(subject),
            to: node_id(n(rng)),
            stats: LinkMeasurement {
                rtt_p50_ms: rng.unit() * 10.0,
                rtt_p95_ms: rng.unit() * 20.0,
                throughput_mbps: Some(rng.unit() * 1000.0),
                // Now and then out of range: the coordinator must refuse it for everyone.
                loss: Some(rng.unit() * 1.1),
            },
        },
        2 => {
            let mut d = device(subject);
            d.bandwidth_gbs = rng.unit() * 50.0;
            Event::DeviceInfo {
                node: node_id(subject),
                devices: vec![d],
            }
        }
        3 => Event::RefusalCounts {
            node: node_id(subject),
            counts: BTreeMap::from([("wrong_key".to_string(), rng.below(10))]),
        },
        4 => Event::InstanceStatus {
            id: format!("inst-{}", rng.below(3)),
            status: InstanceStatus::Loading {
                progress: rng.unit(),
            },
        },
        5 => Event::NodeJoined {
            node: node_id(subject),
            name: format!("host-{subject}"),
            addresses: vec![],
            incarnation: rng.below(3),
        },
        6 => Event::NodeTimedOut {
            node: node_id(subject),
        },
        7 => Event::InstancePlaced {
            id: format!("inst-{}", rng.below(3)),
            model: "smollm2".into(),
            stages: vec![Stage {
                node: node_id(subject),
                device: format!("cpu-{subject}"),
                first_layer: 0,
                end_layer: 1 + rng.below(30) as u32,
                status: Default::default(),
            }],
            predicted_tokens_per_s: 0.0,
        },
        8 => Event::InstanceRemoved {
            id: format!("inst-{}", rng.below(3)),
        },
        _ => Event::NodeLeft {
            node: node_id(subject),
        },
    };
    (me, e)
}

#[test]
fn random_logs_applied_in_order_give_identical_states() {
    for seed in 1..=40 {
        let mut rng = Rng::new(seed);
        // The coordinator keeps the events that apply; the rest are refused for everyone.
        let mut coord = ClusterState::default();
        let mut log = Vec::new();
        let open = SequencedEvent {
            epoch: 1,
            seq: 1,
            at_ms: 0,
            event: Event::CoordinatorChanged {
                coordinator: node_id(0),
                epoch: 1,
            },
        };
        apply_in_place(&mut coord, &open).expect("opening");
        log.push(open);
        for t in 0..400u64 {
            let (_, event) = random_event(&mut rng, 6, true);
            let ev = SequencedEvent {
                epoch: coord.epoch,
                seq: coord.last_seq + 1,
                at_ms: t,
                event,
            };
            if apply_in_place(&mut coord, &ev).is_ok() {
                log.push(ev);
            }
        }
        assert!(log.len() > 50, "seed {seed}: too few valid events");
        // Replicas receive the log shuffled and duplicated; `apply` refuses what does not
        // follow, so each retries until everything is in.
        for _ in 0..4 {
            let mut inbox: Vec<&SequencedEvent> = log.iter().chain(log.iter().take(30)).collect();
            for k in (1..inbox.len()).rev() {
                inbox.swap(k, rng.below(k as u64 + 1) as usize);
            }
            let mut replica = ClusterState::default();
            while replica.last_seq < coord.last_seq {
                for ev in &inbox {
                    let _ = apply_in_place(&mut replica, ev);
                }
            }
            assert_eq!(replica.state_hash(), coord.state_hash(), "seed {seed}");
            assert_eq!(replica, coord);
        }
    }
}

#[test]
fn members_under_random_proposals_and_losses_end_identical() {
    for seed in 1..=40 {
        let mut sim = Sim::started(5, seed);
        sim.drop_per_mille = 50;
        let formed = sim.run_until(8_000, |s| s.group_agrees(&[0, 1, 2, 3, 4]));
        assert!(formed.is_some(), "seed {seed}: no formation with 5% loss");
        let mut rng = Rng::new(seed ^ 0xABCD);
        for _ in 0..100 {
            let (i, e) = random_event(&mut rng, 5, false);
            sim.input(i, Input::Propose(e));
            sim.run(1 + rng.below(60));
        }
        sim.drop_per_mille = 0;
        let quiet = sim.run_until(10_000, |s| s.group_agrees(&[0, 1, 2, 3, 4]));
        assert!(quiet.is_some(), "seed {seed}: members did not agree");
        // Where their logs overlap, every member holds the very same events.
        let mut by_seq: BTreeMap<u64, &SequencedEvent> = BTreeMap::new();
        for (_, m) in sim.alive() {
            for e in m.log() {
                let prev = by_seq.entry(e.event.seq).or_insert(&e.event);
                assert_eq!(
                    *prev, &e.event,
                    "seed {seed}: logs differ at {}",
                    e.event.seq
                );
            }
        }
        assert!(sim.state(0).telemetry.len() + sim.state(0).links.len() > 0);
    }
}
