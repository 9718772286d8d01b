//! The API's gate: an axum middleware in front of every route (the fallback included, so an
//! unknown URL tells a stranger nothing either).
//!
//! A request is refused with 401 when it needs a token and has none, or presents one that is
//! not (or no longer) in `tokens.json`; with 403 when its token's scope does not cover the
//! path; with 429 when its token already has `--max-concurrent-per-token` requests in flight.
//! A request counts as in flight until its response body is finished, so a long stream holds
//! its slot for as long as it runs. Errors come in OpenAI's shape, which OpenAI clients turn
//! into their `AuthenticationError`, `PermissionDeniedError` and `RateLimitError`.

use super::audit::Audit;
use super::tls::RemoteAddr;
use super::tokens::{Scope, TokenRecord, TokenStore};
use crate::node::openai::handlers::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use serde_json::json;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The middleware's state.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: TokenStore,
    audit: Audit,
    /// Whether a request without a token is refused (always, beyond loopback).
    require: bool,
    max_concurrent: usize,
    in_flight: Mutex<HashMap<String, usize>>,
}

impl Auth {
    pub fn new(tokens: TokenStore, audit: Audit, require: bool, max_concurrent: usize) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                tokens,
                audit,
                require,
                max_concurrent: max_concurrent.max(1),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot for one more request of token `id`, if it has one free.
    fn admit(&self, id: &str) -> Option<InFlight> {
        let mut m = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.entry(id.to_string()).or_insert(0);
        if *n >= self.inner.max_concurrent {
            return None;
        }
        *n += 1;
        Some(InFlight {
            inner: Arc::clone(&self.inner),
            id: id.to_string(),
        })
    }
}

/// One request in flight for a token; the slot is given back when this is dropped.
struct InFlight {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

/// A response body that holds its request's slot until it is finished or dropped.
struct Guarded {
    body: Body,
    _slot: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

enum Presented<'a> {
    None,
    Bearer(&'a str),
    /// An `Authorization` header that is not `Bearer <token>`.
    Malformed,
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Presented::Bearer(token.trim())
        }
        _ => Presented::Malformed,
    }
}

/// What the audit log says about a request.
struct Seen {
    method: Method,
    path: String,
    remote: Option<String>,
}

impl Seen {
    fn fields(&self, token: Option<&TokenRecord>) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("method".into(), json!(self.method.as_str()));
        m.insert("path".into(), json!(self.path));
        m.insert("remote".into(), json!(self.remote));
        m.insert("token".into(), json!(token.map(|t| t.id.as_str())));
        if let Some(t) = token {
            m.insert("name".into(), json!(t.name));
            m.insert("scope".into(), json!(t.scope.as_str()));
        }
        m
    }
}

/// Requests served to anyone, with or without a token: `GET` and `HEAD` of the dashboard's
/// page (`/`) and its assets (`/assets/...`). They hold no data, since the page asks the API
/// for everything with the token the user gives it, and a browser opening a page cannot send a
/// bearer token. Everything else, `/api/events` included, goes through the checks below.
pub fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || path.starts_with("/assets/"))
}

pub async fn middleware(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let seen = Seen {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        remote: req
            .extensions()
            .get::<ConnectInfo<RemoteAddr>>()
            .map(|c| c.0 .0.to_string()),
    };
    let refuse = |error: ApiError, reason: &str, token: Option<&TokenRecord>| {
        let mut f = seen.fields(token);
        f.insert("status".into(), json!(error.status().as_u16()));
        f.insert("reason".into(), json!(reason));
        auth.inner.audit.record("api.refused", f.into());
        let mut response = error.into_response();
        if response.status() == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    };
    let token = match presented(req.headers()) {
        Presented::None if auth.inner.require => {
            return refuse(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "this API needs a bearer token (`Authorization: Bearer hth_...`); create \
                     one with `hearth token create`",
                )
                .code("missing_api_key"),
                "no token",
                None,
            );
        }
        Presented::None => None,
        Presented::Malformed => {
            return refuse(
                invalid_token("the Authorization header must be `Bearer <token>`"),
                "malformed Authorization header",
                None,
            );
        }
        Presented::Bearer(secret) => match auth.inner.tokens.lookup(secret) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                return refuse(
                    invalid_token("the token is not valid (unknown or revoked)"),
                    "unknown or revoked token",
                    None,
                );
            }
            Err(e) => {
                return refuse(
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "this node cannot read its tokens; see its log",
                    ),
                    &e.to_string(),
                    None,
                );
            }
        },
    };
    let needed = Scope::needed_for(&seen.path);
    let admin_path = seen.path == "/api" || seen.path.starts_with("/api/");
    let slot = match &token {
        Some(t) if !t.scope.allows(needed) => {
            return refuse(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    format!(
                        "a {} token cannot call {}; it needs an {} token",
                        t.scope.as_str(),
                        seen.path,
                        needed.as_str()
                    ),
                )
                .code("insufficient_scope"),
                "scope",
                Some(t),
            );
        }
        Some(t) => match auth.admit(&t.id) {
            Some(slot) => Some(slot),
            None => {
                return refuse(
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        format!(
                            "this token already has {} requests in flight; retry when one ends",
                            auth.inner.max_concurrent
                        ),
                    )
                    .code("too_many_concurrent_requests"),
                    "concurrency",
                    Some(t),
                );
            }
        },
        None => None,
    };

    let response = next.run(req).await;

    // Every request that came with a token is recorded. Without a token (loopback, not
    // required) only admin calls that change something are: `hearth cluster status --watch`
    // and local monitors read `/api/cluster` every second, which would drown the log.
    let read_only = matches!(seen.method, Method::GET | Method::HEAD);
    if token.is_some() || (admin_path && !read_only) {
        let mut f = seen.fields(token.as_deref());
        f.insert("status".into(), json!(response.status().as_u16()));
        let kind = if admin_path {
            "api.admin"
        } else {
            "api.admitted"
        };
        auth.inner.audit.record(kind, f.into());
    }
    match slot {
        Some(slot) => response.map(|body| Body::new(Guarded { body, _slot: slot })),
        None => response,
    }
}

