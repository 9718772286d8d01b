//! Model files on this node: what a request to serve a model becomes (a [`WantedModel`]: the
//! file's hash, size and planner profile), and where the file a stage needs is found here.

use super::files::LocalModels;
use crate::cli::place::profile_from_gguf;
use hearth_cluster::{NodeId, WantedModel};
use hearth_placement::ModelProfile;
use hearth_transfer::{Manifest, DEFAULT_CHUNK_SIZE};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The manifest (whole-file and per-chunk SHA-256) of each file this node hashed, keyed by
/// path, size and modification time, so a model is hashed once per process however often it
/// is placed or served.
#[derive(Default)]
pub struct HashCache {
    known: Mutex<HashMap<FileVersion, Manifest>>,
}

/// A file as it was when hashed: its path, size and modification time.
type FileVersion = (PathBuf, u64, Option<SystemTime>);

impl HashCache {
    /// Blocking: reads the whole file the first time.
    pub fn manifest(&self, path: &Path) -> Result<Manifest, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
        if let Some(m) = self.known.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(m);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let m = Manifest::compute(path, name, DEFAULT_CHUNK_SIZE).map_err(|e| e.to_string())?;
        if let Ok(mut k) = self.known.lock() {
            k.insert(key, m.clone());
        }
        Ok(m)
    }
}

/// How a request to serve a model is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// The planner's plan on the measured fleet.
    Planner,
    /// Layers in proportion to each device's memory (the common baseline), for comparison.
    Proportional,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Planner => "planner",
            Placement::Proportional => "proportional",
        }
    }
}

/// The name clients use for a model given as `spec`: a catalog name as is, a path by its file
/// name without `.gguf`.
pub fn served_name(spec: &str, path: &Path) -> String {
    let is_path = spec.contains(std::path::MAIN_SEPARATOR) || spec.ends_with(".gguf");
    match path.file_stem() {
        Some(stem) if is_path => stem.to_string_lossy().into_owned(),
        _ => spec.to_string(),
    }
}

/// Describes the model file at `path` (asked for as `spec`) for the cluster, and serves it to
/// peers from `files`. Blocking: the first time, the file is read whole.
pub fn wanted(
    spec: &str,
    path: &Path,
    files: &LocalModels,
    requested_by: &NodeId,
    placement: Placement,
    context: usize,
) -> anyhow::Result<WantedModel> {
    let profile = profile_from_gguf(path)?;
    let manifest = files.offer(path).map_err(anyhow::Error::msg)?;
    // A path means nothing on another machine: peers get the file from this node (or from the
    // catalog, when the spec names a catalog model).
    let source = if hearth_model::catalog::find(spec).is_some() {
        spec.to_string()
    } else {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string())
    };
    Ok(WantedModel {
        name: served_name(spec, path),
        sha256: manifest.sha256().to_hex(),
        size_bytes: manifest.size(),
        source,
        profile: profile_to_json(&profile).to_string(),
        requested_by: requested_by.clone(),
        placement: placement.name().to_string(),
        context: u32::try_from(context).unwrap_or(u32::MAX),
    })
}

pub fn profile_to_json(p: &ModelProfile) -> Value {
    json!({
        "name": p.name,
        "hidden_size": p.hidden_size,
        "n_kv_heads": p.n_kv_heads,
        "head_dim": p.head_dim,
        "layer_bytes": p.layer_bytes,
        "layer_params": p.layer_params,
        "embedding_bytes": p.embedding_bytes,
        "embedding_params": p.embedding_params,
        "head_bytes": p.head_bytes,
        "head_params": p.head_params,
        "tied_embeddings": p.tied_embeddings,
        "tensor_types": p.tensor_types,
    })
}

/// The profile a member published; `None` when it is not one (a newer or broken member).
pub fn profile_from_json(text: &str) -> Option<ModelProfile> {
    let v: Value = serde_json::from_str(text).ok()?;
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    let list = |k: &str| -> Option<Vec<u64>> {
        v.get(k)?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
    };
    let profile = ModelProfile {
        name: v.get("name")?.as_str()?.to_string(),
        hidden_size: usize::try_from(num("hidden_size")?).ok()?,
        n_kv_heads: usize::try_from(num("n_kv_heads")?).ok()?,
        head_dim: usize::try_from(num("head_dim")?).ok()?,
        layer_bytes: list("layer_bytes")?,
        layer_params: list("layer_params")?,
        embedding_bytes: num("embedding_bytes")?,
        embedding_params: num("embedding_params")?,
        head_bytes: num("head_bytes")?,
        head_params: num("head_params")?,
        tied_embeddings: v.get("tied_embeddings")?.as_bool()?,
        tensor_types: v
            .get("tensor_types")?
            .as_array()?
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()?,
    };
    profile.validate().ok()?;
    Some(profile)
}

/// Where this node keeps model files it fetched from peers: `<data dir>/models/<sha256>.gguf`.
pub fn store_path(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir.join("models").join(format!("{sha256}.gguf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> ModelProfile {
        ModelProfile {
            name: "tiny".into(),
            hidden_size: 64,
            n_kv_heads: 2,
            head_dim: 16,
            layer_bytes: vec![1000, 1000, 1200],
            layer_params: vec![900, 900, 1100],
            embedding_bytes: 5000,
            embedding_params: 4000,
            head_bytes: 64,
            head_params: 64,
            tied_embeddings: true,
            tensor_types: vec!["Q4_1".into(), "F32".into()],
        }
    }

    #[test]
    fn profiles_survive_the_cluster_state() {
        let p = profile();
        let text = profile_to_json(&p).to_string();
        assert_eq!(profile_from_json(&text), Some(p));
        assert_eq!(profile_from_json("{}"), None);
        assert_eq!(profile_from_json("not json"), None);
        let mut bad = profile_to_json(&profile());
        bad["layer_params"] = json!([1]);
        assert_eq!(profile_from_json(&bad.to_string()), None);
    }

    #[test]
    fn names_come_from_catalog_names_or_file_stems() {
        assert_eq!(
            served_name("smollm2-135m", Path::new("/cache/x.gguf")),
            "smollm2-135m"
        );
        assert_eq!(
            served_name(
                "/models/SmolLM2.Q4_1.gguf",
                Path::new("/models/SmolLM2.Q4_1.gguf")
            ),
            "SmolLM2.Q4_1"
        );
    }

    #[test]
    fn hashes_are_cached_and_follow_the_content() {
        let dir = std::env::temp_dir().join(format!("hearth-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        std::fs::write(&f, b"abc").unwrap();
        let cache = HashCache::default();
        assert_eq!(
            cache.manifest(&f).unwrap().sha256().to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // A different size is a different file version: hashed again.
        std::fs::write(&f, b"abcd").unwrap();
        assert_eq!(
            cache.manifest(&f).unwrap().sha256().to_hex(),
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
