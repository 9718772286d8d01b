//! The fault cases of the fabric's acceptance list, on the simulated network.

use hearth_cluster::{Event, Input, NodeId, OrderedEntry, Role, SequencedEvent, WireMessage};

use crate::sim::{node_id, Sim};

const ALL: [usize; 5] = [0, 1, 2, 3, 4];

fn formed(seed: u64) -> Sim {
    let mut sim = Sim::started(5, seed);
    let took = sim.run_until(5_000, |s| s.group_agrees(&ALL));
    assert!(
        took.is_some(),
        "seed {seed}: 5 nodes did not converge in 5 s"
    );
    sim
}

/// Consecutive sequence numbers in a member's replay log.
fn gap_free(entries: &[&OrderedEntry]) -> bool {
    entries
        .windows(2)
        .all(|w| w[1].event.seq == w[0].event.seq + 1)
}

#[test]
fn five_members_converge_within_five_seconds() {
    for seed in 1..=40 {
        let mut sim = Sim::started(5, seed);
        let took = sim.run_until(5_000, |s| s.group_agrees(&ALL));
        let took = took.unwrap_or_else(|| panic!("seed {seed}: no convergence in 5 s"));
        assert!(took <= 5_000);
        for (_, m) in sim.alive() {
            assert_eq!(m.state().coordinator, Some(node_id(0)));
            assert_eq!(m.state().members.len(), 5);
        }
        // The membership stays put once formed.
        sim.run(5_000);
        assert!(
            sim.group_agrees(&ALL),
            "seed {seed}: unstable after formation"
        );
    }
}

#[test]
fn killed_member_is_removed_everywhere_within_ten_seconds() {
    for seed in 1..=40 {
        let mut sim = formed(seed);
        sim.crash(3);
        let rest = [0, 1, 2, 4];
        let took = sim.run_until(10_000, |s| {
            s.alive().all(|(_, m)| !m.state().is_member(&node_id(3))) && s.group_agrees(&rest)
        });
        assert!(
            took.is_some(),
            "seed {seed}: node-3 still present after 10 s"
        );
    }
}

#[test]
fn killed_coordinator_is_replaced_and_the_log_continues_without_gaps() {
    for seed in 1..=40 {
        let mut sim = formed(seed);
        // Some traffic, so the log has content to continue.
        for i in 1..5 {
            sim.input(
                i,
                Input::Propose(Event::RefusalCounts {
                    node: node_id(i),
                    counts: [("wrong_key".to_string(), i as u64)].into(),
                }),
            );
        }
        sim.run(1_000);
        let before: Vec<(u64, u64)> = (1..5)
            .map(|i| {
                let m = sim.member(i);
                (m.state().last_seq, m.counters().snapshots_adopted)
            })
            .collect();
        let seq_before = before.iter().map(|b| b.0).max().unwrap_or(0);
        sim.crash(0);
        let rest = [1, 2, 3, 4];
        let took = sim.run_until(10_000, |s| s.group_agrees(&rest));
        assert!(
            took.is_some(),
            "seed {seed}: no new coordinator within 10 s"
        );
        for (k, &i) in rest.iter().enumerate() {
            let m = sim.member(i);
            let log: Vec<&OrderedEntry> = m.log().collect();
            assert!(gap_free(&log), "seed {seed}: node-{i} log has a gap");
            assert_eq!(
                m.counters().snapshots_adopted,
                before[k].1,
                "seed {seed}: node-{i} needed a snapshot, so its log did not continue"
            );
            // The new reign starts right after the old one's last event.
            let change = log
                .iter()
                .find(|e| {
                    matches!(&e.event.event, Event::CoordinatorChanged { coordinator, .. }
                        if *coordinator == node_id(1))
                })
                .unwrap_or_else(|| panic!("seed {seed}: node-{i} never saw node-1 take over"));
            assert_eq!(change.event.seq, seq_before + 1, "seed {seed}: node-{i}");
            assert!(log.first().is_some_and(|e| e.event.seq <= seq_before));
            assert!(!m.state().is_member(&node_id(0)));
        }
    }
}

