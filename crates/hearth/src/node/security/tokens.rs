//! Bearer tokens for the node's API, kept in `tokens.json` in the data dir.
//!
//! A token is `hth_` and 64 hex digits (32 bytes from the operating system's random source).
//! It is shown once when created; the file keeps only its SHA-256, so a copy of the file (or
//! of a backup) does not let anyone in. Tokens carry 256 bits of entropy, so a plain hash is
//! enough: there is nothing to brute-force and no need for a slow password hash.
//!
//! `hearth token` changes the file while a node may be running; the node notices on its next
//! request (see [`TokenStore`]). Writes replace the file through a rename so a reader never
//! sees half of it, under a lock file so two commands at once do not lose a token.

use super::SecurityError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub const TOKENS_FILE: &str = "tokens.json";
const LOCK_FILE: &str = "tokens.lock";
pub const TOKEN_PREFIX: &str = "hth_";
const FILE_VERSION: u32 = 1;
const MAX_NAME: usize = 64;

/// What a token may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The OpenAI-compatible API (`/v1/...`) and `/health`.
    User,
    /// Everything, including the cluster's admin endpoints (`/api/...`).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Admin => "admin",
        }
    }

    /// The scope a request for `path` needs. Anything not known to be a user endpoint needs
    /// admin, so an endpoint added later is closed to user tokens until it is listed here.
    pub fn needed_for(path: &str) -> Scope {
        if path == "/health" || path == "/v1" || path.starts_with("/v1/") {
            Scope::User
        } else {
            Scope::Admin
        }
    }

    pub fn allows(self, needed: Scope) -> bool {
        self == Scope::Admin || needed == Scope::User
    }
}

/// One token as `tokens.json` keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public and stable: what the audit log, `hearth token list` and `revoke` name.
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub scope: Scope,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The token's SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// Parses and checks the contents of `tokens.json`.
pub fn parse(text: &str) -> Result<Vec<TokenRecord>, String> {
    let file: TokenFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.version != FILE_VERSION {
        return Err(format!(
            "version {} is not known to this hearth (it reads version {FILE_VERSION})",
            file.version
        ));
    }
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for t in &file.tokens {
        if t.id.is_empty() || !ids.insert(t.id.as_str()) {
            return Err(format!("token id {:?} is empty or repeated", t.id));
        }
        if decode_hash(&t.sha256).is_none() {
            return Err(format!(
                "token {}: `sha256` must be 64 lowercase hex digits",
                t.id
            ));
        }
        if !hashes.insert(t.sha256.as_str()) {
            return Err(format!("token {}: the same hash appears twice", t.id));
        }
    }
    Ok(file.tokens)
}

pub fn render(tokens: &[TokenRecord]) -> String {
    let file = TokenFile {
        version: FILE_VERSION,
        tokens: tokens.to_vec(),
    };
    let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
    s.push('\n');
    s
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn decode_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn random_hex(n: usize) -> Result<String, SecurityError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| SecurityError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

/// Reads `tokens.json` in `data_dir`; a missing file holds no tokens.
pub fn load(data_dir: &Path) -> Result<Vec<TokenRecord>, SecurityError> {
    let path = data_dir.join(TOKENS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|reason| SecurityError::TokenFile { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SecurityError::io("cannot read", &path, e)),
    }
}

/// Creates a token; returns the secret (to be shown once) and what the file keeps.
pub fn create(
    data_dir: &Path,
    scope: Scope,
    name: &str,
    now_ms: u64,
) -> Result<(String, TokenRecord), SecurityError> {
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(SecurityError::InvalidName(format!(
            "{name:?}: at most {MAX_NAME} characters, no control characters"
        )));
    }
    let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
    let record = TokenRecord {
        id: format!("tok_{}", random_hex(6)?),
        name: name.to_string(),
        scope,
        created_ms: now_ms,
        sha256: hex(&hash(&secret)),
    };
    update(data_dir, |tokens| {
        tokens.push(record.clone());
        Ok(())
    })?;
    Ok((secret, record))
}

/// Removes the token `id`; returns what it was.
pub fn revoke(data_dir: &Path, id: &str) -> Result<TokenRecord, SecurityError> {
    let mut removed = None;
    update(data_dir, |tokens| {
        let i = tokens
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| SecurityError::UnknownToken(id.to_string()))?;
        removed = Some(tokens.remove(i));
        Ok(())
    })?;
    removed.ok_or_else(|| SecurityError::UnknownToken(id.to_string()))
}

