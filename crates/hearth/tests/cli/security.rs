//! The API's security over real HTTP: bearer tokens and their scopes, the per-token limit,
//! the prompt limit, TLS 1.3 with a self-signed certificate, and the audit log that records
//! all of it.

use super::*;
use crate::cluster::harness::{audited, measured_home, Node, TempDir};
use crate::serve::serve;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `hearth token create`; returns the token and its id.
fn create_token(data_dir: &Path, scope: &str, name: &str) -> (String, String) {
    let v = hearth_json(&[
        "token",
        "create",
        "--scope",
        scope,
        "--name",
        name,
        "--json",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let token = v["token"].as_str().expect("a token").to_string();
    assert!(token.starts_with("hth_"), "{v}");
    assert_eq!(v["scope"], scope);
    (token, v["id"].as_str().expect("an id").to_string())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// A GET (no body) or POST; `auth` is the whole Authorization header. Returns the status and
/// the body as JSON (or as a string when it is not JSON).
fn call(api: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let url = format!("http://{api}{path}");
    let agent = agent();
    let resp = match body {
        None => {
            let mut r = agent.get(&url);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        Some(b) => {
            let mut r = agent.post(&url).header("content-type", "application/json");
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send(b)
        }
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A refusal in OpenAI's error shape.
fn refused(got: (u16, Value), status: u16, kind: &str, code: &str) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert_eq!(e["code"], code, "{v}");
}

fn ok(got: (u16, Value)) -> Value {
    assert_eq!(got.0, 200, "{}", got.1);
    got.1
}

/// An API bound to all interfaces, reached over loopback.
fn via_loopback(api: &str) -> String {
    let port = api.rsplit(':').next().unwrap();
    format!("127.0.0.1:{port}")
}

fn node_args(api: &str) -> Vec<&str> {
    vec![
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        api,
    ]
}

#[test]
fn security_tokens_guard_an_api_that_listens_beyond_loopback() {
    let home = measured_home();
    let dir = TempDir::new("sec-tokens");
    let data = dir.0.join("node");
    let (user, user_id) = create_token(&data, "user", "alice");
    let (admin, admin_id) = create_token(&data, "admin", "ops");
    let node = Node::start("sec-tokens", &data, &home.0, &node_args("0.0.0.0:0"));
    let api = via_loopback(&node.api);

    // No token: refused everywhere, unknown URLs and POSTs included.
    for path in ["/v1/models", "/health", "/api/cluster", "/no-such-thing"] {
        refused(
            call(&api, path, None, None),
            401,
            "invalid_request_error",
            "missing_api_key",
        );
    }
    refused(
        call(&api, "/v1/chat/completions", None, Some("{}")),
        401,
        "invalid_request_error",
        "missing_api_key",
    );
    // Not a bearer token; a token this node never issued.
    refused(
        call(&api, "/v1/models", Some("Basic dXNlcjpwdw=="), None),
        401,
        "authentication_error",
        "invalid_api_key",
    );
    let forged = format!("hth_{}", "0".repeat(64));
    refused(
        call(&api, "/v1/models", Some(&bearer(&forged)), None),
        401,
        "authentication_error",
        "invalid_api_key",
    );

    // A user token: the OpenAI API and /health, nothing else.
    let u = bearer(&user);
    assert_eq!(
        ok(call(&api, "/v1/models", Some(&u), None))["object"],
        "list"
    );
    assert_eq!(ok(call(&api, "/health", Some(&u), None))["status"], "ok");
    for path in ["/api/cluster", "/api/cluster/log", "/no-such-thing"] {
        refused(
            call(&api, path, Some(&u), None),
            403,
            "permission_error",
            "insufficient_scope",
        );
    }
    // Past the gate, an unknown /v1 URL is the API's own 404.
    assert_eq!(call(&api, "/v1/no-such-thing", Some(&u), None).0, 404);

    // An admin token: everything.
    let a = bearer(&admin);
    let cluster = ok(call(&api, "/api/cluster", Some(&a), None));
    assert_eq!(cluster["node"]["id"], node.id.as_str(), "{cluster}");
    ok(call(&api, "/api/cluster/log", Some(&a), None));
    ok(call(&api, "/v1/models", Some(&a), None));

    // Made while the node runs: accepted at once. Revoked: refused at once.
    let (late, late_id) = create_token(&data, "user", "late");
    ok(call(&api, "/v1/models", Some(&bearer(&late)), None));
    let out = hearth(&[
        "token",
        "revoke",
        &user_id,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(
        call(&api, "/v1/models", Some(&u), None),
        401,
        "authentication_error",
        "invalid_api_key",
    );
    ok(call(&api, "/v1/models", Some(&bearer(&late)), None));
    let listed = hearth_json(&[
        "token",
        "list",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![admin_id.as_str(), late_id.as_str()];
    want.sort();
    assert_eq!(ids, want, "{listed}");
    let out = hearth(&[
        "token",
        "revoke",
        &user_id,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "revoking twice is an error");

    // The audit log has each of these, and never a token itself.
    audited(&data, "the node's start", |v| {
        v["kind"] == "api.start" && v["require_token"] == true
    });
    for id in [&user_id, &admin_id, &late_id] {
        audited(&data, "a token created", |v| {
            v["kind"] == "token.created" && v["id"] == id.as_str()
        });
    }
    audited(&data, "the revocation", |v| {
        v["kind"] == "token.revoked" && v["id"] == user_id.as_str() && v["scope"] == "user"
    });
    let missing = audited(&data, "a request without a token", |v| {
        v["kind"] == "api.refused" && v["status"] == 401 && v["path"] == "/health"
    });
    assert_eq!(missing["reason"], "no token", "{missing}");
    assert!(
        missing["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{missing}"
    );
    audited(&data, "the forged token", |v| {
        v["kind"] == "api.refused" && v["reason"] == "unknown or revoked token"
    });
    audited(&data, "the user token on an admin endpoint", |v| {
        v["kind"] == "api.refused"
            && v["status"] == 403
            && v["token"] == user_id.as_str()
            && v["path"] == "/api/cluster"
    });
    audited(&data, "the user token admitted", |v| {
        v["kind"] == "api.admitted"
            && v["token"] == user_id.as_str()
            && v["scope"] == "user"
            && v["name"] == "alice"
            && v["path"] == "/v1/models"
            && v["method"] == "GET"
            && v["status"] == 200
    });
    audited(&data, "the admin endpoint used", |v| {
        v["kind"] == "api.admin"
            && v["token"] == admin_id.as_str()
            && v["path"] == "/api/cluster"
            && v["status"] == 200
    });
    let text = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    for secret in [&user, &admin, &late] {
        assert!(
            !text.contains(secret.as_str()),
            "a token reached the audit log"
        );
    }
    let stored = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    assert!(!stored.contains(&admin) && !stored.contains(&late));
    assert!(!node.log().contains("panicked"));
}

#[test]
fn security_tokens_are_optional_on_loopback_unless_required_but_always_checked() {
    let home = measured_home();
    let dir = TempDir::new("sec-loopback");
    let open_data = dir.0.join("open");
    let (user, _) = create_token(&open_data, "user", "u");
    let open = Node::start("sec-open", &open_data, &home.0, &node_args("127.0.0.1:0"));
    let api = &open.api;
    ok(call(api, "/api/cluster", None, None));
    ok(call(api, "/v1/models", None, None));
    // A presented token is checked, and its scope holds, even where none is needed.
    refused(
        call(api, "/v1/models", Some(&bearer("hth_not-a-token")), None),
        401,
        "authentication_error",
        "invalid_api_key",
    );
    refused(
        call(api, "/api/cluster", Some(&bearer(&user)), None),
        403,
        "permission_error",
        "insufficient_scope",
    );
    ok(call(api, "/v1/models", Some(&bearer(&user)), None));
    audited(&open_data, "the node's start", |v| {
        v["kind"] == "api.start" && v["require_token"] == false
    });

    let strict_data = dir.0.join("strict");
    let (admin, _) = create_token(&strict_data, "admin", "a");
    let mut args = node_args("127.0.0.1:0");
    args.push("--require-token");
    let strict = Node::start("sec-strict", &strict_data, &home.0, &args);
    refused(
        call(&strict.api, "/health", None, None),
        401,
        "invalid_request_error",
        "missing_api_key",
    );
    ok(call(
        &strict.api,
        "/api/cluster",
        Some(&bearer(&admin)),
        None,
    ));
    // `hearth cluster status` says what is missing, and works with the token.
    let out = hearth(&["cluster", "status", "--json", "--api", &strict.api]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    let status = hearth_json(&[
        "cluster",
        "status",
        "--json",
        "--api",
        &strict.api,
        "--token",
        &admin,
    ]);
    assert_eq!(status["node"]["id"], strict.id.as_str(), "{status}");
}

#[test]
fn security_per_token_concurrency_and_prompt_length_are_bounded() {
    let served = serve(
        "sec-limits",
        &[
            "--require-token",
            "--max-concurrent-per-token",
            "1",
            "--max-prompt-tokens",
            "32",
        ],
    );
    let node = &served.node;
    let api = node.api.clone();
    let (a, a_id) = create_token(&node.data_dir, "user", "a");
    let (b, _) = create_token(&node.data_dir, "user", "b");

    // A long stream holds token a's only slot for as long as it runs.
    let resp = agent()
        .post(format!("http://{api}/v1/completions"))
        .header("content-type", "application/json")
        .header("authorization", bearer(&a))
        .send(r#"{"prompt":"1, 2, 3, 4, 5,","temperature":0,"max_tokens":3000,"stream":true}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: {"), "{line:?}");

    refused(
        call(&api, "/v1/models", Some(&bearer(&a)), None),
        429,
        "rate_limit_error",
        "too_many_concurrent_requests",
    );
    // Other tokens are not affected.
    ok(call(&api, "/v1/models", Some(&bearer(&b)), None));

    // Hanging up ends the stream and gives the slot back.
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v) = call(&api, "/v1/models", Some(&bearer(&a)), None);
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{v}");
        assert!(
            Instant::now() < deadline,
            "the slot was not given back after the client left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The prompt limit: 400 in OpenAI's shape; a short prompt still passes.
    let long = serde_json::json!({
        "messages": [{"role": "user", "content": "word ".repeat(60)}],
        "max_tokens": 1,
    })
    .to_string();
    let (status, v) = call(&api, "/v1/chat/completions", Some(&bearer(&b)), Some(&long));
    refused(
        (status, v.clone()),
        400,
        "invalid_request_error",
        "context_length_exceeded",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 32"),
        "{v}"
    );
    let v = ok(call(
        &api,
        "/v1/completions",
        Some(&bearer(&b)),
        Some(r#"{"prompt":"Hello","max_tokens":2,"temperature":0}"#),
    ));
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");

    audited(&node.data_dir, "the refusal for concurrency", |v| {
        v["kind"] == "api.refused"
            && v["status"] == 429
            && v["reason"] == "concurrency"
            && v["token"] == a_id.as_str()
    });
    audited(&node.data_dir, "the stream admitted", |v| {
        v["kind"] == "api.admitted"
            && v["token"] == a_id.as_str()
            && v["path"] == "/v1/completions"
            && v["method"] == "POST"
    });
}

/// Accepts exactly the certificate whose SHA-256 is `fingerprint`, as a client that pinned the
/// fingerprint the node printed does.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// GET over TLS with the given protocol versions and pinned fingerprint: status, body and the
/// negotiated version.
fn https_get(
    api: &str,
    path: &str,
    pin: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(u16, String, rustls::ProtocolVersion), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: pin.to_string(),
            provider,
        }))
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(api).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf) {
        Ok(_) => {}
        // A peer that closes without close_notify after a whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let version = tls.conn.protocol_version().ok_or("no protocol version")?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body, version))
}

/// The fingerprint the node printed when it started.
fn printed_fingerprint(node: &Node) -> String {
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("SHA-256 fingerprint "))
        .unwrap_or_else(|| panic!("no fingerprint printed; log:\n{log}"));
    line.rsplit("SHA-256 fingerprint ")
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn security_tls_self_signed_serves_tls13_only_and_keeps_its_certificate() {
    let home = measured_home();
    let dir = TempDir::new("sec-tls");
    let data = dir.0.join("node");
    let mut args = node_args("127.0.0.1:0");
    args.extend(["--tls", "self-signed"]);
    let mut node = Node::start("sec-tls", &data, &home.0, &args);
    assert!(node.banner.contains("API on https://"), "{}", node.banner);
    let fp = printed_fingerprint(&node);
    assert!(node.log().contains("generated now"), "{}", node.log());
    let cert = CertificateDer::pem_file_iter(data.join("api-cert.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(fingerprint(&cert), fp);

    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let (status, body, version) = https_get(&node.api, "/health", &fp, tls13).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);

    // A client pinning another certificate gets nowhere; neither does TLS 1.2 or plain HTTP.
    let other = fp.replace(|c: char| c.is_ascii_hexdigit(), "0");
    assert!(https_get(&node.api, "/health", &other, tls13).is_err());
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let err = https_get(&node.api, "/health", &fp, tls12).expect_err("TLS 1.2 is refused");
    assert!(
        err.contains("ProtocolVersion") || err.contains("alert"),
        "{err}"
    );
    let plain = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent()
        .get(format!("http://{}/health", node.api))
        .call();
    assert!(plain.is_err(), "plain HTTP answered on the TLS port");
    // Still serving after all that.
    assert_eq!(https_get(&node.api, "/health", &fp, tls13).unwrap().0, 200);

    // Restarted, it keeps its certificate: a pinned fingerprint stays valid.
    node.stop();
    let node = Node::start("sec-tls", &data, &home.0, &args);
    assert_eq!(printed_fingerprint(&node), fp);
    assert!(node.log().contains("(loaded)"), "{}", node.log());
    let (status, _, _) = https_get(&node.api, "/v1/models", &fp, tls13).unwrap();
    assert_eq!(status, 200);
}
