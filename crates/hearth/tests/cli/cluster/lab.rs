//! Nodes in network namespaces joined by a bridge: found by mDNS, on links shaped with `tc`,
//! nftables and a delay relay (`hearth-netlab`), partitioned and healed. Needs root; where the
//! machine cannot make namespaces each test says so and checks nothing.

use super::harness::{admin_token, agree_on, members, wait_until, Node, TempDir, KEY};
use hearth_netlab::{Lab, Relay};
use serde_json::Value;
use std::time::{Duration, Instant};

fn lab_or_skip(test: &str, prefix: &str, n: usize) -> Option<Lab> {
    match Lab::available() {
        Ok(()) => Some(Lab::new(prefix, n).expect("the lab is created")),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

fn start_in(lab: &Lab, i: usize, dir: &TempDir, home: &TempDir, extra: &[&str]) -> Node {
    let api = format!("{}:52415", lab.ip(i));
    let mut args = vec![
        "--api",
        api.as_str(),
        "--cluster-key",
        KEY,
        "--timeout-ms",
        "3000",
    ];
    args.extend_from_slice(extra);
    let name = format!("ns-{i}");
    let data_dir = dir.0.join(&name);
    // The API listens on the namespace's address, beyond loopback, so it needs a token.
    let token = admin_token(&data_dir);
    let mut node = Node::start_with(
        lab.command(i, env!("CARGO_BIN_EXE_hearth")),
        &name,
        &data_dir,
        &home.0,
        &args,
    );
    node.token = Some(token);
    node
}

fn ids(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

/// Polls until all nodes report the same sequence number, then compares their state hashes.
fn same_state(nodes: &[&Node], limit: Duration) -> String {
    let start = Instant::now();
    let mut last: Vec<(u64, String)> = Vec::new();
    while start.elapsed() < limit {
        last = nodes
            .iter()
            .map(|n| {
                let v = n.cluster().unwrap_or(Value::Null);
                (
                    v["last_seq"].as_u64().unwrap_or(0),
                    v["state_hash"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if last.iter().all(|(s, _)| *s == last[0].0) {
            assert!(
                last.iter().all(|(_, h)| *h == last[0].1),
                "same sequence number, different states: {last:?}"
            );
            return last[0].1.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the nodes never stood at the same sequence number: {last:?}");
}

#[test]
fn five_nodes_in_namespaces_find_each_other_by_mdns_and_heal_a_partition_to_one_state() {
    let Some(lab) = lab_or_skip("mdns_and_partition", "hcm", 5) else {
        return;
    };
    let home = super::harness::measured_home();
    let dir = TempDir::new("cluster-lab-mdns");
    let nodes: Vec<Node> = (1..=5)
        .map(|i| start_in(&lab, i, &dir, &home, &[]))
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    let took = wait_until(
        &all,
        Duration::from_secs(5),
        "5 members by mDNS",
        agree_on(&ids(&all)),
    );
    eprintln!("5 nodes in namespaces agreed through mDNS in {took:?}");

    // Partition 2 | 3: each side goes on with its own coordinator.
    lab.partition(&[1, 2], &[3, 4, 5]).unwrap();
    let (a, b) = (&all[..2], &all[2..]);
    let took = wait_until(
        &all,
        Duration::from_secs(30),
        "one coordinator per side",
        |views| {
            let side_ok = |side: &[&Node], vs: &[Value]| agree_on(&ids(side))(vs);
            side_ok(a, &views[..2]) && side_ok(b, &views[2..])
        },
    );
    eprintln!("partition: one coordinator per side after {took:?}");
    let coordinators: Vec<Value> = all
        .iter()
        .map(|n| n.cluster().unwrap()["coordinator"].clone())
        .collect();
    assert_ne!(coordinators[0], coordinators[2]);

    // Heal: one coordinator and one state again.
    lab.heal().unwrap();
    let took = wait_until(
        &all,
        Duration::from_secs(40),
        "one cluster after healing",
        agree_on(&ids(&all)),
    );
    eprintln!("healed to one coordinator after {took:?}");
    let hash = same_state(&all, Duration::from_secs(20));
    eprintln!("all five hold state {hash}");
    let mut sorted = ids(&all);
    sorted.sort();
    assert_eq!(all[0].cluster().unwrap()["coordinator"], sorted[0].as_str());
}

fn link<'a>(v: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    v["links"]
        .as_array()?
        .iter()
        .find(|l| l["from"] == from && l["to"] == to)
}

#[test]
fn shaped_links_read_back_delay_bandwidth_and_loss() {
    let Some(lab) = lab_or_skip("shaped_links", "hcs", 3) else {
        return;
    };
    // Probe timings are the point here: no other test's nodes compete for the cores.
    let _alone = super::harness::alone();
    let home = super::harness::measured_home();
    let dir = TempDir::new("cluster-lab-links");
    // 1–2: 20 ms each way through a relay on the host (direct paths between them cut);
    // 1–3: 50 Mbit/s; 2–3: 5 % loss each way.
    lab.partition(&[1], &[2]).unwrap();
    lab.rate_limit(1, 3, 50).unwrap();
    lab.drop_percent(2, 3, 5).unwrap();
    // TCP on a fixed port, no mDNS: each node reaches exactly the peers it is given.
    let start_tcp = |i: usize, peers: &[&str]| {
        let mut args = vec!["--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/52414"];
        for p in peers {
            args.extend(["--peer", p]);
        }
        start_in(&lab, i, &dir, &home, &args)
    };
    let n2 = start_tcp(2, &[]);
    let relay = Relay::tcp(
        (lab.host_ip(), 0).into(),
        (lab.ip(2), 52414).into(),
        Duration::from_millis(20),
    )
    .unwrap();
    let via_relay = format!(
        "/ip4/{}/tcp/{}/p2p/{}",
        lab.host_ip(),
        relay.local_addr().port(),
        n2.id
    );
    let n1 = start_tcp(1, &[&via_relay]);
    let to1 = format!("/ip4/{}/tcp/52414", lab.ip(1));
    let to2 = format!("/ip4/{}/tcp/52414", lab.ip(2));
    let n3 = start_tcp(3, &[&to1, &to2]);
    let all = [&n1, &n2, &n3];
    wait_until(
        &all,
        Duration::from_secs(15),
        "3 members",
        agree_on(&ids(&all)),
    );
    let pairs = [(&n1, &n2), (&n1, &n3), (&n3, &n2)];
    // Throughput is probed every 15 s: two rounds and a margin.
    wait_until(
        &all,
        Duration::from_secs(45),
        "every shaped link measured",
        |views| {
            let v = &views[0];
            pairs.iter().all(|(a, b)| {
                link(v, &a.id, &b.id).is_some_and(|l| l["throughput_mbps"].is_number())
            }) && link(v, &n3.id, &n2.id).is_some_and(|l| l["loss"].is_number())
        },
    );
    let v = n1.cluster().unwrap();
    let report = |a: &Node, b: &Node| link(&v, &a.id, &b.id).cloned().unwrap();
    let delayed = report(&n1, &n2);
    let narrow = report(&n1, &n3);
    let lossy = report(&n3, &n2);
    eprintln!("1→2 (20 ms one way): {delayed}\n1→3 (50 Mbit/s): {narrow}\n3→2 (5 % loss): {lossy}");
    let one_way = delayed["rtt_p50_ms"].as_f64().unwrap() / 2.0;
    assert!(
        (16.0..=24.0).contains(&one_way),
        "one-way latency {one_way} ms, added 20"
    );
    let mbit = narrow["throughput_mbps"].as_f64().unwrap();
    assert!(
        (37.5..=62.5).contains(&mbit),
        "throughput {mbit} Mbit/s, limited to 50"
    );
    assert!(
        lossy["loss"].as_f64().unwrap() > 0.0,
        "the lossy link reports no loss: {lossy}"
    );
    // The loss probe is UDP and the relay carries only TCP: no echo, so no loss figure.
    assert!(delayed["loss"].is_null(), "{delayed}");
    drop(relay);
    let _ = members(&v);
}
