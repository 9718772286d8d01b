use crate::relay::{tcp_echo, tcp_rtt};
use crate::timing;
use hearth_netlab::{Lab, LabError, Relay};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A lab, or `None` after printing why this machine cannot run one.
fn lab(test: &str, prefix: &str, n: usize) -> Option<Lab> {
    if let Err(why) = Lab::available() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(Lab::new(prefix, n).expect("create lab"))
}

/// A listener in node `j` on its own address, accepting forever; returns its address.
fn listen_in(lab: &Lab, j: usize) -> SocketAddr {
    let ip = lab.ip(j);
    let (tx, rx) = mpsc::channel();
    lab.spawn_in(j, move || {
        let l = TcpListener::bind((ip, 0)).expect("bind in namespace");
        tx.send(l.local_addr().expect("addr")).expect("send addr");
        for s in l.incoming() {
            // Hold each connection briefly so the dialer sees it established.
            drop(s);
        }
    })
    .expect("spawn listener");
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener up")
}

/// Whether node `i` can open a TCP connection to `to` within `timeout`.
fn can_connect(lab: &Lab, i: usize, to: SocketAddr, timeout: Duration) -> bool {
    lab.run_in(i, move || TcpStream::connect_timeout(&to, timeout).is_ok())
        .expect("run in namespace")
}

#[test]
fn lab_nodes_reach_each_other_and_the_host() {
    let Some(lab) = lab("lab_nodes_reach_each_other_and_the_host", "nlreach", 3) else {
        return;
    };
    assert_eq!(lab.ns_name(2), "nlreach-2");
    let addrs: Vec<SocketAddr> = (1..=3).map(|j| listen_in(&lab, j)).collect();
    for i in 1..=3 {
        for j in 1..=3 {
            assert!(
                can_connect(&lab, i, addrs[j - 1], Duration::from_secs(2)),
                "{i} -> {j}"
            );
        }
    }
    // The root namespace reaches every node, and every node reaches it.
    let host = TcpListener::bind((lab.host_ip(), 0)).expect("bind host");
    let host_addr = host.local_addr().expect("addr");
    for i in 1..=3 {
        assert!(TcpStream::connect_timeout(&addrs[i - 1], Duration::from_secs(2)).is_ok());
        assert!(can_connect(&lab, i, host_addr, Duration::from_secs(2)));
    }
    // Commands run inside the namespace.
    let out = lab
        .command(1, "ip")
        .args(["-4", "-o", "addr", "show", "dev", lab.node_dev()])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", lab.ip(1))), "{text}");
    let has_ping = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ping").is_file()))
        .unwrap_or(false);
    if has_ping {
        let o = lab
            .command(1, "ping")
            .args(["-c", "1", "-W", "2", &lab.ip(2).to_string()])
            .output()
            .expect("run ping");
        assert!(o.status.success(), "ping failed: {o:?}");
    } else {
        eprintln!("ping is not installed; reachability was checked with TCP connects only");
    }
}

