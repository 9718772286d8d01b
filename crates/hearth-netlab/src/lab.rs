//! Building and tearing down a lab: a bridge in the root namespace and `n` namespaces, each
//! joined to it by a veth pair.

use crate::cmd::{run, run_quiet, run_with_input};
use crate::shaping::Shaping;
use crate::LabError;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

/// The interface name inside every namespace; the namespace makes it unique.
const NS_DEV: &str = "eth0";
/// Written to the bridge's `ifalias` so a later `new` can tell a live owner from leftovers.
const OWNER_TAG: &str = "hearth-netlab pid=";
const HOST_OCTET: u8 = 254;
const MAX_NODES: usize = 250;

/// Serialises subnet choice and bridge creation within one process, so two labs created
/// at the same moment by parallel tests cannot both see the same subnet as free.
static CREATE: Mutex<()> = Mutex::new(());

/// `n` network namespaces `<prefix>-1..=n` on a bridge `<prefix>-br` with the subnet
/// `10.<x>.0.0/24`: node `i` has `10.<x>.0.<i>`, the root namespace (where the test runs)
/// has `10.<x>.0.254` on the bridge. Dropping it removes everything it created.
pub struct Lab {
    prefix: String,
    n: usize,
    subnet: u8,
    /// The number of namespaces actually created, so a failed `new` cleans up what it made.
    created: usize,
    shaping: Mutex<Shaping>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("n", &self.n)
            .field("subnet", &format_args!("10.{}.0.0/24", self.subnet))
            .finish()
    }
}

impl Lab {
    /// Whether this machine can run labs: root, `ip` with namespace support, `tc`, `nft`,
    /// and bridges. `Err` carries the reason, for a test to print before it skips. The
    /// answer is worked out once per process, so parallel tests share one probe bridge.
    pub fn available() -> Result<(), String> {
        static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
        ANSWER.get_or_init(probe_available).clone()
    }

    /// Creates the bridge and `n` namespaces. `prefix` names everything (1 to 10 characters
    /// of `[a-z0-9-]`); leftovers of an earlier, dead run with the same prefix are removed
    /// first, while a live owner makes this fail with [`LabError::InUse`].
    pub fn new(prefix: &str, n: usize) -> Result<Lab, LabError> {
        validate_prefix(prefix)?;
        if n == 0 || n > MAX_NODES {
            return Err(LabError::InvalidCount(n));
        }
        let _guard = CREATE.lock().unwrap_or_else(PoisonError::into_inner);
        remove_stale(prefix)?;
        let subnet = choose_subnet(prefix)?;
        // From here on, `Drop` removes whatever was made if a later step fails.
        let mut lab = Lab {
            prefix: prefix.to_string(),
            n,
            subnet,
            created: 0,
            shaping: Mutex::new(Shaping::default()),
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let br = self.bridge_name();
        let host_cidr = format!("{}/24", self.host_ip());
        let alias = format!("{OWNER_TAG}{}", std::process::id());
        // Snooping off: without a multicast querier on the bridge, snooping could stop
        // forwarding groups such as mDNS's 224.0.0.251 once a membership report has aged out.
        run(
            "ip",
            &["link", "add", &br, "type", "bridge", "mcast_snooping", "0"],
        )?;
        run("ip", &["link", "set", "dev", &br, "alias", &alias])?;
        run("ip", &["addr", "add", &host_cidr, "dev", &br])?;
        run("ip", &["link", "set", "dev", &br, "up"])?;
        let gw = self.host_ip().to_string();
        for i in 1..=self.n {
            let ns = self.ns_name(i);
            let hv = self.host_veth(i);
            run("ip", &["netns", "add", &ns])?;
            self.created = i;
            run(
                "ip",
                &[
                    "link", "add", &hv, "type", "veth", "peer", "name", NS_DEV, "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", "dev", &hv, "master", &br, "up"])?;
            let cidr = format!("{}/24", self.ip(i));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", NS_DEV])?;
            run("ip", &["-n", &ns, "link", "set", "dev", NS_DEV, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "dev", "lo", "up"])?;
            run("ip", &["-n", &ns, "route", "add", "default", "via", &gw])?;
            // Without this route a multicast send fails with "No such device" when the
            // default route's interface is not chosen for 224.0.0.0/4.
            run(
                "ip",
                &["-n", &ns, "route", "add", "224.0.0.0/4", "dev", NS_DEV],
            )?;
        }
        Ok(())
    }

    /// The number of namespaces (nodes are `1..=n()`).
    pub fn n(&self) -> usize {
        self.n
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The address of node `i` (`10.<x>.0.<i>`). Indices outside `1..=n` give an address no
    /// node has; methods that act on a node check the index instead.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, (i.min(255)) as u8)
    }

    /// The root namespace's address on the bridge, reachable from every node; relays
    /// started by the test listen here.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, HOST_OCTET)
    }

