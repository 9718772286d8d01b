//! Serving models across the cluster.
//!
//! - [`models`]: a request to serve a model becomes a `WantedModel`; where a model file is here.
//! - [`plan`]: the coordinator places wanted models on the live fleet and re-places them.
//! - [`stages`]: every node runs the stages placed on it.
//! - [`transport`]: pipeline messages over the peer layer's data streams.
//! - [`serving`]: the API serves every model with a ready instance through the pipeline.

pub mod files;
pub mod models;
pub mod plan;
pub mod serving;
pub mod stages;
pub mod transport;

use crate::node::driver::LocalFact;
use crate::node::openai::ServedModels;
use crate::node::view::SharedView;
use files::LocalModels;
use hearth_cluster::{ClusterState, NodeId};
use hearth_net::{DataStream, NetHandle};
use hearth_pipeline::{Outbox, Owner};
use stages::{StageRunner, StageSettings};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use transport::{Transport, TransportOutbox, PIPELINE_OPENING};

/// Incoming data streams waiting for their opening frame to be read.
const STREAM_QUEUE: usize = 64;
/// How long a peer has to say what a data stream is for.
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node loop needs to drive serving.
pub struct ServingLinks {
    /// The loop publishes each new state here.
    pub states: watch::Sender<Arc<ClusterState>>,
    /// The loop hands every incoming data stream here.
    pub streams: mpsc::Sender<DataStream>,
    /// The loop hands every incoming lane here.
    pub transport: Arc<Transport>,
    pub files: Arc<LocalModels>,
}

pub struct ServingSetup {
    pub me: NodeId,
    pub data_dir: PathBuf,
    pub net: NetHandle,
    pub view: SharedView,
    pub models: ServedModels,
    pub facts: mpsc::Sender<LocalFact>,
    pub stage: StageSettings,
    /// Requests generated at once per model on this node.
    pub workers: usize,
    pub queue: usize,
}

/// Starts this node's stage runner, the API's model list upkeep and the data-stream
/// dispatcher; returns what the node loop feeds them with.
pub fn start(setup: ServingSetup) -> ServingLinks {
    let (states_tx, states_rx) = watch::channel(Arc::new(ClusterState::default()));
    let (streams_tx, streams_rx) = mpsc::channel(STREAM_QUEUE);
    let transport = Transport::new(
        setup.me.to_string(),
        setup.net.clone(),
        tokio::runtime::Handle::current(),
    );
    let out: Arc<dyn Outbox> = Arc::new(TransportOutbox(Arc::clone(&transport)));
    let salt = crate::node::driver::now_ms() ^ u64::from(std::process::id()).rotate_left(40);
    let owner = Owner::new(setup.me.to_string(), out, salt);
    transport.set_owner(&owner);
    let files = Arc::new(LocalModels::new(
        setup.data_dir.clone(),
        setup.net.clone(),
        setup.me.clone(),
        tokio::runtime::Handle::current(),
    ));
    let batch = setup.stage.batch;
    let runner = StageRunner {
        me: setup.me.clone(),
        transport: Arc::clone(&transport),
        files: Arc::clone(&files),
        facts: setup.facts,
        settings: setup.stage,
    };
    tokio::spawn(runner.run(states_rx.clone()));
    let sync = serving::ServingSync {
        view: setup.view,
        models: setup.models,
        owner,
        files: Arc::clone(&files),
        workers: setup.workers,
        queue: setup.queue,
        batch,
    };
    tokio::spawn(sync.run(states_rx));
    tokio::spawn(dispatch_streams(
        streams_rx,
        Arc::clone(&transport),
        Arc::clone(&files),
    ));
    ServingLinks {
        states: states_tx,
        streams: streams_tx,
        transport,
        files,
    }
}

/// Reads each incoming stream's opening frame and hands the stream to what it is for.
async fn dispatch_streams(
    mut streams: mpsc::Receiver<DataStream>,
    transport: Arc<Transport>,
    files: Arc<LocalModels>,
) {
    while let Some(mut stream) = streams.recv().await {
        let transport = Arc::clone(&transport);
        let files = Arc::clone(&files);
        tokio::spawn(async move {
            let peer = stream.peer();
            let opening = tokio::time::timeout(OPENING_TIMEOUT, stream.recv()).await;
            match opening {
                Ok(Ok(Some(o))) if o == PIPELINE_OPENING => transport.read_from(stream).await,
                Ok(Ok(Some(o))) if o == hearth_transfer::STREAM_TAG => {
                    match hearth_transfer::serve(&files.store, &mut stream).await {
                        Ok(stats) => tracing::debug!(%peer, ?stats, "model file served"),
                        Err(e) => tracing::warn!(%peer, error = %e, "model file transfer ended"),
                    }
                }
                Ok(Ok(Some(_))) | Ok(Err(_)) => {
                    transport.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "data stream with an unknown purpose; closed");
                }
                Ok(Ok(None)) => {}
                Err(_) => tracing::debug!(%peer, "data stream never said what it is for"),
            }
        });
    }
}
