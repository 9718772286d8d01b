//! Nodes on loopback, found through `--peer` only (no mDNS: loopback carries no multicast).

use super::harness::{
    agree_on, audited, get, measured_home, members, wait_until, Node, TempDir, KEY,
};
use std::time::Duration;

/// Loopback on one transport: `/tcp/` or `/quic-v1`.
fn loopback_args<'a>(transport: &str, extra: &[&'a str]) -> Vec<&'a str> {
    let listen = if transport == "/quic-v1" {
        "/ip4/127.0.0.1/udp/0/quic-v1"
    } else {
        "/ip4/127.0.0.1/tcp/0"
    };
    let mut a = vec![
        "--no-mdns",
        "--listen",
        listen,
        "--api",
        "127.0.0.1:0",
        "--timeout-ms",
        "3000",
    ];
    a.extend_from_slice(extra);
    a
}

/// `n` nodes with the test key, all dialling the first at its `transport` address (`/tcp/` or
/// `/quic-v1`).
fn start_cluster(dir: &TempDir, home: &TempDir, n: usize, transport: &str) -> Vec<Node> {
    let first = Node::start(
        "node-1",
        &dir.0.join("node-1"),
        &home.0,
        &loopback_args(transport, &["--cluster-key", KEY]),
    );
    let seed = first.listen_addr(transport);
    let mut nodes = vec![first];
    for i in 2..=n {
        let name = format!("node-{i}");
        nodes.push(Node::start(
            &name,
            &dir.0.join(&name),
            &home.0,
            &loopback_args(transport, &["--cluster-key", KEY, "--peer", &seed]),
        ));
    }
    nodes
}