    /// The name of node `i`'s namespace, `<prefix>-<i>`.
    pub fn ns_name(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// The bridge's name, `<prefix>-br`.
    pub fn bridge_name(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The interface name of every node inside its namespace.
    pub fn node_dev(&self) -> &'static str {
        NS_DEV
    }

    fn host_veth(&self, i: usize) -> String {
        format!("{}-v{i}", self.prefix)
    }

    fn nft_table(&self) -> String {
        format!("hearth_netlab_{}", self.prefix.replace('-', "_"))
    }

    fn check(&self, i: usize) -> Result<(), LabError> {
        if i == 0 || i > self.n {
            Err(LabError::NoSuchNode {
                index: i,
                n: self.n,
            })
        } else {
            Ok(())
        }
    }

    fn check_pair(&self, a: usize, b: usize) -> Result<(), LabError> {
        self.check(a)?;
        self.check(b)?;
        if a == b {
            return Err(LabError::SameNode(a));
        }
        Ok(())
    }

    /// `ip netns exec <ns> program`: add arguments, environment and stdio as usual.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(self.ns_name(i)).arg(program);
        c
    }

    /// Runs `f` on a new thread inside node `i`'s network namespace: sockets it opens live
    /// there and stay there after the thread ends. The rest of the process is unaffected,
    /// because `setns` with `CLONE_NEWNET` changes only the calling thread.
    pub fn spawn_in<T, F>(
        &self,
        i: usize,
        f: F,
    ) -> Result<JoinHandle<Result<T, LabError>>, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.check(i)?;
        let ns = self.ns_name(i);
        let path = format!("/run/netns/{ns}");
        let file = File::open(&path).map_err(|source| LabError::Setns {
            ns: ns.clone(),
            source,
        })?;
        std::thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn(move || {
                // SAFETY: setns on an open namespace file descriptor; it affects only this
                // thread, and the descriptor stays open until the call returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(LabError::Setns {
                        ns,
                        source: std::io::Error::last_os_error(),
                    });
                }
                drop(file);
                Ok(f())
            })
            .map_err(LabError::Thread)
    }

    /// [`Lab::spawn_in`] and wait for the result. A panic inside `f` is resumed here.
    pub fn run_in<T, F>(&self, i: usize, f: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self.spawn_in(i, f)?.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn shaping(&self) -> MutexGuard<'_, Shaping> {
        // The shaping state is plain data that is valid after any partial update.
        self.shaping.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Limits traffic between nodes `i` and `peer` to `mbit` Mbit/s in both directions
    /// (htb on each one's egress, filtered by destination); other pairs are unaffected.
    /// Calling it again changes the rate.
    pub fn rate_limit(&self, i: usize, peer: usize, mbit: u32) -> Result<(), LabError> {
        self.check_pair(i, peer)?;
        if mbit == 0 {
            return Err(LabError::InvalidRate);
        }
        let mut s = self.shaping();
        s.set_rate(i, peer, mbit);
        self.apply_tc(&s, i)?;
        self.apply_tc(&s, peer)
    }

    /// Removes the rate limit between `i` and `peer`, if any.
    pub fn clear_rate_limit(&self, i: usize, peer: usize) -> Result<(), LabError> {
        self.check_pair(i, peer)?;
        let mut s = self.shaping();
        s.clear_rate(i, peer);
        self.apply_tc(&s, i)?;
        self.apply_tc(&s, peer)
    }

    fn apply_tc(&self, s: &Shaping, node: usize) -> Result<(), LabError> {
        let ns = self.ns_name(node);
        // Deleting a root qdisc that is the default one fails harmlessly.
        run_quiet("tc", &["-n", &ns, "qdisc", "del", "dev", NS_DEV, "root"]);
        for args in s.tc_commands(node, NS_DEV, |j| self.ip(j)) {
            let mut full: Vec<&str> = vec!["-n", &ns];
            full.extend(args.iter().map(String::as_str));
            run("tc", &full)?;
        }
        Ok(())
    }

    /// Drops `pct` percent of the packets between `i` and `peer`, each direction drawn on
    /// its own (nftables `numgen random`). 0 removes the rule.
    pub fn drop_percent(&self, i: usize, peer: usize, pct: u8) -> Result<(), LabError> {
        self.check_pair(i, peer)?;
        if pct > 100 {
            return Err(LabError::InvalidPercent(pct));
        }
        let mut s = self.shaping();
        s.set_drop(i, peer, pct);
        self.apply_nft(&s)
    }

    /// Drops all traffic between the two groups until [`Lab::heal`]. A new partition
    /// replaces the previous one.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), LabError> {
        for &i in a.iter().chain(b) {
            self.check(i)?;
        }
        if let Some(&both) = a.iter().find(|i| b.contains(i)) {
            return Err(LabError::BothSides(both));
        }
        let mut s = self.shaping();
        s.set_partition(a, b);
        self.apply_nft(&s)
    }

    /// Undoes [`Lab::partition`]; drop shares stay.
    pub fn heal(&self) -> Result<(), LabError> {
        let mut s = self.shaping();
        s.heal();
        self.apply_nft(&s)
    }

    /// Removes every rate limit, drop share and partition.
    pub fn clear_shaping(&self) -> Result<(), LabError> {
        let mut s = self.shaping();
        *s = Shaping::default();
        for i in 1..=self.n {
            self.apply_tc(&s, i)?;
        }
        self.apply_nft(&s)
    }

    fn apply_nft(&self, s: &Shaping) -> Result<(), LabError> {
        let script = s.nft_ruleset(&self.nft_table(), |j| self.ip(j));
        run_with_input("nft", &["-f", "-"], Some(&script)).map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Errors are ignored: each step removes what may or may not exist, and a failure
        // here must not turn an unwinding test into an abort.
        run_quiet("nft", &["delete", "table", "bridge", &self.nft_table()]);
        for i in 1..=self.created {
            // Deleting the namespace destroys its veth end and with it the pair.
            run_quiet("ip", &["netns", "del", &self.ns_name(i)]);
            run_quiet("ip", &["link", "del", &self.host_veth(i)]);
        }
        run_quiet("ip", &["link", "del", &self.bridge_name()]);
    }
}

