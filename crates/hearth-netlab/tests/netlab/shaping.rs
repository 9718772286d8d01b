use hearth_netlab::shaping::{burst_bytes, Shaping};
use std::net::Ipv4Addr;

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, i as u8)
}

#[test]
fn empty_ruleset_only_removes_the_table() {
    let s = Shaping::default();
    assert_eq!(
        s.nft_ruleset("t", ip),
        "table bridge t {}\ndelete table bridge t\n"
    );
}

#[test]
fn ruleset_drops_both_ways_and_partitions() {
    let mut s = Shaping::default();
    s.set_drop(2, 1, 5);
    s.set_partition(&[1, 2], &[3]);
    let r = s.nft_ruleset("t", ip);
    assert!(r.contains("type filter hook forward priority 0; policy accept;"));
    assert!(r.contains("ip saddr 10.77.0.1 ip daddr 10.77.0.2 numgen random mod 100 lt 5 drop"));
    assert!(r.contains("ip saddr 10.77.0.2 ip daddr 10.77.0.1 numgen random mod 100 lt 5 drop"));
    assert!(r.contains("ip saddr { 10.77.0.1, 10.77.0.2 } ip daddr { 10.77.0.3 } drop"));
    assert!(r.contains("ip saddr { 10.77.0.3 } ip daddr { 10.77.0.1, 10.77.0.2 } drop"));
    s.heal();
    s.set_drop(1, 2, 0);
    assert_eq!(
        s.nft_ruleset("t", ip),
        Shaping::default().nft_ruleset("t", ip)
    );
}

#[test]
fn tc_commands_filter_each_limited_peer() {
    let mut s = Shaping::default();
    s.set_rate(1, 2, 10);
    s.set_rate(3, 1, 50);
    assert!(s.tc_commands(4, "eth0", ip).is_empty());
    let c = s.tc_commands(1, "eth0", ip);
    let lines: Vec<String> = c.iter().map(|a| a.join(" ")).collect();
    assert_eq!(lines[0], "qdisc add dev eth0 root handle 1: htb");
    assert!(lines.contains(
        &"class add dev eth0 parent 1: classid 1:2 htb rate 10mbit ceil 10mbit burst 16384 cburst 16384"
            .to_string()
    ));
    assert!(lines.contains(
        &"filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.77.0.3/32 flowid 1:3"
            .to_string()
    ));
    assert_eq!(lines.len(), 5);
    // The other end shapes its own egress back towards node 1.
    let back: Vec<String> = s
        .tc_commands(2, "eth0", ip)
        .iter()
        .map(|a| a.join(" "))
        .collect();
    assert!(back
        .iter()
        .any(|l| l.contains("match ip dst 10.77.0.1/32 flowid 1:1")));
    s.clear_rate(2, 1);
    assert!(s.tc_commands(2, "eth0", ip).is_empty());
}

#[test]
fn burst_is_ten_ms_with_a_floor() {
    assert_eq!(burst_bytes(1), 16 * 1024);
    assert_eq!(burst_bytes(100), 125_000);
}

#[test]
fn bad_prefixes_are_refused_before_touching_the_system() {
    for p in ["", "Upper", "1abc", "far-too-long", "a_b"] {
        assert!(
            matches!(
                hearth_netlab::Lab::new(p, 1),
                Err(hearth_netlab::LabError::InvalidPrefix(_))
            ),
            "{p:?}"
        );
    }
    assert!(matches!(
        hearth_netlab::Lab::new("ok", 0),
        Err(hearth_netlab::LabError::InvalidCount(0))
    ));
}