#[test]
fn lab_multicast_reaches_every_node() {
    let Some(lab) = lab("lab_multicast_reaches_every_node", "nlmcast", 3) else {
        return;
    };
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut receivers = Vec::new();
    for j in [2, 3] {
        let ip = lab.ip(j);
        let ready = ready_tx.clone();
        receivers.push(
            lab.spawn_in(j, move || {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)).expect("bind 5353");
                s.join_multicast_v4(&group, &ip).expect("join group");
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                ready.send(()).expect("ready");
                let mut buf = [0u8; 64];
                let (n, from) = s.recv_from(&mut buf).expect("multicast datagram");
                (buf[..n].to_vec(), from)
            })
            .expect("spawn receiver"),
        );
    }
    for _ in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver ready");
    }
    let src = lab.ip(1);
    lab.run_in(1, move || {
        let s = UdpSocket::bind((src, 0)).expect("bind sender");
        s.set_multicast_ttl_v4(1).expect("ttl");
        for _ in 0..3 {
            s.send_to(b"hello mdns", (group, 5353))
                .expect("send to group");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .expect("sender");
    for r in receivers {
        let (data, from) = r.join().expect("receiver thread").expect("setns");
        assert_eq!(data, b"hello mdns");
        assert_eq!(from.ip(), src);
    }
}

/// Mbit/s of a TCP transfer from node `from` to `to`, measured by the receiver over
/// `window` after a short ramp-up.
fn tcp_mbit(lab: &Lab, from: usize, to: usize, window: Duration) -> f64 {
    let ip = lab.ip(to);
    let (tx, rx) = mpsc::channel();
    let receiver = lab
        .spawn_in(to, move || {
            let l = TcpListener::bind((ip, 0)).expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send");
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = vec![0u8; 64 * 1024];
            let ramp = Duration::from_millis(300);
            let mut start = None;
            let mut bytes = 0u64;
            loop {
                let n = s.read(&mut buf).expect("read");
                let now = Instant::now();
                let first = *start.get_or_insert(now);
                if n == 0 {
                    break;
                }
                if now - first >= ramp {
                    bytes += n as u64;
                }
                if now - first >= ramp + window {
                    break;
                }
            }
            bytes as f64 * 8.0 / window.as_secs_f64() / 1e6
        })
        .expect("spawn receiver");
    let addr = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver up");
    lab.run_in(from, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        let block = vec![0u8; 64 * 1024];
        let t = Instant::now();
        // Until the receiver hangs up (a write error), bounded in case it never does.
        while t.elapsed() < Duration::from_secs(15) && s.write_all(&block).is_ok() {}
    })
    .expect("sender");
    receiver.join().expect("receiver").expect("setns")
}

#[test]
fn lab_rate_limit_reads_back_and_is_reversible() {
    let _t = timing();
    let Some(lab) = lab("lab_rate_limit_reads_back_and_is_reversible", "nlrate", 3) else {
        return;
    };
    lab.rate_limit(1, 2, 10).expect("rate limit");
    let w = Duration::from_secs(2);
    let there = tcp_mbit(&lab, 1, 2, w);
    let back = tcp_mbit(&lab, 2, 1, w);
    let other = tcp_mbit(&lab, 1, 3, Duration::from_millis(500));
    eprintln!("10 Mbit limit reads {there:.2} (1->2), {back:.2} (2->1); unlimited 1->3 {other:.0}");
    for r in [there, back] {
        assert!((7.5..=12.5).contains(&r), "{r:.2} Mbit/s");
    }
    assert!(other > 40.0, "unlimited pair at {other:.1} Mbit/s");
    lab.rate_limit(2, 1, 50).expect("change rate");
    let changed = tcp_mbit(&lab, 1, 2, w);
    eprintln!("changed to 50 Mbit: reads {changed:.2}");
    assert!((37.5..=62.5).contains(&changed), "{changed:.2} Mbit/s");
    lab.clear_rate_limit(1, 2).expect("clear");
    let cleared = tcp_mbit(&lab, 1, 2, Duration::from_millis(500));
    assert!(cleared > 100.0, "after clearing: {cleared:.1} Mbit/s");
    assert!(matches!(
        lab.rate_limit(1, 1, 5),
        Err(LabError::SameNode(1))
    ));
    assert!(matches!(
        lab.rate_limit(1, 4, 5),
        Err(LabError::NoSuchNode { index: 4, n: 3 })
    ));
}

/// The share of `count` numbered datagrams from `from` to `to` that did not arrive.
fn udp_loss(lab: &Lab, from: usize, to: usize, count: u32) -> f64 {
    let ip = lab.ip(to);
    let (tx, rx) = mpsc::channel();
    let receiver = lab
        .spawn_in(to, move || {
            let s = UdpSocket::bind((ip, 0)).expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            tx.send(s.local_addr().expect("addr")).expect("send");
            let mut seen = BTreeSet::new();
            let mut buf = [0u8; 64];
            while let Ok(n) = s.recv(&mut buf) {
                if n == 4 {
                    seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            seen.len() as u32
        })
        .expect("spawn receiver");
    let addr = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver up");
    let src = lab.ip(from);
    lab.run_in(from, move || {
        let s = UdpSocket::bind((src, 0)).expect("bind");
        for k in 0..count {
            s.send_to(&k.to_be_bytes(), addr).expect("send");
            // Paced so that no socket buffer overflows: only the rule may drop.
            std::thread::sleep(Duration::from_micros(100));
        }
    })
    .expect("sender");
    let got = receiver.join().expect("receiver").expect("setns");
    1.0 - f64::from(got) / f64::from(count)
}

#[test]
fn lab_drop_percent_reads_back_and_is_reversible() {
    // A starved receiver would overflow its socket buffer and read as extra loss.
    let _t = timing();
    let Some(lab) = lab("lab_drop_percent_reads_back_and_is_reversible", "nldrop", 3) else {
        return;
    };
    lab.drop_percent(1, 2, 20).expect("drop");
    let there = udp_loss(&lab, 1, 2, 1000);
    let back = udp_loss(&lab, 2, 1, 1000);
    let other = udp_loss(&lab, 1, 3, 1000);
    eprintln!(
        "20% drop reads {:.1}% (1->2), {:.1}% (2->1); other pair {:.1}%",
        there * 100.0,
        back * 100.0,
        other * 100.0
    );
    // The standard deviation of 1000 draws at 20% is 1.3 points.
    for l in [there, back] {
        assert!((0.15..=0.25).contains(&l), "{:.1}%", l * 100.0);
    }
    assert_eq!(other, 0.0);
    lab.drop_percent(2, 1, 0).expect("undo");
    assert_eq!(udp_loss(&lab, 1, 2, 300), 0.0);
    assert!(matches!(
        lab.drop_percent(1, 2, 101),
        Err(LabError::InvalidPercent(101))
    ));
}

#[test]
fn lab_partition_blocks_and_heal_restores() {
    let Some(lab) = lab("lab_partition_blocks_and_heal_restores", "nlpart", 4) else {
        return;
    };
    let addrs: Vec<SocketAddr> = (1..=4).map(|j| listen_in(&lab, j)).collect();
    // Blocked connects give up after `t`; allowed ones get longer so that a loaded machine
    // cannot fail them.
    let t = Duration::from_millis(500);
    let ok = Duration::from_secs(3);
    // A drop rule in the same table must survive partition and heal.
    lab.drop_percent(1, 3, 1).expect("a drop rule alongside");
    lab.partition(&[1, 2], &[3, 4]).expect("partition");
    assert!(can_connect(&lab, 1, addrs[1], ok), "1 -> 2 inside a side");
    assert!(can_connect(&lab, 3, addrs[3], ok), "3 -> 4 inside a side");
    for (i, j) in [(1, 3), (2, 4), (4, 1), (3, 2)] {
        assert!(!can_connect(&lab, i, addrs[j - 1], t), "{i} -> {j} across");
    }
    lab.heal().expect("heal");
    for (i, j) in [(1, 3), (2, 4), (4, 1), (3, 2)] {
        assert!(
            can_connect(&lab, i, addrs[j - 1], ok),
            "{i} -> {j} after heal"
        );
    }
    assert!(matches!(
        lab.partition(&[1, 2], &[2]),
        Err(LabError::BothSides(2))
    ));
}

#[test]
fn lab_relay_adds_delay_between_namespaces() {
    let _t = timing();
    let Some(lab) = lab("lab_relay_adds_delay_between_namespaces", "nlrelay", 2) else {
        return;
    };
    // The echo server lives in node 2; node 1 reaches it only through the relay on the host.
    let ip2 = lab.ip(2);
    let echo = lab
        .run_in(2, move || {
            tcp_echo(SocketAddr::V4(SocketAddrV4::new(ip2, 0)))
        })
        .expect("echo in node 2");
    let relay = Relay::tcp(
        SocketAddr::new(lab.host_ip().into(), 0),
        echo,
        Duration::from_millis(20),
    )
    .expect("relay");
    let via = relay.local_addr();
    let direct = lab
        .run_in(1, move || {
            let mut s = TcpStream::connect(echo).expect("direct");
            tcp_rtt(&mut s, 10)
        })
        .expect("node 1");
    let relayed = lab
        .run_in(1, move || {
            let mut s = TcpStream::connect(via).expect("via relay");
            tcp_rtt(&mut s, 10)
        })
        .expect("node 1");
    eprintln!("node 1 -> node 2 rtt: direct {direct:.3} ms, via 20 ms relay {relayed:.2} ms");
    assert!(direct < 5.0);
    assert!((38.0..=46.0).contains(&relayed), "{relayed:.2} ms");
}

fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for line in run(&["ip", "netns", "list"]).lines() {
        if line.starts_with(&format!("{prefix}-")) {
            found.push(format!("netns {line}"));
        }
    }
    for line in run(&["ip", "-o", "link", "show"]).lines() {
        if line.contains(&format!(": {prefix}-")) {
            found.push(format!("link {line}"));
        }
    }
    if run(&["nft", "list", "tables"]).contains(&format!("hearth_netlab_{prefix}")) {
        found.push("nft table".into());
    }
    found
}

#[test]
fn lab_drop_removes_everything_also_after_a_panic() {
    let Some(lab) = lab(
        "lab_drop_removes_everything_also_after_a_panic",
        "nlclean",
        3,
    ) else {
        return;
    };
    lab.rate_limit(1, 2, 5).expect("rate");
    lab.drop_percent(2, 3, 5).expect("drop");
    lab.partition(&[1], &[3]).expect("partition");
    assert!(!leftovers("nlclean").is_empty());
    drop(lab);
    assert_eq!(leftovers("nlclean"), Vec::<String>::new());

    let panicked = std::thread::spawn(|| {
        let lab = Lab::new("nlpanic", 2).expect("lab");
        lab.drop_percent(1, 2, 50).expect("drop");
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(leftovers("nlpanic"), Vec::<String>::new());
}

#[test]
fn lab_new_removes_stale_leftovers_and_refuses_a_live_owner() {
    let Some(first) = lab(
        "lab_new_removes_stale_leftovers_and_refuses_a_live_owner",
        "nlstale",
        1,
    ) else {
        return;
    };
    // A second lab with a live owner's prefix must not tear the first one down.
    assert!(matches!(
        Lab::new("nlstale", 1),
        Err(LabError::InUse { .. })
    ));
    drop(first);
    // What a killed run leaves: a namespace and a bridge owned by a dead process.
    let sh = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip {args:?}");
    };
    sh(&["netns", "add", "nlstale-7"]);
    sh(&["link", "add", "nlstale-br", "type", "bridge"]);
    sh(&[
        "link",
        "set",
        "dev",
        "nlstale-br",
        "alias",
        "hearth-netlab pid=4000000000",
    ]);
    let lab = Lab::new("nlstale", 2).expect("new over leftovers");
    assert!(leftovers("nlstale")
        .iter()
        .all(|l| !l.contains("nlstale-7")));
    drop(lab);
    assert_eq!(leftovers("nlstale"), Vec::<String>::new());
}