#[test]
fn partition_elects_one_coordinator_per_side_and_heals_to_one_state() {
    for seed in 1..=40 {
        let mut sim = formed(seed);
        sim.partition(&[2, 3, 4]);
        let (a, b) = ([0, 1], [2, 3, 4]);
        let took = sim.run_until(10_000, |s| s.group_agrees(&a) && s.group_agrees(&b));
        assert!(took.is_some(), "seed {seed}: sides did not settle");
        assert_eq!(sim.state(1).coordinator, Some(node_id(0)));
        assert_eq!(sim.state(4).coordinator, Some(node_id(2)));
        // Both sides keep going.
        sim.input(
            3,
            Input::Propose(Event::RefusalCounts {
                node: node_id(3),
                counts: [("malformed".to_string(), 7)].into(),
            }),
        );
        sim.run(2_000);
        assert!(sim.state(4).refusals.contains_key(&node_id(3)));

        sim.heal();
        let took = sim.run_until(10_000, |s| s.group_agrees(&ALL));
        assert!(took.is_some(), "seed {seed}: no single state after healing");
        let hashes: Vec<u64> = sim.alive().map(|(_, m)| m.state_hash()).collect();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        let coordinators = sim
            .alive()
            .filter(|(_, m)| m.is_acting_coordinator())
            .count();
        assert_eq!(coordinators, 1, "seed {seed}");
        // The losing side's own facts were re-proposed into the winner's history.
        assert!(sim.state(0).refusals.contains_key(&node_id(3)));
    }
}

#[test]
fn restarted_node_keeps_its_id_and_leaves_no_ghost() {
    for seed in 1..=40 {
        let mut sim = formed(seed);
        let old = sim.state(0).members[&node_id(3)].incarnation;
        // Restart faster than the timeout: the coordinator must notice the new incarnation.
        sim.crash(3);
        sim.run(300);
        sim.start(3);
        let took = sim.run_until(10_000, |s| {
            s.group_agrees(&ALL) && s.state(0).members[&node_id(3)].incarnation != old
        });
        assert!(took.is_some(), "seed {seed}: quick restart did not settle");
        // Restart after the timeout.
        sim.crash(3);
        sim.run(6_000);
        assert!(!sim.state(0).is_member(&node_id(3)));
        sim.start(3);
        let took = sim.run_until(10_000, |s| s.group_agrees(&ALL));
        assert!(took.is_some(), "seed {seed}: late restart did not settle");
        for (_, m) in sim.alive() {
            assert_eq!(m.state().members.len(), 5);
        }
    }
}

#[test]
fn ordering_from_a_non_coordinator_is_ignored_and_counted() {
    let mut sim = formed(7);
    let before = sim.state(2).clone();
    let forged = SequencedEvent {
        epoch: before.epoch,
        seq: before.last_seq + 1,
        at_ms: sim.now,
        event: Event::NodeTimedOut { node: node_id(0) },
    };
    let msg = WireMessage::Ordered {
        entries: vec![OrderedEntry {
            prev_hash: sim.member(2).state_hash(),
            event: forged,
        }],
    };
    let count = sim.member(2).counters().ignored_ordering;
    sim.input(
        2,
        Input::Message {
            from: node_id(4),
            msg,
        },
    );
    assert_eq!(sim.member(2).counters().ignored_ordering, count + 1);
    assert_eq!(sim.state(2), &before);
}

#[test]
fn facts_about_other_nodes_are_refused() {
    let mut sim = formed(8);
    let out = sim.nodes[1].member.as_mut().map(|m| {
        m.handle(
            Input::Propose(Event::RefusalCounts {
                node: node_id(2),
                counts: Default::default(),
            }),
            0,
        )
    });
    let refused = out
        .unwrap_or_default()
        .iter()
        .any(|o| matches!(o, hearth_cluster::Output::Refused(_)));
    assert!(refused);
    // And a forwarded one is refused by the coordinator.
    let msg = WireMessage::Propose {
        event: Event::NodeTimedOut { node: node_id(3) },
    };
    sim.input(
        0,
        Input::Message {
            from: node_id(1),
            msg,
        },
    );
    sim.run(1_000);
    assert!(sim.state(0).is_member(&NodeId::from("node-3")));
    assert!(matches!(sim.member(0).role(), Role::Coordinator { .. }));
}
