//! Model files on this node: the ones it holds (served to peers from a [`ModelStore`]), the
//! lookup of a wanted model's file by hash, and fetching it (or just the byte ranges a stage
//! reads, or just the header for the tokenizer) from peers that have it, before falling back
//! to the model's catalog source.

use super::models::{store_path, HashCache};
use hearth_cluster::{ClusterState, NodeId, WantedModel};
use hearth_net::{DataStream, NetHandle, PeerId};
use hearth_transfer::{
    fetch_header, local_copy, request_manifest, shard_ranges, ChannelError, Digest, Fetch,
    FetchConfig, FetchEvent, LocalCopy, Manifest, ModelRef, ModelStore, Progress, Source,
    STREAM_TAG,
};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the node knows of model files, shared by its stage runner, API and request paths.
pub struct LocalModels {
    pub data_dir: PathBuf,
    pub hashes: HashCache,
    /// Complete files this node serves to peers.
    pub store: ModelStore,
    net: NetHandle,
    me: NodeId,
    runtime: tokio::runtime::Handle,
    /// One fetch per file at a time (the stage and the API may both want one).
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Where a fetch stands, for the stage's loading progress.
pub type OnProgress<'a> = &'a (dyn Fn(Progress) + Sync);

impl LocalModels {
    pub fn new(
        data_dir: PathBuf,
        net: NetHandle,
        me: NodeId,
        runtime: tokio::runtime::Handle,
    ) -> LocalModels {
        LocalModels {
            data_dir,
            hashes: HashCache::default(),
            store: ModelStore::new(),
            net,
            me,
            runtime,
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// Hashes `path` into a manifest and serves it to peers. Blocking.
    pub fn offer(&self, path: &Path) -> Result<Manifest, String> {
        let manifest = self.hashes.manifest(path)?;
        self.store
            .insert(path, manifest.clone())
            .map_err(|e| e.to_string())?;
        Ok(manifest)
    }

    /// A complete local file with the wanted model's bytes: one this node serves, the
    /// catalog model the requester named if downloaded here, or a finished fetch in the
    /// node's store. Blocking (a candidate is hashed once).
    pub fn find(&self, model: &WantedModel) -> Option<PathBuf> {
        let sha: Digest = model.sha256.parse().ok()?;
        if let Some((path, _)) = self
            .store
            .list()
            .into_iter()
            .find(|(_, m)| m.sha256() == sha)
        {
            return Some(path);
        }
        let catalog = hearth_model::catalog::resolve(&model.source)
            .ok()
            .map(|r| r.path);
        let stored = store_path(&self.data_dir, &model.sha256);
        for path in catalog.into_iter().chain([stored]) {
            if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(model.size_bytes) {
                continue;
            }
            match self.hashes.manifest(&path) {
                Ok(m) if m.sha256() == sha => {
                    if let Err(e) = self.store.insert(&path, m) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot serve a local copy of the model");
                    }
                    return Some(path);
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "a local copy of the model differs from the cluster's; not used")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a local copy of the model")
                }
            }
        }
        None
    }

    /// A file holding what a stage of `layers` reads (all of it, or `None` for the header
    /// only): a complete local copy, else fetched from peers into the node's store (a sparse
    /// partial file when only some ranges are needed), else pulled from the catalog. Blocking.
    pub fn obtain(
        &self,
        model: &WantedModel,
        layers: Option<Range<usize>>,
        state: &ClusterState,
        on_progress: OnProgress<'_>,
    ) -> Result<PathBuf, String> {
        if let Some(path) = self.find(model) {
            return Ok(path);
        }
        let lock = {
            let mut f = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(f.entry(model.sha256.clone()).or_default())
        };
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.fetch(model, layers, state, on_progress) {
            Ok(path) => Ok(path),
            Err(fetch_error) => {
                if hearth_model::catalog::find(&model.source).is_none() {
                    return Err(fetch_error);
                }
                tracing::warn!(model = %model.name, error = %fetch_error, "no peer could send the model; pulling it from its catalog source");
                crate::cli::model::resolve_or_pull(&model.source)
                    .map_err(|e| format!("{fetch_error}; the catalog pull failed too: {e:#}"))?;
                self.find(model)
                    .ok_or_else(|| "the pulled file differs from the cluster's".to_string())
            }
        }
    }

