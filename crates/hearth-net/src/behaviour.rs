use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
use libp2p::{gossipsub, identify, mdns, ping};

/// The protocols a hearth node speaks. Everything of hearth's own (admission, direct messages,
/// data streams, throughput probes) runs over `stream`; gossip, identify, ping and mDNS are
/// libp2p's.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub stream: libp2p_stream::Behaviour,
}

/// Identify's protocol version: nodes that speak another one are not hearth nodes.
pub const IDENTIFY_PROTOCOL: &str = "/hearth/id/1";

/// Identify's agent string carries the version and the public cluster id, so a node of another
/// cluster is recognised (and dropped) before admission even starts.
pub fn agent_version(cluster_id: &str) -> String {
    format!("hearth/{} cluster/{cluster_id}", env!("CARGO_PKG_VERSION"))
}

/// The cluster id out of an agent string made by [`agent_version`].
pub fn agent_cluster_id(agent: &str) -> Option<&str> {
    let mut parts = agent.split(' ');
    parts.next()?.strip_prefix("hearth/")?;
    parts.next()?.strip_prefix("cluster/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_round_trip() {
        assert_eq!(agent_cluster_id(&agent_version("abcd")), Some("abcd"));
        assert_eq!(agent_cluster_id("rust-libp2p/0.47"), None);
        assert_eq!(agent_cluster_id(""), None);
        assert_eq!(agent_cluster_id("hearth/1"), None);
    }
}
