//! Node identity and the cluster key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use libp2p::identity::Keypair;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::NetError;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The shared secret that admits a node to a cluster. 32 bytes.
///
/// Accepted spellings: 64 hex digits, 43/44 characters of base64 (standard or URL-safe), or any
/// other string, which is treated as a passphrase and hashed (SHA-256 with a fixed label).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }

    pub fn parse(s: &str) -> Result<Self, NetError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(NetError::BadClusterKey("empty".into()));
        }
        if let Some(b) = decode_hex32(s) {
            return Ok(Self(b));
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            if let Ok(v) = engine.decode(s) {
                if let Ok(b) = <[u8; 32]>::try_from(v.as_slice()) {
                    return Ok(Self(b));
                }
            }
        }
        let mut h = Sha256::new();
        h.update(b"hearth-passphrase-v1\0");
        h.update(s.as_bytes());
        Ok(Self(h.finalize().into()))
    }

    pub fn from_file(path: &Path) -> Result<Self, NetError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Uses `data_dir/cluster.key` if present, else generates a key and stores it (0600).
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, NetError> {
        let path = data_dir.join("cluster.key");
        if path.exists() {
            return Self::from_file(&path);
        }
        let key = Self::generate();
        write_private(&path, format!("{key}\n").as_bytes())?;
        Ok(key)
    }

    /// Short public identifier of the cluster: 16 hex digits of a labelled hash of the key.
    /// One-way, so safe to publish in identify and logs.
    pub fn cluster_id(&self) -> String {
        let d = self.derive(b"cluster-id");
        hex(&d[..8])
    }

    /// Sub-key for one purpose, so that the admission MAC, the probe MAC and the public id
    /// never share key material directly.
    pub(crate) fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        m.update(b"hearth-derive-v1\0");
        m.update(label);
        m.finalize().into_bytes().into()
    }
}

/// Displays as 64 hex digits, which `parse` reads back.
impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Never prints the secret.
impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(id {})", self.cluster_id())
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

/// Loads `data_dir/node.key` (protobuf-encoded ed25519 keypair) or creates it, so that a
/// restarted node keeps its PeerId.
pub fn load_or_create_identity(data_dir: &Path) -> Result<Keypair, NetError> {
    let path = data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| NetError::BadKeyFile {
            path: path.clone(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|e| NetError::BadKeyFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            write_private(&path, &bytes)?;
            Ok(kp)
        }
        Err(source) => Err(NetError::Io { path, source }),
    }
}

/// Writes a secret file readable by the owner only; written to a temporary name first so a
/// crash never leaves a half-written key behind.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    let io = |source, path: &Path| NetError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| io(e, &tmp))?;
        f.write_all(bytes).map_err(|e| io(e, &tmp))?;
        f.sync_all().map_err(|e| io(e, &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io(e, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_display() {
        let k = ClusterKey::generate();
        assert_eq!(ClusterKey::parse(&k.to_string()).unwrap(), k);
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.0);
        assert_eq!(ClusterKey::parse(&b64).unwrap(), k);
    }

    #[test]
    fn passphrase_is_hashed_and_ids_differ() {
        let a = ClusterKey::parse("correct horse").unwrap();
        let b = ClusterKey::parse("correct horse").unwrap();
        let c = ClusterKey::parse("battery staple").unwrap();
        assert_eq!(a, b);
        assert_ne!(a.cluster_id(), c.cluster_id());
        assert_eq!(a.cluster_id().len(), 16);
        assert!(!format!("{a:?}").contains(&a.to_string()));
    }

    #[test]
    fn identity_persists() {
        let dir = std::env::temp_dir().join(format!("hearth-net-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create_identity(&dir).unwrap();
        let b = load_or_create_identity(&dir).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("node.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.join("node.key"), b"garbage").unwrap();
        assert!(matches!(
            load_or_create_identity(&dir),
            Err(NetError::BadKeyFile { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
