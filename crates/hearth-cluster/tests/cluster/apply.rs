//! `apply` on plain data: ordering rules, unknown nodes, restarts, removal and its cascade.

use hearth_cluster::{
    apply, apply_in_place, ApplyError, ClusterState, DeviceTelemetry, Event, InstanceStatus,
    LinkMeasurement, SequencedEvent, Stage, StageStatus, WantedModel,
};

use crate::sim::{device, node_id};

/// Applies `events` in order from the empty state, opening epoch 1 with node-0.
fn build(events: Vec<Event>) -> ClusterState {
    let mut s = ClusterState::default();
    let mut all = vec![Event::CoordinatorChanged {
        coordinator: node_id(0),
        epoch: 1,
    }];
    all.extend(events);
    for e in all {
        let seq = s.last_seq + 1;
        let epoch = match &e {
            Event::CoordinatorChanged { epoch, .. } => *epoch,
            _ => s.epoch,
        };
        s = apply(
            &s,
            &SequencedEvent {
                epoch,
                seq,
                at_ms: seq * 10,
                event: e,
            },
        )
        .expect("valid event");
    }
    s
}

fn joined(i: usize, incarnation: u64) -> Event {
    Event::NodeJoined {
        node: node_id(i),
        name: format!("host-{i}"),
        addresses: vec![],
        incarnation,
    }
}

fn next(s: &ClusterState, event: Event) -> SequencedEvent {
    SequencedEvent {
        epoch: s.epoch,
        seq: s.last_seq + 1,
        at_ms: 1,
        event,
    }
}

fn telemetry(dev: &str) -> DeviceTelemetry {
    DeviceTelemetry {
        device: dev.into(),
        memory_used_bytes: 1 << 30,
        utilisation: 0.5,
        temperature_c: Some(60.0),
        power_w: None,
        battery: None,
        on_battery: false,
        throttled: false,
        thermal_headroom: 0.8,
        sampled_ms: 5,
    }
}

#[test]
fn out_of_order_and_gapped_events_are_refused_without_change() {
    let mut s = build(vec![joined(0, 1)]);
    let before = s.clone();
    let mut ev = next(&s, joined(1, 1));
    ev.seq += 1;
    assert_eq!(
        apply_in_place(&mut s, &ev),
        Err(ApplyError::Gap {
            expected: 3,
            got: 4
        })
    );
    ev.seq = 2;
    assert!(matches!(
        apply_in_place(&mut s, &ev),
        Err(ApplyError::AlreadyApplied { .. })
    ));
    assert_eq!(s, before);
}

#[test]
fn epochs_open_only_with_a_coordinator_change() {
    let s = build(vec![joined(0, 1)]);
    let mut ev = next(&s, joined(1, 1));
    ev.epoch = 2;
    assert!(matches!(
        apply(&s, &ev),
        Err(ApplyError::EpochWithoutCoordinator { .. })
    ));
    ev.epoch = 0;
    assert!(matches!(apply(&s, &ev), Err(ApplyError::StaleEpoch { .. })));
    let same = next(
        &s,
        Event::CoordinatorChanged {
            coordinator: node_id(1),
            epoch: 1,
        },
    );
    assert!(matches!(apply(&s, &same), Err(ApplyError::BadEpoch { .. })));
    let mut ok = same.clone();
    ok.epoch = 2;
    ok.event = Event::CoordinatorChanged {
        coordinator: node_id(1),
        epoch: 2,
    };
    let s2 = apply(&s, &ok).expect("new reign");
    assert_eq!((s2.epoch, s2.coordinator), (2, Some(node_id(1))));
}

#[test]
fn events_about_unknown_nodes_are_refused() {
    let s = build(vec![joined(0, 1)]);
    for e in [
        Event::DeviceInfo {
            node: node_id(5),
            devices: vec![],
        },
        Event::NodeTimedOut { node: node_id(5) },
        Event::LinkMeasured {
            from: node_id(0),
            to: node_id(5),
            stats: LinkMeasurement {
                rtt_p50_ms: 1.0,
                rtt_p95_ms: 2.0,
                throughput_mbps: Some(100.0),
                loss: Some(0.0),
            },
        },
    ] {
        assert_eq!(
            apply(&s, &next(&s, e)),
            Err(ApplyError::UnknownNode(node_id(5)))
        );
    }
}

#[test]
fn bad_figures_and_unknown_devices_are_refused() {
    let s = build(vec![
        joined(0, 1),
        Event::DeviceInfo {
            node: node_id(0),
            devices: vec![device(0)],
        },
    ]);
    let mut d = device(0);
    d.thermal_headroom = f64::NAN;
    let e = Event::DeviceInfo {
        node: node_id(0),
        devices: vec![d],
    };
    assert!(matches!(
        apply(&s, &next(&s, e)),
        Err(ApplyError::BadFigure { .. })
    ));
    let e = Event::Telemetry {
        node: node_id(0),
        samples: vec![telemetry("gpu-9")],
    };
    assert!(matches!(
        apply(&s, &next(&s, e)),
        Err(ApplyError::UnknownDevice { .. })
    ));
    let e = Event::Telemetry {
        node: node_id(0),
        samples: vec![telemetry("cpu-0")],
    };
    let s2 = apply(&s, &next(&s, e)).expect("telemetry");
    assert_eq!(s2.telemetry[&node_id(0)]["cpu-0"].utilisation, 0.5);
}