fn invalid_token(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message).code("invalid_api_key")
}

#[cfg(test)]
mod tests {
    use super::super::tokens;
    use super::*;
    use crate::node::dashboard::{self, Dashboard};
    use crate::node::view::View;
    use axum::body::to_bytes;
    use axum::routing::get;
    use axum::Router;
    use std::sync::RwLock;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use crate::test_dir::TestDir as Dir;

    /// The dashboard's routes and a data endpoint behind the gate of a node that requires
    /// tokens; an admin and a user token.
    fn gated(
        dir: &Dir,
    ) -> (
        Router,
        Audit,
        String,
        String,
        mpsc::Receiver<crate::node::driver::LocalFact>,
    ) {
        let (admin, _) = tokens::create(&dir.0, Scope::Admin, "admin", 0).unwrap();
        let (user, _) = tokens::create(&dir.0, Scope::User, "user", 0).unwrap();
        let audit = Audit::open(&dir.0).unwrap();
        let auth = Auth::new(TokenStore::open(&dir.0).unwrap(), audit.clone(), true, 4);
        let (tx, rx) = mpsc::channel(1);
        let router = dashboard::router(Dashboard {
            view: Arc::new(RwLock::new(View::default())),
            node_loop: tx,
        })
        .route("/api/cluster", get(|| async { "cluster data" }))
        .layer(axum::middleware::from_fn_with_state(auth, middleware));
        (router, audit, admin, user, rx)
    }

    async fn call(router: &Router, method: Method, path: &str, token: Option<&str>) -> Response {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[test]
    fn only_the_dashboard_page_and_assets_are_public() {
        for (method, path) in [
            (Method::GET, "/"),
            (Method::HEAD, "/"),
            (Method::GET, "/assets/app.js"),
            (Method::GET, "/assets/nope"),
        ] {
            assert!(is_public(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/"),
            (Method::DELETE, "/assets/app.js"),
            (Method::GET, "/api/events"),
            (Method::GET, "/api/cluster"),
            (Method::GET, "/assets"),
            (Method::GET, "/index.html"),
            (Method::GET, "/v1/models"),
            (Method::GET, "/metrics"),
            (Method::GET, "//assets/app.js"),
        ] {
            assert!(!is_public(&method, path), "{method} {path}");
        }
    }

    #[tokio::test]
    async fn the_page_loads_without_a_token_and_its_data_does_not() {
        let dir = Dir::new("auth-dash");
        let (router, audit, admin, user, _node_loop) = gated(&dir);

        let page = call(&router, Method::GET, "/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        let asset = dashboard::asset_url("app.js").unwrap();
        let js = call(&router, Method::GET, &asset, None).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            call(&router, Method::HEAD, "/", None).await.status(),
            StatusCode::OK
        );

        // The exemption opens no path to data.
        let sneaky = call(&router, Method::GET, "/assets/../api/cluster", None).await;
        assert_eq!(sneaky.status(), StatusCode::NOT_FOUND);
        let body = to_bytes(sneaky.into_body(), 1 << 16).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("cluster data"));
        let posted = call(&router, Method::POST, "/", None).await;
        assert_eq!(posted.status(), StatusCode::UNAUTHORIZED);

        // The live picture is data: a token is needed, an admin one.
        let refused = call(&router, Method::GET, "/api/events", None).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = to_bytes(refused.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "missing_api_key", "{v}");
        let forbidden = call(&router, Method::GET, "/api/events", Some(&user)).await;
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        let bad = call(&router, Method::GET, "/api/events", Some("hth_00")).await;
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        let events = call(&router, Method::GET, "/api/events", Some(&admin)).await;
        assert_eq!(events.status(), StatusCode::OK);
        assert_eq!(events.headers()[header::CONTENT_TYPE], "text/event-stream");
        drop(events);

        // Refusals are audited as before; page loads are not API calls and are not.
        audit.flush();
        let log = std::fs::read_to_string(dir.0.join("audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let refusals: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["kind"] == "api.refused" && l["path"] == "/api/events")
            .collect();
        assert_eq!(refusals.len(), 3, "{log}");
        assert!(lines
            .iter()
            .any(|l| l["kind"] == "api.admin" && l["path"] == "/api/events"));
        assert!(
            !lines
                .iter()
                .any(|l| l["path"] == "/" && l["method"] == "GET"),
            "{log}"
        );
    }
}