/// Read, change and replace the file under the lock.
fn update(
    data_dir: &Path,
    change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<(), SecurityError>,
) -> Result<(), SecurityError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| SecurityError::io("cannot create the data dir", data_dir, e))?;
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| SecurityError::io("cannot open", &lock_path, e))?;
    lock.lock()
        .map_err(|e| SecurityError::io("cannot lock", &lock_path, e))?;
    let mut tokens = load(data_dir)?;
    change(&mut tokens)?;
    let path = data_dir.join(TOKENS_FILE);
    let tmp = data_dir.join(format!("{TOKENS_FILE}.tmp"));
    let mut options = OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        let mut f = options.open(&tmp)?;
        f.write_all(render(&tokens).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| SecurityError::io("cannot write", &path, e))
}

/// What identifies one version of the file: a rename gives a new inode, a rewrite in place a
/// new mtime or length.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Result<Option<Stamp>, std::io::Error> {
    match std::fs::metadata(path) {
        Ok(m) => {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Ok(Some(Stamp {
                len: m.len(),
                modified: m.modified().ok(),
                inode,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The node's view of `tokens.json`, re-read when the file changed. Each look-up costs one
/// `stat`, which is what lets a revocation take effect on the very next request.
pub struct TokenStore {
    dir: PathBuf,
    cache: Mutex<Cache>,
}

struct Cache {
    stamp: Option<Stamp>,
    by_hash: HashMap<[u8; 32], Arc<TokenRecord>>,
    /// Why the current version of the file could not be read; cleared when it changes.
    error: Option<String>,
}

impl TokenStore {
    /// Reads the tokens of `data_dir`, failing on a file that cannot be read.
    pub fn open(data_dir: &Path) -> Result<TokenStore, SecurityError> {
        let path = data_dir.join(TOKENS_FILE);
        let stamp = stamp(&path).map_err(|e| SecurityError::io("cannot read", &path, e))?;
        let tokens = load(data_dir)?;
        Ok(TokenStore {
            dir: data_dir.to_path_buf(),
            cache: Mutex::new(Cache {
                stamp,
                by_hash: index(tokens),
                error: None,
            }),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(TOKENS_FILE)
    }

    pub fn len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_hash
            .len()
    }

    /// The token `secret` names, if it exists now. While the file cannot be read every
    /// look-up fails: a broken file must not leave a token it was meant to revoke working.
    pub fn lookup(&self, secret: &str) -> Result<Option<Arc<TokenRecord>>, SecurityError> {
        let path = self.path();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&path).map_err(|e| SecurityError::io("cannot read", &path, e))?;
        if now != cache.stamp {
            cache.stamp = now;
            match load(&self.dir) {
                Ok(tokens) => {
                    cache.by_hash = index(tokens);
                    cache.error = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the token file cannot be read; refusing tokens until it is fixed");
                    cache.by_hash.clear();
                    cache.error = Some(e.to_string());
                }
            }
        }
        if let Some(reason) = &cache.error {
            return Err(SecurityError::TokenFile {
                path,
                reason: reason.clone(),
            });
        }
        // A map keyed by the hash: timing differences reveal something about a hash of the
        // guess, which says nothing useful about any real token.
        Ok(cache.by_hash.get(&hash(secret)).cloned())
    }
}

fn index(tokens: Vec<TokenRecord>) -> HashMap<[u8; 32], Arc<TokenRecord>> {
    tokens
        .into_iter()
        .filter_map(|t| Some((decode_hash(&t.sha256)?, Arc::new(t))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_dir::TestDir as Dir;

    #[test]
    fn corrupt_or_odd_files_are_clear_errors() {
        let good_hash = "ab".repeat(32);
        for (text, says) in [
            ("", "EOF"),
            ("{", "EOF"),
            ("7", "invalid type"),
            ("[]", "expected struct TokenFile"),
            (r#"{"version":1}"#, "missing field `tokens`"),
            (r#"{"version":2,"tokens":[]}"#, "version 2"),
            (
                r#"{"version":1,"tokens":[{"id":"a","scope":"root","created_ms":1,"sha256":"00"}]}"#,
                "unknown variant `root`",
            ),
            (
                r#"{"version":1,"tokens":[{"id":"a","scope":"user","created_ms":1,"sha256":"00"}]}"#,
                "64 lowercase hex",
            ),
            (
                &format!(
                    r#"{{"version":1,"tokens":[{{"id":"a","scope":"user","created_ms":1,"sha256":"{}"}}]}}"#,
                    good_hash.to_uppercase()
                ),
                "64 lowercase hex",
            ),
            (
                &format!(
                    r#"{{"version":1,"tokens":[{{"id":"a","scope":"user","created_ms":1,"sha256":"{good_hash}"}},{{"id":"a","scope":"admin","created_ms":1,"sha256":"{}"}}]}}"#,
                    "cd".repeat(32)
                ),
                "repeated",
            ),
            (
                &format!(
                    r#"{{"version":1,"tokens":[{{"id":"a","scope":"user","created_ms":1,"sha256":"{good_hash}","secret":"x"}}]}}"#
                ),
                "unknown field `secret`",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
        let ok = format!(
            r#"{{"version":1,"tokens":[{{"id":"a","scope":"admin","created_ms":1,"sha256":"{good_hash}"}}]}}"#
        );
        let tokens = parse(&ok).unwrap();
        assert_eq!(tokens[0].scope, Scope::Admin);
        assert_eq!(tokens[0].name, "");
        assert_eq!(parse(&render(&tokens)).unwrap(), tokens);
    }

    #[test]
    fn a_corrupt_file_stops_the_node_at_start_and_fails_lookups_while_running() {
        let dir = Dir::new("tokens-corrupt");
        std::fs::write(dir.0.join(TOKENS_FILE), "{not json").unwrap();
        let err = TokenStore::open(&dir.0)
            .err()
            .expect("a corrupt file is refused");
        let msg = err.to_string();
        assert!(
            msg.contains(TOKENS_FILE) && msg.contains("not a valid"),
            "{msg}"
        );

        std::fs::remove_file(dir.0.join(TOKENS_FILE)).unwrap();
        let (secret, _) = create(&dir.0, Scope::User, "a", 1).unwrap();
        let store = TokenStore::open(&dir.0).unwrap();
        assert!(store.lookup(&secret).unwrap().is_some());
        std::fs::write(dir.0.join(TOKENS_FILE), "{\"version\":1,\"tokens\":[").unwrap();
        assert!(matches!(
            store.lookup(&secret),
            Err(SecurityError::TokenFile { .. })
        ));
        // Fixed: tokens work again without a restart.
        std::fs::write(dir.0.join(TOKENS_FILE), render(&[])).unwrap();
        assert!(store.lookup(&secret).unwrap().is_none());
    }

    #[test]
    fn created_tokens_are_seen_and_revoked_ones_refused_without_a_restart() {
        let dir = Dir::new("tokens-live");
        let store = TokenStore::open(&dir.0).unwrap();
        assert_eq!(store.len(), 0);
        let (secret, rec) = create(&dir.0, Scope::Admin, "ops laptop", 42).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX) && secret.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(rec.created_ms, 42);
        let text = std::fs::read_to_string(dir.0.join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(&secret), "the secret must not be stored");
        let found = store.lookup(&secret).unwrap().expect("a new token is seen");
        assert_eq!(
            (found.id.as_str(), found.scope),
            (rec.id.as_str(), Scope::Admin)
        );
        assert!(store.lookup("hth_wrong").unwrap().is_none());

        let (other, _) = create(&dir.0, Scope::User, "", 43).unwrap();
        assert_eq!(revoke(&dir.0, &rec.id).unwrap().id, rec.id);
        assert!(store.lookup(&secret).unwrap().is_none());
        assert!(store.lookup(&other).unwrap().is_some());
        assert!(matches!(
            revoke(&dir.0, &rec.id),
            Err(SecurityError::UnknownToken(_))
        ));
        assert!(create(&dir.0, Scope::User, "bad\nname", 1).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.0.join(TOKENS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "tokens.json is private: {mode:o}");
        }
    }

    #[test]
    fn scopes_cover_paths() {
        assert_eq!(Scope::needed_for("/v1/chat/completions"), Scope::User);
        assert_eq!(Scope::needed_for("/health"), Scope::User);
        assert_eq!(Scope::needed_for("/api/cluster"), Scope::Admin);
        assert_eq!(Scope::needed_for("/v1x"), Scope::Admin);
        assert_eq!(Scope::needed_for("/"), Scope::Admin);
        assert!(Scope::Admin.allows(Scope::Admin) && Scope::Admin.allows(Scope::User));
        assert!(Scope::User.allows(Scope::User) && !Scope::User.allows(Scope::Admin));
    }
}
