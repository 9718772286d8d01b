use crate::{median_ms, timing};
use hearth_netlab::Relay;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const DELAY: Duration = Duration::from_millis(20);

fn any_local() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// A TCP echo server for every connection, on `bind`.
pub fn tcp_echo(bind: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(bind).expect("bind echo");
    let addr = l.local_addr().expect("echo addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Median round trip of small messages over `s`, after one warm-up.
pub fn tcp_rtt(s: &mut TcpStream, rounds: usize) -> f64 {
    s.set_nodelay(true).expect("nodelay");
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut v = Vec::new();
    for k in 0..=rounds {
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        s.read_exact(&mut back).expect("read echo");
        if k > 0 {
            v.push(t.elapsed());
        }
    }
    median_ms(v)
}

#[test]
fn tcp_relay_adds_the_delay_each_way() {
    let _t = timing();
    let echo = tcp_echo(any_local());
    let relay = Relay::tcp(any_local(), echo, DELAY).expect("relay");
    let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
    let rtt = tcp_rtt(&mut c, 10);
    eprintln!("tcp relay rtt with 20 ms one way: {rtt:.2} ms");
    assert!((38.0..=46.0).contains(&rtt), "rtt {rtt:.2} ms");
    // The counter moves just after the write that the client has already read.
    std::thread::sleep(Duration::from_millis(50));
    let st = relay.stats();
    assert_eq!(st.flows, 1);
    assert_eq!(st.bytes_up, 11 * 64);
    assert_eq!(st.bytes_down, 11 * 64);
}

#[test]
fn tcp_relay_throughput_is_not_one_chunk_per_delay() {
    let _t = timing();
    let sink = TcpListener::bind(any_local()).expect("bind sink");
    let sink_addr = sink.local_addr().expect("addr");
    let counter = std::thread::spawn(move || {
        let (mut s, _) = sink.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        (total, Instant::now())
    });
    let relay = Relay::tcp(any_local(), sink_addr, DELAY).expect("relay");
    const TOTAL: usize = 64 * 1024 * 1024;
    let start = Instant::now();
    let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
    let block = vec![1u8; 256 * 1024];
    for _ in 0..TOTAL / block.len() {
        c.write_all(&block).expect("write");
    }
    drop(c);
    let (got, end) = counter.join().expect("sink");
    assert_eq!(got, TOTAL);
    let secs = (end - start).as_secs_f64();
    let mb_s = TOTAL as f64 / secs / 1e6;
    eprintln!("tcp relay throughput with 20 ms one way: {mb_s:.0} MB/s ({secs:.2} s for 64 MiB)");
    // One 16 KiB chunk per 20 ms would be 0.8 MB/s.
    assert!(mb_s > 20.0, "{mb_s:.1} MB/s");
    assert_eq!(relay.stats().bytes_up, TOTAL as u64);
}

#[test]
fn tcp_relay_stops_on_drop() {
    let echo = tcp_echo(any_local());
    let relay = Relay::tcp(any_local(), echo, Duration::from_millis(1)).expect("relay");
    let addr = relay.local_addr();
    let mut c = TcpStream::connect(addr).expect("connect");
    tcp_rtt(&mut c, 1);
    drop(relay);
    assert!(TcpStream::connect(addr).is_err(), "listener still open");
    // The open connection was shut down too.
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut b = [0u8; 1];
    let _ = c.write_all(b"x");
    assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
}

/// A UDP echo server on `bind`.
pub fn udp_echo(bind: SocketAddr) -> SocketAddr {
    let s = UdpSocket::bind(bind).expect("bind udp echo");
    let addr = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

pub fn udp_rtt(s: &UdpSocket, to: SocketAddr, rounds: usize) -> f64 {
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut back = [0u8; 64];
    let mut v = Vec::new();
    for k in 0..=rounds {
        let msg = [k as u8; 32];
        let t = Instant::now();
        s.send_to(&msg, to).expect("send");
        let (n, _) = s.recv_from(&mut back).expect("echo");
        assert_eq!(&back[..n], &msg);
        if k > 0 {
            v.push(t.elapsed());
        }
    }
    median_ms(v)
}

#[test]
fn udp_relay_adds_the_delay_each_way_per_client() {
    let _t = timing();
    let echo = udp_echo(any_local());
    let relay = Relay::udp(any_local(), echo, DELAY).expect("relay");
    let a = UdpSocket::bind(any_local()).expect("a");
    let b = UdpSocket::bind(any_local()).expect("b");
    let rtt = udp_rtt(&a, relay.local_addr(), 10);
    eprintln!("udp relay rtt with 20 ms one way: {rtt:.2} ms");
    assert!((38.0..=46.0).contains(&rtt), "rtt {rtt:.2} ms");
    // A second client gets its own upstream socket and its own replies.
    udp_rtt(&b, relay.local_addr(), 2);
    std::thread::sleep(Duration::from_millis(50));
    let st = relay.stats();
    assert_eq!(st.flows, 2);
    assert_eq!(st.datagrams_up, 14);
    assert_eq!(st.datagrams_down, 14);
    assert_eq!(st.dropped, 0);
}

#[test]
fn udp_relay_keeps_many_datagrams_in_flight() {
    let _t = timing();
    let echo = udp_echo(any_local());
    let relay = Relay::udp(any_local(), echo, DELAY).expect("relay");
    let c = UdpSocket::bind(any_local()).expect("c");
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let start = Instant::now();
    for k in 0..200u32 {
        c.send_to(&k.to_be_bytes(), relay.local_addr())
            .expect("send");
    }
    let mut buf = [0u8; 16];
    let mut order = Vec::new();
    for _ in 0..200 {
        let (n, _) = c.recv_from(&mut buf).expect("echo");
        assert_eq!(n, 4);
        order.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    eprintln!("200 datagrams through a 20 ms relay and back: {ms:.1} ms");
    // Serialised, this would take 200 × 40 ms.
    assert!(ms < 200.0, "{ms:.1} ms");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "reordered");
}