#[test]
fn rejoin_replaces_the_entry_and_removal_cascades() {
    let link = LinkMeasurement {
        rtt_p50_ms: 1.0,
        rtt_p95_ms: 2.0,
        throughput_mbps: Some(100.0),
        loss: Some(0.0),
    };
    let s = build(vec![
        joined(0, 1),
        joined(1, 1),
        Event::DeviceInfo {
            node: node_id(1),
            devices: vec![device(1)],
        },
        Event::LinkMeasured {
            from: node_id(0),
            to: node_id(1),
            stats: link,
        },
        Event::InstancePlaced {
            id: "m1".into(),
            model: "smollm2".into(),
            stages: vec![
                Stage {
                    node: node_id(0),
                    device: "cpu-0".into(),
                    first_layer: 0,
                    end_layer: 15,
                    status: Default::default(),
                },
                Stage {
                    node: node_id(1),
                    device: "cpu-1".into(),
                    first_layer: 15,
                    end_layer: 30,
                    status: Default::default(),
                },
            ],
            predicted_tokens_per_s: 12.5,
        },
        Event::InstanceStatus {
            id: "m1".into(),
            status: InstanceStatus::Ready,
        },
    ]);
    // Restart: same id, new incarnation: one entry, facts of the old incarnation gone.
    let r = apply(&s, &next(&s, joined(1, 2))).expect("rejoin");
    assert_eq!(r.members.len(), 2);
    assert_eq!(r.members[&node_id(1)].incarnation, 2);
    assert!(r.members[&node_id(1)].devices.is_empty());
    assert!(r.links.is_empty());
    assert!(matches!(
        r.instances["m1"].status,
        InstanceStatus::Failed { .. }
    ));
    let t = apply(&s, &next(&s, Event::NodeTimedOut { node: node_id(1) })).expect("timeout");
    assert_eq!(t.members.len(), 1);
    assert!(t.links.is_empty());
    assert!(matches!(
        t.instances["m1"].status,
        InstanceStatus::Failed { .. }
    ));
}

#[test]
fn state_hash_is_canonical() {
    let a = build(vec![joined(0, 1), joined(1, 1), joined(2, 1)]);
    let b = build(vec![joined(0, 1), joined(1, 1), joined(2, 1)]);
    assert_eq!(a.state_hash(), b.state_hash());
    let c = build(vec![joined(0, 1), joined(2, 1), joined(1, 1)]);
    // Same members, different join order: joined_seq differs, and so must the hash.
    assert_ne!(a.state_hash(), c.state_hash());
    assert_eq!(
        ClusterState::default().state_hash(),
        ClusterState::default().state_hash()
    );
}

fn wanted(name: &str, by: usize) -> WantedModel {
    WantedModel {
        name: name.into(),
        sha256: "ab".repeat(32),
        size_bytes: 1 << 20,
        source: "models/smollm2.gguf".into(),
        profile: "{}".into(),
        requested_by: node_id(by),
        placement: "planner".into(),
        context: 2048,
    }
}

#[test]
fn stages_report_their_own_status_only() {
    let s = build(vec![
        joined(0, 1),
        joined(1, 1),
        joined(2, 1),
        Event::InstancePlaced {
            id: "m1".into(),
            model: "smollm2".into(),
            stages: vec![Stage {
                node: node_id(1),
                device: "cpu-1".into(),
                first_layer: 0,
                end_layer: 30,
                status: StageStatus::Pending,
            }],
            predicted_tokens_per_s: 30.0,
        },
    ]);
    let report = |node: usize, status: StageStatus| Event::StageStatus {
        instance: "m1".into(),
        node: node_id(node),
        status,
    };
    let loading = apply(
        &s,
        &next(&s, report(1, StageStatus::Loading { progress: 0.5 })),
    )
    .expect("a stage's node reports");
    assert_eq!(
        loading.instances["m1"].stages[0].status,
        StageStatus::Loading { progress: 0.5 }
    );
    assert!(matches!(
        apply(&s, &next(&s, report(2, StageStatus::Ready))),
        Err(ApplyError::NotAStage { .. })
    ));
    assert!(matches!(
        apply(
            &s,
            &next(&s, report(1, StageStatus::Loading { progress: 1.5 }))
        ),
        Err(ApplyError::BadFigure { .. })
    ));
    let unknown = Event::StageStatus {
        instance: "m2".into(),
        node: node_id(1),
        status: StageStatus::Ready,
    };
    assert!(matches!(
        apply(&s, &next(&s, unknown)),
        Err(ApplyError::UnknownInstance(_))
    ));
}

#[test]
fn wanted_models_are_replaced_by_name_and_removed() {
    let s = build(vec![
        joined(0, 1),
        joined(1, 1),
        Event::ModelWanted {
            model: wanted("smollm2", 1),
        },
    ]);
    assert_eq!(s.wanted["smollm2"].requested_by, node_id(1));
    let again = apply(
        &s,
        &next(
            &s,
            Event::ModelWanted {
                model: WantedModel {
                    context: 512,
                    ..wanted("smollm2", 0)
                },
            },
        ),
    )
    .expect("a second request replaces the first");
    assert_eq!(again.wanted.len(), 1);
    assert_eq!(again.wanted["smollm2"].context, 512);
    let mut huge = wanted("big", 0);
    huge.profile = "x".repeat(hearth_cluster::state::limits::MAX_PROFILE + 1);
    assert!(matches!(
        apply(&s, &next(&s, Event::ModelWanted { model: huge })),
        Err(ApplyError::TooLong { .. })
    ));
    let gone = apply(
        &again,
        &next(
            &again,
            Event::ModelUnwanted {
                name: "smollm2".into(),
                requested_by: node_id(0),
            },
        ),
    )
    .expect("unwanted");
    assert!(gone.wanted.is_empty());
    assert!(matches!(
        apply(
            &gone,
            &next(
                &gone,
                Event::ModelUnwanted {
                    name: "smollm2".into(),
                    requested_by: node_id(0),
                },
            ),
        ),
        Err(ApplyError::UnknownModel(_))
    ));
}