fn probe_available() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .ok_or_else(|| "cannot read the effective uid from /proc/self/status".to_string())?;
    if uid != "0" {
        return Err(format!("needs root (effective uid is {uid})"));
    }
    for (tool, args) in [
        ("ip", &["netns", "list"][..]),
        ("tc", &["-V"][..]),
        ("nft", &["--version"][..]),
    ] {
        run(tool, args).map_err(|e| e.to_string())?;
    }
    // The only sure test of bridge support is making one.
    let probe = format!("hnlp{}", std::process::id() % 100_000_000);
    run("ip", &["link", "add", &probe, "type", "bridge"])
        .map_err(|e| format!("cannot create a bridge: {e}"))?;
    run_quiet("ip", &["link", "del", &probe]);
    Ok(())
}

fn validate_prefix(prefix: &str) -> Result<(), LabError> {
    let ok = (1..=10).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidPrefix(prefix.to_string()))
    }
}

/// `<prefix>-<digits>`: a name this prefix's labs use for namespaces or host veths.
fn is_numbered(name: &str, stem: &str) -> bool {
    name.strip_prefix(stem)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
}

/// Removes what a dead run with this prefix left behind, after checking that the bridge's
/// owner is not alive.
fn remove_stale(prefix: &str) -> Result<(), LabError> {
    let br = format!("{prefix}-br");
    if let Ok(alias) = std::fs::read_to_string(format!("/sys/class/net/{br}/ifalias")) {
        if let Some(pid) = alias
            .trim()
            .strip_prefix(OWNER_TAG)
            .and_then(|p| p.parse::<u32>().ok())
        {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(LabError::InUse {
                    prefix: prefix.to_string(),
                    pid,
                });
            }
        }
    }
    let ns_stem = format!("{prefix}-");
    for line in run("ip", &["netns", "list"])?.lines() {
        // Lines look like "name (id: 3)" or "name".
        if let Some(name) = line.split_whitespace().next() {
            if is_numbered(name, &ns_stem) {
                run_quiet("ip", &["netns", "del", name]);
            }
        }
    }
    let veth_stem = format!("{prefix}-v");
    for line in run("ip", &["-o", "link", "show"])?.lines() {
        // "12: name@peer: <...>" or "12: name: <...>".
        if let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        {
            if is_numbered(name, &veth_stem) {
                run_quiet("ip", &["link", "del", name]);
            }
        }
    }
    run_quiet("ip", &["link", "del", &br]);
    run_quiet(
        "nft",
        &[
            "delete",
            "table",
            "bridge",
            &format!("hearth_netlab_{}", prefix.replace('-', "_")),
        ],
    );
    Ok(())
}

/// Picks `x` for `10.x.0.0/24` from the prefix and pid (so parallel runs start apart),
/// moving on past any `10.x.` already present in the root namespace's addresses or routes.
fn choose_subnet(prefix: &str) -> Result<u8, LabError> {
    let used = run("ip", &["-4", "-o", "addr", "show"])? + &run("ip", &["-4", "route", "show"])?;
    // FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
    let mut h: u32 = 0x811c_9dc5;
    for b in prefix.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h ^= std::process::id().wrapping_mul(0x9e37_79b9);
    // 10.20 .. 10.219: away from the low numbers that home and cloud networks tend to use.
    const SPAN: u32 = 200;
    for k in 0..SPAN {
        let x = 20 + ((h.wrapping_add(k)) % SPAN) as u8;
        let needle = format!("10.{x}.");
        if !used
            .split(|c: char| c.is_whitespace() || c == '/')
            .any(|w| w.starts_with(&needle))
        {
            return Ok(x);
        }
    }
    Err(LabError::NoFreeSubnet)
}
