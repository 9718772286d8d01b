use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

use crate::key::ClusterKey;

/// Everything a node needs to start. `Default` gives loopback-free, mDNS-on settings with a
/// data dir under the current directory; the binary fills in the rest from its flags.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Holds `node.key` (identity) and, when generated, `cluster.key`.
    pub data_dir: PathBuf,
    /// e.g. `/ip4/0.0.0.0/udp/52414/quic-v1`, `/ip4/0.0.0.0/tcp/52414`.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled with retry and backoff, whether or not mDNS finds them.
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    /// Take and open lanes: direct sealed TCP connections for latency-bound frames
    /// ([`crate::LaneSender`]). Off, everything goes over the libp2p connection.
    pub lanes: bool,
    pub cluster_key: ClusterKey,
    /// Human name shown to other members; truncated to [`MAX_NAME_LEN`] bytes.
    pub node_name: String,
    pub limits: Limits,
    pub link_probe: LinkProbeConfig,
}

pub const MAX_NAME_LEN: usize = 64;

impl NetConfig {
    pub fn new(data_dir: impl Into<PathBuf>, cluster_key: ClusterKey) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr"),
            ],
            peers: Vec::new(),
            mdns: true,
            lanes: true,
            cluster_key,
            node_name: "hearth".into(),
            limits: Limits::default(),
            link_probe: LinkProbeConfig::default(),
        }
    }
}

/// Sizes, queue depths and time limits. Every queue in the crate is bounded by one of these.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest gossip payload accepted or sent.
    pub max_gossip_bytes: usize,
    /// Largest direct message (`NetHandle::send`).
    pub max_message_bytes: usize,
    /// Largest frame on a data stream.
    pub max_frame_bytes: usize,
    /// Depth of the event channel handed to the caller; events beyond it are dropped and
    /// counted rather than stalling the network loop.
    pub event_queue: usize,
    /// Depth of the command channel from `NetHandle` to the network loop.
    pub command_queue: usize,
    /// A connection whose peer has not completed admission by then is closed.
    pub admission_timeout: Duration,
    /// First retry delay for `peers`; doubles per failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Connections without traffic are closed after this long.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_gossip_bytes: 256 * 1024,
            max_message_bytes: 1024 * 1024,
            max_frame_bytes: 16 * 1024 * 1024,
            event_queue: 1024,
            command_queue: 256,
            admission_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// How links to admitted peers are measured. Defaults keep probing to about 1 % of a 50 Mbit/s
/// link: 1 MiB every 15 s is ~0.56 Mbit/s on average. Smaller transfers read low on shaped
/// links, where the shaper's burst and the first round trips weigh on a short transfer.
#[derive(Debug, Clone)]
pub struct LinkProbeConfig {
    pub enabled: bool,
    /// Interval of libp2p ping; each reply is one RTT sample.
    pub ping_interval: Duration,
    /// RTT samples kept per peer for p50/p95.
    pub rtt_window: usize,
    /// How often a `LinkMeasured` event is emitted per peer (and a loss round is run).
    pub report_interval: Duration,
    /// How often a throughput transfer runs per peer.
    pub throughput_interval: Duration,
    pub throughput_bytes: usize,
    /// Numbered UDP datagrams per loss round and the gap between them.
    pub loss_packets: u32,
    pub loss_spacing: Duration,
    /// How long to wait for the last echo of a loss round.
    pub loss_wait: Duration,
}

impl Default for LinkProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ping_interval: Duration::from_secs(1),
            rtt_window: 64,
            report_interval: Duration::from_secs(5),
            throughput_interval: Duration::from_secs(15),
            throughput_bytes: 1024 * 1024,
            loss_packets: 50,
            loss_spacing: Duration::from_millis(20),
            loss_wait: Duration::from_millis(500),
        }
    }
}
