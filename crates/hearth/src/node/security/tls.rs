//! TLS 1.3 for the API, and the listener axum serves on, plain or TLS.
//!
//! Certificates come from PEM files (`--tls-cert`, `--tls-key`) or are generated once into the
//! data dir (`--tls self-signed`) and reused, so the fingerprint a client pinned stays valid
//! across restarts. TLS 1.2 and below are refused: every client hearth cares about speaks 1.3,
//! and one protocol version is one set of parameters to get right.
//!
//! The TLS listener accepts TCP connections in its own task and runs each handshake in a task of
//! its own with a deadline, so a client that connects and says nothing holds up no one else;
//! finished handshakes reach axum through a bounded channel, and a bounded number of
//! handshakes run at once (further connections wait in the kernel's backlog).

use super::SecurityError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub const CERT_FILE: &str = "api-cert.pem";
pub const KEY_FILE: &str = "api-key.pem";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
const HANDSHAKES: usize = 128;
/// Finished handshakes waiting for axum to take them.
const READY: usize = 32;

/// A server configuration and what to tell the operator about it.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `AB:CD:...` as `openssl x509 -fingerprint -sha256`
    /// prints it.
    pub fingerprint: String,
    pub cert_path: PathBuf,
    /// True when the certificate was generated on this start.
    pub generated: bool,
}

/// Loads a certificate chain and its private key from PEM files.
pub fn from_files(cert: &Path, key: &Path) -> Result<Tls, SecurityError> {
    let bad = |path: &Path, reason: String| SecurityError::TlsFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert, "no CERTIFICATE block".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let fingerprint = fingerprint(&certs[0]);
    Ok(Tls {
        config: Arc::new(server_config(certs, key_der)?),
        fingerprint,
        cert_path: cert.to_path_buf(),
        generated: false,
    })
}

/// The certificate in `data_dir`, generated on first use for `api` and the usual local names.
pub fn self_signed(data_dir: &Path, api: SocketAddr) -> Result<Tls, SecurityError> {
    let cert = data_dir.join(CERT_FILE);
    let key = data_dir.join(KEY_FILE);
    match (cert.exists(), key.exists()) {
        (true, true) => from_files(&cert, &key),
        (false, false) => {
            generate(&cert, &key, api)?;
            Ok(Tls {
                generated: true,
                ..from_files(&cert, &key)?
            })
        }
        _ => Err(SecurityError::Tls(format!(
            "only one of {} and {} exists; remove the other to generate a new pair",
            cert.display(),
            key.display()
        ))),
    }
}

fn generate(cert_path: &Path, key_path: &Path, api: SocketAddr) -> Result<(), SecurityError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
    {
        names.push(format!("{host}.local"));
        names.push(host);
    }
    if !api.ip().is_unspecified() && !api.ip().is_loopback() {
        names.push(api.ip().to_string());
    }
    let cert_err = |e: rcgen::Error| SecurityError::Tls(format!("cannot make a certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(names).map_err(cert_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth node API");
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let cert = params.self_signed(&key).map_err(cert_err)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem())
        .map_err(|e| SecurityError::io("cannot write", cert_path, e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecurityError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| SecurityError::io("cannot write", path, e))
}

/// TLS 1.3 only, with the ring provider, offering HTTP/1.1 (all the API server speaks).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, SecurityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| SecurityError::Tls(format!("the certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The remote address of an API connection, as the auth layer reads it from the request.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ApiListener>>
    for RemoteAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ApiListener>) -> Self {
        RemoteAddr(*stream.remote_addr())
    }
}

/// Where the API listens: plain TCP, or TLS on top of it.
pub struct ApiListener {
    local: SocketAddr,
    kind: Kind,
}

enum Kind {
    Plain(TcpListener),
    Tls {
        ready: mpsc::Receiver<(ApiStream, SocketAddr)>,
        accepting: tokio::task::JoinHandle<()>,
    },
}

impl Drop for ApiListener {
    fn drop(&mut self) {
        if let Kind::Tls { accepting, .. } = &self.kind {
            accepting.abort();
        }
    }
}

impl ApiListener {
    pub async fn bind(addr: SocketAddr, tls: Option<Arc<ServerConfig>>) -> io::Result<Self> {
        let tcp = TcpListener::bind(addr).await?;
        let local = tcp.local_addr()?;
        let kind = match tls {
            None => Kind::Plain(tcp),
            Some(config) => {
                let (tx, ready) = mpsc::channel(READY);
                let accepting = tokio::spawn(accept_tls(tcp, TlsAcceptor::from(config), tx));
                Kind::Tls { ready, accepting }
            }
        };
        Ok(ApiListener { local, kind })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = ApiStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ApiStream, SocketAddr) {
        match &mut self.kind {
            Kind::Plain(tcp) => loop {
                match TcpListener::accept(tcp).await {
                    Ok((s, addr)) => return (ApiStream::Plain(s), addr),
                    Err(e) => accept_failed(e).await,
                }
            },
            Kind::Tls { ready, .. } => match ready.recv().await {
                Some(conn) => conn,
                // The accepting task is gone only when the listener is dropped.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_tls(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(ApiStream, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, addr) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            // Held until axum has the connection, so waiting connections count against the
            // bound too.
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((ApiStream::Tls(Box::new(tls)), addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

/// As axum's own listener: a connection that failed before it was accepted is nobody's
/// problem; anything else (out of file descriptors) is waited out rather than spun on.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting an API connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One API connection.
pub enum ApiStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ApiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ApiStream::Plain(s) => s.is_write_vectored(),
            ApiStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("hearth-tls-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let api: SocketAddr = "192.168.7.9:52415".parse().unwrap();
        let first = self_signed(&dir, api).unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let again = self_signed(&dir, api).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
        }
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = self_signed(&dir, api)
            .err()
            .expect("half a pair is refused");
        assert!(err.to_string().contains("only one of"), "{err}");
        std::fs::write(dir.join(KEY_FILE), "not a key").unwrap();
        let err = self_signed(&dir, api).err().expect("a bad key is refused");
        assert!(err.to_string().contains(KEY_FILE), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
