//! The shaping state of a lab and the pure rendering of it into `tc` commands and an nftables
//! ruleset. [`crate::Lab`] keeps one [`Shaping`] and, after each change, rebuilds the affected
//! namespace's qdisc and the whole nftables table from it: rebuilding from plain data is what
//! makes every change reversible without tracking handles the kernel hands out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Node pairs are stored with the smaller index first: every shaping is symmetric.
fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// Rate limits, drop shares and a partition between lab nodes (numbered from 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shaping {
    rates: BTreeMap<(usize, usize), u32>,
    drops: BTreeMap<(usize, usize), u8>,
    partition: Option<(BTreeSet<usize>, BTreeSet<usize>)>,
}

impl Shaping {
    pub fn set_rate(&mut self, a: usize, b: usize, mbit: u32) {
        self.rates.insert(pair(a, b), mbit);
    }

    pub fn clear_rate(&mut self, a: usize, b: usize) {
        self.rates.remove(&pair(a, b));
    }

    pub fn rate(&self, a: usize, b: usize) -> Option<u32> {
        self.rates.get(&pair(a, b)).copied()
    }

    /// A share of 0 removes the rule rather than installing one that never fires.
    pub fn set_drop(&mut self, a: usize, b: usize, pct: u8) {
        if pct == 0 {
            self.drops.remove(&pair(a, b));
        } else {
            self.drops.insert(pair(a, b), pct);
        }
    }

    pub fn drop_percent(&self, a: usize, b: usize) -> Option<u8> {
        self.drops.get(&pair(a, b)).copied()
    }

    pub fn set_partition(&mut self, a: &[usize], b: &[usize]) {
        self.partition = Some((a.iter().copied().collect(), b.iter().copied().collect()));
    }

    pub fn heal(&mut self) {
        self.partition = None;
    }

    pub fn is_partitioned(&self) -> bool {
        self.partition.is_some()
    }

    /// The peers whose traffic from `node` is rate limited, with their rates.
    pub fn rates_from(&self, node: usize) -> Vec<(usize, u32)> {
        self.rates
            .iter()
            .filter_map(|(&(a, b), &r)| {
                if a == node {
                    Some((b, r))
                } else if b == node {
                    Some((a, r))
                } else {
                    None
                }
            })
            .collect()
    }

    /// `tc` argument lists that install `node`'s rate limits on `dev` (its veth, inside its
    /// namespace), to be run after the old root qdisc is deleted. Empty when `node` has none.
    ///
    /// The root is `htb` without a default class: unclassified packets are sent directly,
    /// so links to peers without a limit are untouched. One class per limited peer, chosen by
    /// a u32 filter on the destination address; egress on both ends limits both directions.
    pub fn tc_commands(
        &self,
        node: usize,
        dev: &str,
        ip: impl Fn(usize) -> Ipv4Addr,
    ) -> Vec<Vec<String>> {
        let rates = self.rates_from(node);
        if rates.is_empty() {
            return Vec::new();
        }
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut cmds = vec![s(&[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
        ])];
        for (peer, mbit) in rates {
            let classid = format!("1:{peer:x}");
            let rate = format!("{mbit}mbit");
            let burst = burst_bytes(mbit).to_string();
            cmds.push(s(&[
                "class", "add", "dev", dev, "parent", "1:", "classid", &classid, "htb", "rate",
                &rate, "ceil", &rate, "burst", &burst, "cburst", &burst,
            ]));
            let dst = format!("{}/32", ip(peer));
            cmds.push(s(&[
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", &dst, "flowid", &classid,
            ]));
        }
        cmds
    }

    /// An `nft -f` script that atomically replaces the lab's table with the current drops
    /// and partition. The table is in the `bridge` family on the forward hook, because
    /// traffic between namespaces is switched by the bridge and never routed by the host.
    /// Creating the table before deleting it makes the delete succeed when it is absent;
    /// with nothing to enforce the script just leaves no table behind.
    pub fn nft_ruleset(&self, table: &str, ip: impl Fn(usize) -> Ipv4Addr) -> String {
        let mut out = format!("table bridge {table} {{}}\ndelete table bridge {table}\n");
        let mut rules = Vec::new();
        if let Some((a, b)) = &self.partition {
            if !a.is_empty() && !b.is_empty() {
                let set = |g: &BTreeSet<usize>| {
                    g.iter()
                        .map(|&i| ip(i).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let (sa, sb) = (set(a), set(b));
                rules.push(format!("ip saddr {{ {sa} }} ip daddr {{ {sb} }} drop"));
                rules.push(format!("ip saddr {{ {sb} }} ip daddr {{ {sa} }} drop"));
            }
        }
        for (&(a, b), &pct) in &self.drops {
            // Each direction draws its own random number, so each loses `pct` percent.
            for (x, y) in [(a, b), (b, a)] {
                rules.push(format!(
                    "ip saddr {} ip daddr {} numgen random mod 100 lt {pct} drop",
                    ip(x),
                    ip(y)
                ));
            }
        }
        if rules.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n"
        ));
        for r in rules {
            out.push_str("    ");
            out.push_str(&r);
            out.push('\n');
        }
        out.push_str("  }\n}\n");
        out
    }
}

/// The htb bucket for a rate: 10 ms of traffic, but never under 16 KiB. Too small a bucket
/// and htb cannot send a full-size packet (or a GSO burst) in one go and undershoots the
/// rate; too large and short timed transfers read a rate above the limit.
pub fn burst_bytes(mbit: u32) -> u32 {
    let ten_ms = (u64::from(mbit) * 1_000_000 / 8 / 100) as u32;
    ten_ms.max(16 * 1024)
}
