//! Loopback integration tests: several nodes in one process, mDNS off, peers listed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_net::{
    start, ClusterKey, Limits, LinkProbeConfig, Multiaddr, NetConfig, NetEvent, NetHandle, PeerId,
};
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);

fn data_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-net-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(
    dir: PathBuf,
    key: &ClusterKey,
    name: &str,
    peers: Vec<Multiaddr>,
    tcp: bool,
) -> NetConfig {
    let mut c = NetConfig::new(dir, key.clone());
    c.listen = vec![if tcp {
        "/ip4/127.0.0.1/tcp/0"
    } else {
        "/ip4/127.0.0.1/udp/0/quic-v1"
    }
    .parse()
    .unwrap()];
    c.peers = peers;
    c.mdns = false;
    c.node_name = name.into();
    c.limits = Limits {
        admission_timeout: Duration::from_secs(3),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        ..Limits::default()
    };
    c.link_probe = LinkProbeConfig {
        ping_interval: Duration::from_millis(200),
        report_interval: Duration::from_millis(500),
        throughput_interval: Duration::from_secs(2),
        loss_packets: 10,
        loss_spacing: Duration::from_millis(2),
        loss_wait: Duration::from_millis(100),
        ..LinkProbeConfig::default()
    };
    c
}

struct Node {
    h: NetHandle,
    rx: Receiver<NetEvent>,
}

async fn node(tag: &str, key: &ClusterKey, peers: Vec<Multiaddr>, tcp: bool) -> Node {
    node_with(tag, key, peers, tcp, |_| {}).await
}

async fn node_with(
    tag: &str,
    key: &ClusterKey,
    peers: Vec<Multiaddr>,
    tcp: bool,
    f: impl FnOnce(&mut NetConfig),
) -> Node {
    let mut c = config(data_dir(tag), key, tag, peers, tcp);
    f(&mut c);
    let (h, rx) = start(c).await.expect("start");
    Node { h, rx }
}

fn addr(n: &Node) -> Multiaddr {
    n.h.listen_addrs()[0].clone()
}

/// Waits until `pred` holds on the handle, draining events meanwhile (kept for inspection).
async fn until(
    n: &mut Node,
    what: &str,
    mut pred: impl FnMut(&NetHandle, &NetEvent) -> bool,
) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), n.rx.recv()).await {
            Ok(Some(ev)) => {
                if pred(&n.h, &ev) {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(_) => {}
        }
    }
    panic!("timed out waiting for {what}");
}

