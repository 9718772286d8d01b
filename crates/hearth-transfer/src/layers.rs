//! Fetching only what a shard reads: the GGUF header, then the tensors of its layers (and the
//! embedding, final norm and head when the shard is first or last).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use hearth_model::config::{ConfigError, ModelConfig};
use hearth_model::gguf::{parse_header_prefix, GgufError, GgufHeader, TensorInfo};

use crate::channel::{FrameChannel, Source};
use crate::handler::{Fetch, FetchConfig, FetchError, FetchEvent, FetchReport};
use crate::manifest::Manifest;
use crate::store::{io_err, read_exact_at, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("not a usable GGUF file: {0}")]
    Gguf(#[from] GgufError),
    #[error("cannot read the model configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("layers [{start}, {end}) are not a non-empty range within the model's {n_layers}")]
    BadLayerRange {
        start: usize,
        end: usize,
        n_layers: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Byte ranges of the file a shard of `layers` reads, sorted and merged: the header (so the
/// partial file opens as a GGUF file), every `blk.N.*` tensor for `N` in `layers`, the token
/// embedding when the shard is first, the final norm and head when it is last (the embedding
/// instead of the head when they are tied), and every tensor outside the layers and the two
/// ends (such as `rope_freqs.weight`), which any shard may read.
pub fn shard_ranges(
    header: &GgufHeader,
    layers: Range<usize>,
) -> Result<Vec<Range<u64>>, LayerError> {
    let by_name: HashMap<&str, &TensorInfo> = header
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let config = ModelConfig::from_metadata(&header.metadata, |n| by_name.get(n).copied())?;
    let n_layers = config.n_layers;
    if layers.start >= layers.end || layers.end > n_layers {
        return Err(LayerError::BadLayerRange {
            start: layers.start,
            end: layers.end,
            n_layers,
        });
    }
    let first = layers.start == 0;
    let last = layers.end == n_layers;
    let wanted = |t: &TensorInfo| -> bool {
        if let Some(rest) = t.name.strip_prefix("blk.") {
            // A block tensor whose index does not parse belongs to no shard's layers.
            return rest
                .split('.')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|l| layers.contains(&l));
        }
        match t.name.as_str() {
            "token_embd.weight" => first || (last && config.tied_embeddings),
            "output.weight" | "output_norm.weight" => last,
            _ => true,
        }
    };
    let mut ranges: Vec<Range<u64>> = std::iter::once(0..header.data_offset).collect();
    ranges.extend(header.tensors.iter().filter(|t| wanted(t)).map(|t| {
        let start = header.data_offset + t.offset;
        start..start + t.bytes
    }));
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            // Alignment padding between tensors is not worth a separate range.
            Some(m) if r.start <= m.end.next_multiple_of(header.alignment) => {
                m.end = m.end.max(r.end)
            }
            _ => merged.push(r),
        }
    }
    Ok(merged)
}

/// Fetches the start of the file until its GGUF header (metadata and tensor infos) parses:
/// the first chunk, then twice as much each round.
pub async fn fetch_header<C: FrameChannel>(
    manifest: &Manifest,
    dest: &Path,
    sources: &mut [Source<C>],
    config: &FetchConfig,
    mut on_event: impl FnMut(&FetchEvent) + Send,
) -> Result<GgufHeader, LayerError> {
    let size = manifest.size();
    let mut want = (manifest.chunk_size() as u64).min(size);
    loop {
        let report = Fetch::new(manifest.clone(), dest)
            .ranges(std::iter::once(0..want).collect())
            .config(config.clone())
            .run(sources, &mut on_event)
            .await?;
        let path = report.path.clone();
        let prefix = tokio::task::spawn_blocking(move || read_prefix(&path, want))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(header) = parse_header_prefix(&prefix, size)? {
            return Ok(header);
        }
        // parse_header_prefix only waits while the prefix is shorter than the file.
        want = (want * 2).min(size);
    }
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; len as usize];
    read_exact_at(&file, &mut buf, 0).map_err(io_err(path))?;
    Ok(buf)
}

/// What [`fetch_layers`] fetched.
#[derive(Debug)]
pub struct LayerFetch {
    pub header: GgufHeader,
    /// The byte ranges the shard reads (see [`shard_ranges`]).
    pub ranges: Vec<Range<u64>>,
    /// The report of the last round: `path` is where the (possibly partial) file is.
    pub report: FetchReport,
}

/// Fetches what a shard of `layers` needs into `dest`: the header first (to learn where the
/// tensors are), then the chunks holding the shard's tensors. The result is a sparse
/// `<dest>.part` that `GgufFile::open` accepts and a shard of those layers can run from, or the
/// whole file at `dest` when those chunks are all of it.
pub async fn fetch_layers<C: FrameChannel>(
    manifest: &Manifest,
    dest: &Path,
    layers: Range<usize>,
    sources: &mut [Source<C>],
    config: &FetchConfig,
    mut on_event: impl FnMut(&FetchEvent) + Send,
) -> Result<LayerFetch, LayerError> {
    let header = fetch_header(manifest, dest, sources, config, &mut on_event).await?;
    let ranges = shard_ranges(&header, layers)?;
    let report = Fetch::new(manifest.clone(), dest)
        .ranges(ranges.clone())
        .config(config.clone())
        .run(sources, &mut on_event)
        .await?;
    Ok(LayerFetch {
        header,
        ranges,
        report,
    })
}
