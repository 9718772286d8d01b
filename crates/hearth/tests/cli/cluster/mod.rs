//! Clusters of real `hearth up` processes: on loopback with `--peer` (here), and in network
//! namespaces with mDNS, shaped links and partitions (`lab`, where the machine allows it).

pub(crate) mod harness;
mod lab;
mod loopback;
mod serving;