fn ids(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

#[test]
fn five_nodes_given_one_peer_agree_on_membership_and_coordinator_within_five_seconds() {
    let home = measured_home();
    let dir = TempDir::new("cluster-five");
    let nodes = start_cluster(&dir, &home, 5, "/tcp/");
    let all: Vec<&Node> = nodes.iter().collect();
    let took = wait_until(
        &all,
        Duration::from_secs(5),
        "5 members, one coordinator",
        agree_on(&ids(&all)),
    );
    eprintln!("5 nodes on loopback agreed in {took:?}");
    // The smallest id coordinates, and every node holds the same state.
    let views: Vec<_> = all.iter().map(|n| n.cluster().unwrap()).collect();
    let mut sorted = ids(&all);
    sorted.sort();
    assert_eq!(views[0]["coordinator"], sorted[0].as_str());
    // Devices arrive once each node has read its measurement.
    wait_until(
        &all,
        Duration::from_secs(10),
        "every member lists its devices",
        |views| {
            views.iter().all(|v| {
                v["nodes"].as_array().is_some_and(|ns| {
                    ns.len() == 5
                        && ns
                            .iter()
                            .all(|n| n["devices"].as_array().is_some_and(|d| !d.is_empty()))
                })
            })
        },
    );
    // A graceful stop says goodbye: the others drop it without waiting for the timeout.
    drop(all);
    let mut nodes = nodes;
    let mut leaving = nodes.pop().unwrap();
    leaving.stop();
    let rest: Vec<&Node> = nodes.iter().collect();
    let took = wait_until(
        &rest,
        Duration::from_secs(10),
        "the stopped node gone",
        agree_on(&ids(&rest)),
    );
    eprintln!("a gracefully stopped node was gone everywhere after {took:?}");
}

#[test]
fn a_node_with_the_wrong_key_is_refused_by_every_member_and_counted() {
    let home = measured_home();
    let dir = TempDir::new("cluster-key");
    let nodes = start_cluster(&dir, &home, 3, "/tcp/");
    let members_only: Vec<&Node> = nodes.iter().collect();
    wait_until(
        &members_only,
        Duration::from_secs(10),
        "3 members",
        agree_on(&ids(&members_only)),
    );
    let peers: Vec<String> = nodes.iter().map(|n| n.listen_addr("/tcp/")).collect();
    let mut extra = vec!["--cluster-key", "some-other-key"];
    for p in &peers {
        extra.extend(["--peer", p.as_str()]);
    }
    let intruder = Node::start(
        "intruder",
        &dir.0.join("intruder"),
        &home.0,
        &loopback_args("/tcp/", &extra),
    );
    wait_until(
        &members_only,
        Duration::from_secs(10),
        "every member refused the intruder",
        |views| {
            // The counter moves when the network refuses; the refusal record (and the log line
            // written just before it) when the node loop has handled the event.
            views.iter().all(|v| {
                v["counters"]["refused_admission"].as_u64().unwrap_or(0) > 0
                    && v["recent_refusals"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["peer"] == intruder.id.as_str()))
            })
        },
    );
    // Nothing it sent reached the state: never a member, and the members' state is unchanged.
    for n in &nodes {
        let v = n.cluster().unwrap();
        assert!(
            !members(&v).contains(&intruder.id),
            "{} admitted the intruder",
            n.name
        );
        let refused: Vec<_> = v["recent_refusals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["peer"] == intruder.id.as_str())
            .collect();
        assert!(!refused.is_empty(), "{}: {v:#}", n.name);
        assert!(
            n.log().contains("peer refused"),
            "{} did not log the refusal",
            n.name
        );
    }
    // Each member's audit log has the refusal, and the admissions of the other members.
    for n in &nodes {
        audited(&n.data_dir, "the intruder refused", |v| {
            v["kind"] == "peer.refused" && v["peer"] == intruder.id.as_str()
        });
        for m in nodes.iter().filter(|m| m.id != n.id) {
            audited(&n.data_dir, "a member admitted", |v| {
                v["kind"] == "peer.admitted" && v["peer"] == m.id.as_str()
            });
        }
    }
    let intruder_view = intruder.cluster().unwrap();
    for n in &nodes {
        assert!(
            !members(&intruder_view).contains(&n.id),
            "the intruder lists {}",
            n.name
        );
    }
    // The status command shows the counter.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["cluster", "status", "--api", &nodes[0].api])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("REFUSED  admission "), "{text}");
    assert!(!text.contains("REFUSED  admission 0 "), "{text}");
}

#[test]
fn a_killed_member_is_removed_and_a_killed_coordinator_replaced_with_the_log_continuing() {
    let home = measured_home();
    let dir = TempDir::new("cluster-kill");
    // Over QUIC: a killed QUIC peer sends no close, so only the member timeout can remove it.
    let mut nodes = start_cluster(&dir, &home, 5, "/quic-v1");
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_until(
            &all,
            Duration::from_secs(10),
            "5 members",
            agree_on(&ids(&all)),
        );
    }
    // Kill a member that is not the coordinator.
    let coordinator = nodes[0].cluster().unwrap()["coordinator"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = nodes.iter().position(|n| n.id != coordinator).unwrap();
    nodes[victim].kill();
    let gone = nodes.remove(victim);
    {
        let rest: Vec<&Node> = nodes.iter().collect();
        let took = wait_until(
            &rest,
            Duration::from_secs(10),
            "the killed member removed",
            agree_on(&ids(&rest)),
        );
        eprintln!("killed member removed everywhere after {took:?}");
    }
    drop(gone);
    // Kill the coordinator.
    let c = nodes.iter().position(|n| n.id == coordinator).unwrap();
    let before = nodes[(c + 1) % nodes.len()].cluster().unwrap()["last_seq"]
        .as_u64()
        .unwrap();
    nodes[c].kill();
    nodes.remove(c);
    let rest: Vec<&Node> = nodes.iter().collect();
    let took = wait_until(
        &rest,
        Duration::from_secs(10),
        "a new coordinator",
        agree_on(&ids(&rest)),
    );
    eprintln!("new coordinator everywhere after {took:?}");
    for n in &rest {
        let log = get(&n.api, "/api/cluster/log").unwrap();
        let seqs: Vec<u64> = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{}: gap in {seqs:?}",
            n.name
        );
        assert!(
            seqs.last().copied().unwrap_or(0) > before,
            "{}: the log did not go on",
            n.name
        );
        assert!(
            seqs.first().copied().unwrap_or(u64::MAX) <= before,
            "{}: {seqs:?}",
            n.name
        );
    }
}

#[test]
fn a_restarted_node_keeps_its_id_and_leaves_no_ghost() {
    let home = measured_home();
    let dir = TempDir::new("cluster-restart");
    // Over QUIC: the killed process sends no close, so its peers still hold its connection
    // when the new process arrives.
    let mut nodes = start_cluster(&dir, &home, 3, "/quic-v1");
    let all_ids = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_until(
            &all,
            Duration::from_secs(10),
            "3 members",
            agree_on(&ids(&all)),
        );
        ids(&all)
    };
    let seed = nodes[0].listen_addr("/quic-v1");
    let (name, data_dir, old_id) = (
        nodes[2].name.clone(),
        nodes[2].data_dir.clone(),
        nodes[2].id.clone(),
    );
    nodes[2].kill();
    nodes.pop();
    let again = Node::start(
        &name,
        &data_dir,
        &home.0,
        &loopback_args("/quic-v1", &["--cluster-key", KEY, "--peer", &seed]),
    );
    assert_eq!(again.id, old_id, "a restarted node must keep its id");
    nodes.push(again);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_until(
        &all,
        Duration::from_secs(10),
        "3 members, no ghost",
        agree_on(&all_ids),
    );
}
