//! The security of the node's HTTP API: bearer tokens ([`tokens`]) checked by a middleware in
//! front of every route ([`auth`]), TLS 1.3 ([`tls`]) and the audit log ([`audit`]), which
//! other parts of the node write to as well (peer admissions and refusals).
//!
//! The rule the defaults follow: an API that only this machine can reach may be open, one that
//! others can reach never is. Tokens are required whenever the API listens beyond loopback;
//! on loopback they are optional unless `--require-token` is given, but a token that is
//! presented is always checked.

pub mod audit;
pub mod auth;
pub mod tls;
pub mod tokens;

use audit::Audit;
use auth::Auth;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tls::{ApiListener, RemoteAddr, Tls};
use tokens::TokenStore;

/// Default for `--max-concurrent-per-token`.
pub const DEFAULT_CONCURRENT_PER_TOKEN: u64 = 4;

/// `hearth up`'s flags for the API's security.
#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Refuse API requests without a bearer token even on loopback. Beyond loopback a token is
    /// always required (`hearth token create`).
    #[arg(long)]
    pub require_token: bool,
    /// Requests one token may have in flight at once (a stream counts until it ends); more
    /// are refused with 429.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENT_PER_TOKEN,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_concurrent_per_token: u64,
    /// Longest prompt, in tokens, a request may send; longer ones are refused with 400
    /// (default: the model's context).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompt_tokens: Option<u64>,
    /// `self-signed`: serve the API over TLS 1.3 with a certificate generated in the data dir
    /// on first start and reused after; its SHA-256 fingerprint is printed at start.
    #[arg(long, value_name = "MODE", value_enum, conflicts_with = "tls_cert")]
    pub tls: Option<TlsMode>,
    /// Serve the API over TLS 1.3 with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    SelfSigned,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a valid token file: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
    #[error("no token has the id {0} (see `hearth token list`)")]
    UnknownToken(String),
    #[error("invalid token name {0}")]
    InvalidName(String),
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error("{}: {reason}", path.display())]
    TlsFile { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

impl SecurityError {
    pub fn io(what: &'static str, path: &Path, source: io::Error) -> SecurityError {
        SecurityError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What `hearth up` needs to serve its API securely.
pub struct Security {
    pub audit: Audit,
    pub auth: Auth,
    pub tls: Option<Tls>,
}

impl Security {
    /// Opens the token store and the audit log in `data_dir` and loads (or makes) the TLS
    /// certificate, for an API that will listen on `api`.
    pub fn open(
        args: &SecurityArgs,
        data_dir: &Path,
        api: SocketAddr,
    ) -> Result<Security, SecurityError> {
        let audit = Audit::open(data_dir)?;
        let tokens = TokenStore::open(data_dir)?;
        let beyond_loopback = !api.ip().is_loopback();
        let require = args.require_token || beyond_loopback;
        let tls = match (&args.tls, &args.tls_cert, &args.tls_key) {
            (Some(TlsMode::SelfSigned), _, _) => Some(tls::self_signed(data_dir, api)?),
            (None, Some(cert), Some(key)) => Some(tls::from_files(cert, key)?),
            _ => None,
        };
        if require && tokens.len() == 0 {
            eprintln!(
                "the API requires a bearer token and {} holds none: create one with \
                 `hearth token create --scope user` (or admin)",
                tokens.path().display()
            );
        }
        if beyond_loopback && tls.is_none() {
            eprintln!(
                "warning: the API listens beyond loopback without TLS; tokens and prompts \
                 cross the network in the clear (see --tls)"
            );
        }
        let max_concurrent = usize::try_from(args.max_concurrent_per_token).unwrap_or(usize::MAX);
        audit.record(
            "api.start",
            serde_json::json!({
                "api": api.to_string(),
                "tls": tls.as_ref().map(|t| t.fingerprint.as_str()),
                "require_token": require,
                "tokens": tokens.len(),
            }),
        );
        Ok(Security {
            auth: Auth::new(tokens, audit.clone(), require, max_concurrent),
            audit,
            tls,
        })
    }

    /// Binds the API's listener, TLS when configured, and says how to reach it.
    pub async fn bind(&self, addr: SocketAddr) -> io::Result<ApiListener> {
        let listener = ApiListener::bind(addr, self.tls.as_ref().map(|t| t.config.clone())).await?;
        if let Some(t) = &self.tls {
            eprintln!(
                "API certificate {} ({}), SHA-256 fingerprint {}",
                t.cert_path.display(),
                if t.generated {
                    "generated now"
                } else {
                    "loaded"
                },
                t.fingerprint
            );
        }
        Ok(listener)
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Serves `router` (already behind the auth layer) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: ApiListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<RemoteAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