    /// Peers that may have the file: the requester first (it holds it), then every other
    /// member.
    fn peers(&self, model: &WantedModel, state: &ClusterState) -> Vec<PeerId> {
        std::iter::once(&model.requested_by)
            .chain(state.members.keys().filter(|n| **n != model.requested_by))
            .filter(|n| **n != self.me)
            .filter_map(|n| n.as_str().parse().ok())
            .collect()
    }

    fn fetch(
        &self,
        model: &WantedModel,
        layers: Option<Range<usize>>,
        state: &ClusterState,
        on_progress: OnProgress<'_>,
    ) -> Result<PathBuf, String> {
        let sha: Digest = model
            .sha256
            .parse()
            .map_err(|e| format!("bad model hash: {e}"))?;
        let dest = store_path(&self.data_dir, &model.sha256);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let peers = self.peers(model, state);
        if peers.is_empty() {
            return Err("no peer to fetch the model from".into());
        }
        let mut sources: Vec<Source<DataStream>> = peers
            .iter()
            .map(|&peer| {
                let net = self.net.clone();
                Source::new(peer.to_string(), move || open(net.clone(), peer))
            })
            .collect();
        let config = FetchConfig::default();
        let name = model.name.clone();
        let log = move |e: &FetchEvent| match e {
            FetchEvent::ChunkCorrupt { .. } | FetchEvent::ResumedChunkBad { .. } => {
                tracing::warn!(model = %name, event = ?e, "a chunk failed verification; fetching it again")
            }
            other => tracing::info!(model = %name, event = ?other, "model transfer"),
        };
        self.runtime.block_on(async {
            let manifest = manifest_from(&self.net, &peers, sha).await?;
            if manifest.size() != model.size_bytes {
                return Err(format!(
                    "peers describe the model as {} bytes, the cluster as {}",
                    manifest.size(),
                    model.size_bytes
                ));
            }
            let header = fetch_header(&manifest, &dest, &mut sources, &config, &log)
                .await
                .map_err(|e| e.to_string())?;
            let ranges = match &layers {
                Some(l) => shard_ranges(&header, l.clone()).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            let started = std::time::Instant::now();
            if !ranges.is_empty() {
                let fetch = Fetch::new(manifest.clone(), &dest)
                    .ranges(ranges)
                    .config(config.clone());
                let mut progress = fetch.progress();
                let run = fetch.run(&mut sources, &log);
                tokio::pin!(run);
                let report = loop {
                    tokio::select! {
                        r = &mut run => break r.map_err(|e| e.to_string())?,
                        changed = progress.changed() => {
                            if changed.is_ok() {
                                on_progress(*progress.borrow());
                            }
                        }
                    }
                };
                tracing::info!(
                    model = %model.name,
                    complete = report.complete,
                    fetched_chunks = report.fetched_chunks,
                    resumed_chunks = report.resumed_chunks,
                    corrupt_chunks = report.corrupt_chunks + report.resumed_bad,
                    seconds = started.elapsed().as_secs_f64(),
                    "model file fetched from peers"
                );
                if report.complete {
                    let _ = self.store.insert(&report.path, manifest.clone());
                }
            }
            match local_copy(&dest).map_err(|e| e.to_string())? {
                LocalCopy::Complete { path } | LocalCopy::Partial { path, .. } => Ok(path),
                LocalCopy::Absent => Err("the fetch left no file".to_string()),
            }
        })
    }
}

/// A data stream to `peer` for the transfer protocol.
async fn open(net: NetHandle, peer: PeerId) -> Result<DataStream, ChannelError> {
    let mut s = net.open_stream(peer).await?;
    s.send(STREAM_TAG).await?;
    Ok(s)
}

/// The manifest of the file with hash `sha`, from the first peer that has it.
async fn manifest_from(net: &NetHandle, peers: &[PeerId], sha: Digest) -> Result<Manifest, String> {
    let mut errors = Vec::new();
    for &peer in peers {
        let name = peer.to_string();
        let attempt = async {
            let mut ch = open(net.clone(), peer).await.map_err(|e| e.to_string())?;
            request_manifest(&mut ch, &ModelRef::Sha256(sha))
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), attempt).await {
            Ok(Ok(m)) if m.sha256() == sha => return Ok(m),
            Ok(Ok(_)) => errors.push(format!("{name}: a manifest for another file")),
            Ok(Err(e)) => errors.push(format!("{name}: {e}")),
            Err(_) => errors.push(format!("{name}: no answer within 30 s")),
        }
    }
    Err(format!("no peer has the model file: {}", errors.join("; ")))
}