async fn mesh(nodes: &mut [Node]) {
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.h.local_id()).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let full = nodes.iter().all(|n| {
            ids.iter()
                .filter(|p| **p != n.h.local_id())
                .all(|p| n.h.is_admitted(p))
        });
        if full {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no full mesh: {:?}",
            nodes.iter().map(|n| n.h.peers().len()).collect::<Vec<_>>()
        );
        for n in nodes.iter_mut() {
            while let Ok(ev) = n.rx.try_recv() {
                if let NetEvent::Refused { reason, .. } = ev {
                    eprintln!("REFUSED {reason}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn star(key: &ClusterKey, count: usize, tag: &str) -> Vec<Node> {
    let mut v = vec![node(&format!("{tag}0"), key, vec![], true).await];
    for i in 1..count {
        // Each node lists every earlier one, so the mesh does not rely on gossip discovery.
        let peers: Vec<Multiaddr> = v.iter().map(addr).collect();
        v.push(node(&format!("{tag}{i}"), key, peers, true).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_form_full_mesh_and_broadcast_reaches_all() {
    let key = ClusterKey::generate();
    let mut nodes = star(&key, 5, "mesh").await;
    mesh(&mut nodes).await;
    // Gossip subscriptions travel after admission; retry until everyone has seen one payload.
    let payload = b"hello cluster".to_vec();
    let first = nodes[0].h.local_id();
    let mut seen: HashSet<usize> = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 4 {
        assert!(Instant::now() < deadline, "broadcast reached only {seen:?}");
        let _ = nodes[0].h.broadcast(payload.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, n) in nodes.iter_mut().enumerate().skip(1) {
            while let Ok(ev) = n.rx.try_recv() {
                if let NetEvent::Message {
                    from,
                    bytes,
                    direct: false,
                } = ev
                {
                    assert_eq!(bytes, payload);
                    assert_eq!(from, first);
                    seen.insert(i);
                }
            }
        }
    }
    for n in nodes {
        assert_eq!(n.h.counters().refused_admission, 0);
        n.h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_by_every_member_and_never_heard() {
    let key = ClusterKey::generate();
    let mut nodes = star(&key, 3, "wk").await;
    mesh(&mut nodes).await;
    let peers: Vec<Multiaddr> = nodes.iter().map(addr).collect();
    let bad = node("wk-bad", &ClusterKey::generate(), peers, true).await;
    let bad_id = bad.h.local_id();
    for n in nodes.iter_mut() {
        until(
            n,
            "refusal of the wrong-key node",
            |_, ev| matches!(ev, NetEvent::Refused { peer, .. } if *peer == bad_id),
        )
        .await;
    }
    for i in 0..5 {
        let _ = bad.h.broadcast(format!("intrusion {i}").into_bytes()).await;
        for n in &nodes {
            assert!(bad.h.send(n.h.local_id(), b"x".to_vec()).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in nodes.iter_mut() {
        assert!(n.h.counters().refused_admission > 0);
        assert!(!n.h.is_admitted(&bad_id));
        while let Ok(ev) = n.rx.try_recv() {
            if let NetEvent::Message { from, .. } = ev {
                assert_ne!(from, bad_id, "a message of the refused node was delivered");
            }
            if let NetEvent::PeerAdmitted { peer, .. } = ev {
                assert_ne!(peer, bad_id);
            }
        }
    }
    assert!(bad.h.peers().is_empty());
    assert!(bad.h.counters().refused_admission > 0);
    bad.h.shutdown().await;
    for n in nodes {
        n.h.shutdown().await;
    }
}

async fn next_stream(n: &mut Node) -> hearth_net::DataStream {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no inbound stream");
        if let Ok(Some(NetEvent::Stream { stream, .. })) =
            tokio::time::timeout(Duration::from_millis(100), n.rx.recv()).await
        {
            return stream;
        }
    }
}

async fn pair(tag: &str, tcp: bool) -> (Node, Node) {
    pair_with(tag, tcp, |_| {}).await
}

/// `f` adjusts the second node's config.
async fn pair_with(tag: &str, tcp: bool, f: impl FnOnce(&mut NetConfig)) -> (Node, Node) {
    let key = ClusterKey::generate();
    let a = node(&format!("{tag}a"), &key, vec![], tcp).await;
    let b = node_with(&format!("{tag}b"), &key, vec![addr(&a)], tcp, f).await;
    let mut v = vec![a, b];
    mesh(&mut v).await;
    let b = v.pop().unwrap();
    let a = v.pop().unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_and_data_stream_round_trip() {
    for tcp in [true, false] {
        let (a, mut b) = pair(if tcp { "dm-tcp" } else { "dm-quic" }, tcp).await;
        let (ida, idb) = (a.h.local_id(), b.h.local_id());
        a.h.send(idb, b"ping direct".to_vec()).await.unwrap();
        until(&mut b, "direct message", |_, ev| matches!(ev, NetEvent::Message { from, bytes, direct: true } if *from == ida && bytes == b"ping direct")).await;

        let mut s = a.h.open_stream(idb).await.unwrap();
        let big = vec![7u8; 3 * 1024 * 1024];
        let sender = tokio::spawn(async move {
            s.send(b"first").await.unwrap();
            s.send(&big).await.unwrap();
            let echo = s.recv().await.unwrap().unwrap();
            (s, echo)
        });
        let mut r = next_stream(&mut b).await;
        assert_eq!(r.peer(), ida);
        assert_eq!(r.recv().await.unwrap().unwrap(), b"first");
        assert_eq!(r.recv().await.unwrap().unwrap().len(), 3 * 1024 * 1024);
        r.send(b"done").await.unwrap();
        let (_s, echo) = sender.await.unwrap();
        assert_eq!(echo, b"done");
        a.h.shutdown().await;
        b.h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_are_counted_not_fatal() {
    // b accepts far less than a may send, so a can push oversized input at it.
    let (a, mut b) = pair_with("junk", true, |c| {
        c.limits.max_message_bytes = 1024;
        c.limits.max_frame_bytes = 1024;
    })
    .await;
    let idb = b.h.local_id();
    // Oversized on the sending side is a typed error, nothing leaves.
    let too_big = vec![0u8; Limits::default().max_gossip_bytes + 1];
    assert!(matches!(
        a.h.broadcast(too_big).await,
        Err(hearth_net::NetError::TooLarge { .. })
    ));
    // Oversized direct message: dropped and counted by the receiver.
    a.h.send(idb, vec![1u8; 4096]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while b.h.counters().dropped_oversized == 0 {
        assert!(Instant::now() < deadline, "oversized message not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Oversized data-stream frame: the receiver gets a typed error, not a giant allocation.
    let mut s = a.h.open_stream(idb).await.unwrap();
    let writer = tokio::spawn(async move {
        let _ = s.send(&[1u8; 8]).await;
        let _ = s.send(&vec![2u8; 4096]).await;
        s
    });
    let mut r = next_stream(&mut b).await;
    assert_eq!(r.recv().await.unwrap().unwrap(), vec![1u8; 8]);
    assert!(matches!(
        r.recv().await,
        Err(hearth_net::NetError::Frame(
            hearth_net::FrameError::TooLarge { .. }
        ))
    ));
    drop(writer.await.unwrap());
    // Garbage datagrams at the loss-probe port: counted as malformed.
    let port = b.h.probe_port().expect("probe port");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u8 {
        let junk: Vec<u8> = (0..(i as usize % 40)).map(|k| k as u8 ^ i).collect();
        sock.send_to(&junk, ("127.0.0.1", port)).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while b.h.counters().dropped_malformed < 50 {
        assert!(
            Instant::now() < deadline,
            "garbage datagrams not counted: {:?}",
            b.h.counters()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still alive and working afterwards.
    a.h.send(idb, b"still here".to_vec()).await.unwrap();
    until(
        &mut b,
        "message after junk",
        |_, ev| matches!(ev, NetEvent::Message { bytes, .. } if bytes == b"still here"),
    )
    .await;
    a.h.shutdown().await;
    b.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_peer_id_and_is_readmitted() {
    let key = ClusterKey::generate();
    let a = node("rs-a", &key, vec![], true).await;
    let a_addr = addr(&a);
    let dir = data_dir("rs-b");
    let (hb, rxb) = start(config(dir.clone(), &key, "b", vec![a_addr.clone()], true))
        .await
        .unwrap();
    let id_before = hb.local_id();
    let mut v = vec![a, Node { h: hb, rx: rxb }];
    mesh(&mut v).await;
    let b = v.pop().unwrap();
    let mut a = v.pop().unwrap();
    b.h.shutdown().await;
    until(
        &mut a,
        "peer lost",
        |_, ev| matches!(ev, NetEvent::PeerLost { peer } if *peer == id_before),
    )
    .await;
    let (hb2, _rxb2) = start(config(dir, &key, "b", vec![a_addr], true))
        .await
        .unwrap();
    assert_eq!(hb2.local_id(), id_before);
    until(
        &mut a,
        "re-admission",
        |_, ev| matches!(ev, NetEvent::PeerAdmitted { peer, .. } if *peer == id_before),
    )
    .await;
    hb2.shutdown().await;
    a.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_measurement_is_finite_on_loopback() {
    let (mut a, b) = pair("link", true).await;
    let idb = b.h.local_id();
    let mut got = None;
    until(&mut a, "link measurement with throughput", |_, ev| {
        if let NetEvent::LinkMeasured {
            peer,
            rtt_p50_ms,
            rtt_p95_ms,
            throughput_mbps: Some(tp),
            loss: Some(loss),
        } = ev
        {
            if *peer == idb {
                got = Some((*rtt_p50_ms, *rtt_p95_ms, *tp, *loss));
                return true;
            }
        }
        false
    })
    .await;
    let (p50, p95, tp, loss) = got.unwrap();
    println!("loopback link: rtt p50 {p50:.3} ms p95 {p95:.3} ms, {tp:.0} Mbit/s, loss {loss}");
    assert!(p50.is_finite() && p95.is_finite() && p50 > 0.0 && p95 >= p50);
    assert!(tp.is_finite() && tp > 0.0);
    assert!((0.0..=1.0).contains(&loss));
    a.h.shutdown().await;
    b.h.shutdown().await;
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(((p * v.len() as f64).ceil() as usize).max(1) - 1).min(v.len() - 1)]
}

/// One-hop latency of a 4 KiB message over a data stream (echoed, halved), TCP and QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_4k_stream_latency() {
    for tcp in [true, false] {
        let (a, mut b) = pair(if tcp { "bench-tcp" } else { "bench-quic" }, tcp).await;
        let mut s = a.h.open_stream(b.h.local_id()).await.unwrap();
        s.send(b"hi").await.unwrap();
        let mut r = next_stream(&mut b).await;
        let echo = tokio::spawn(async move {
            while let Ok(Some(m)) = r.recv().await {
                if r.send(&m).await.is_err() {
                    break;
                }
            }
        });
        // The greeting that announced the stream comes back first.
        assert_eq!(s.recv().await.unwrap().unwrap(), b"hi");
        let msg = vec![0xA5u8; 4096];
        let mut samples = Vec::new();
        for i in 0..3000 {
            let t = Instant::now();
            s.send(&msg).await.unwrap();
            let back = s.recv().await.unwrap().unwrap();
            let dt = t.elapsed().as_secs_f64() * 1e6 / 2.0;
            assert_eq!(back.len(), 4096);
            if i >= 200 {
                samples.push(dt);
            }
        }
        let (p50, p99) = (pct(&mut samples, 0.5), pct(&mut samples, 0.99));
        println!(
            "{}: 4 KiB one-hop latency p50 {p50:.0} us, p99 {p99:.0} us ({} samples)",
            if tcp { "tcp" } else { "quic" },
            samples.len()
        );
        drop(s);
        echo.abort();
        a.h.shutdown().await;
        b.h.shutdown().await;
    }
}

/// The same over lanes: a lane each way, each end on a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_4k_lane_latency() {
    let (mut a, mut b) = pair("bench-lane", true).await;
    let mut ab = a.h.open_lane(b.h.local_id()).await.unwrap();
    let mut ab_in = next_lane(&mut b).await;
    let mut ba = b.h.open_lane(a.h.local_id()).await.unwrap();
    let mut ba_in = next_lane(&mut a).await;
    let echo = std::thread::spawn(move || {
        while let Ok(Some(m)) = ab_in.recv() {
            if ba.send(&m).is_err() {
                break;
            }
        }
    });
    let samples = tokio::task::spawn_blocking(move || {
        let msg = vec![0xA5u8; 4096];
        let mut samples = Vec::new();
        for i in 0..3000 {
            let t = Instant::now();
            ab.send(&msg).unwrap();
            let back = ba_in.recv().unwrap().unwrap();
            assert_eq!(back.len(), 4096);
            if i >= 200 {
                samples.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
        }
        samples
    });
    let mut samples = samples.await.unwrap();
    let (p50, p99) = (pct(&mut samples, 0.5), pct(&mut samples, 0.99));
    println!(
        "lane: 4 KiB one-hop latency p50 {p50:.0} us, p99 {p99:.0} us ({} samples)",
        samples.len()
    );
    a.h.shutdown().await;
    b.h.shutdown().await;
    drop(echo);
}

async fn next_lane(n: &mut Node) -> Box<hearth_net::LaneReceiver> {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no inbound lane");
        if let Ok(Some(NetEvent::Lane { lane, .. })) =
            tokio::time::timeout(Duration::from_millis(100), n.rx.recv()).await
        {
            return lane;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_carry_frames_in_order_and_refuse_connections_without_a_ticket() {
    for tcp in [true, false] {
        let (a, mut b) = pair(if tcp { "lane-tcp" } else { "lane-quic" }, tcp).await;
        let (ida, idb) = (a.h.local_id(), b.h.local_id());
        let mut tx = a.h.open_lane(idb).await.unwrap();
        assert_eq!(tx.peer(), idb);
        let mut rx = next_lane(&mut b).await;
        assert_eq!(rx.peer(), ida);
        // Lanes block: each end runs on a thread of its own, as the pipeline's do.
        let sender = std::thread::spawn(move || {
            for i in 0..200u32 {
                tx.send(&i.to_be_bytes().repeat(i as usize % 700)).unwrap();
            }
        });
        let received = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            while let Some(frame) = rx.recv().unwrap() {
                got.push(frame);
            }
            got
        });
        sender.join().unwrap();
        let got = received.await.unwrap();
        assert_eq!(got.len(), 200);
        for (i, frame) in got.iter().enumerate() {
            assert_eq!(*frame, (i as u32).to_be_bytes().repeat(i % 700));
        }

        // A connection to the lane port that shows no ticket this node gave out is closed
        // and counted, and nothing reaches the caller.
        let port = b.h.lane_port().expect("lanes are on by default");
        let mut stranger = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stranger, &[9u8; 16])
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while b.h.counters().refused_lanes == 0 {
            assert!(Instant::now() < deadline, "the stranger was never refused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.h.counters().lanes_accepted, 1);
        a.h.shutdown().await;
        b.h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_lanes_off_neither_takes_nor_opens_them() {
    let (a, b) = pair_with("lane-off", true, |c| c.lanes = false).await;
    assert!(b.h.lane_port().is_none());
    let err = a.h.open_lane(b.h.local_id()).await.unwrap_err();
    assert!(err.to_string().contains("takes no lanes"), "{err}");
    let err = b.h.open_lane(a.h.local_id()).await.unwrap_err();
    assert!(err.to_string().contains("lanes are off"), "{err}");
    // The data stream still works for everything lanes would have carried.
    a.h.open_stream(b.h.local_id()).await.unwrap();
    a.h.shutdown().await;
    b.h.shutdown().await;
}
