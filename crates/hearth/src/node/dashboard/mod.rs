//! The dashboard: one page, served by every node at `/`, that shows the cluster as this node
//! sees it (topology, devices, placement, alerts), previews and loads models and chats with them.
//!
//! The page, its script and its style sheet are compiled into the binary, so a node needs no
//! files on disk, no build step and no network beyond itself to show it, and a page always
//! matches the node that serves it. They hold no data: the script reads everything through the
//! API ([`events`] streams the picture; the other endpoints are the ones `hearth` commands use)
//! with the token the user gives it. That is why the auth layer serves `GET /` and `/assets/*`
//! to anyone (`security::auth::is_public`): a browser cannot attach a bearer token to the page
//! it opens, and there is nothing in these files to protect.

pub mod events;

use crate::node::driver::LocalFact;
use crate::node::view::SharedView;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use tokio::sync::mpsc;

/// One file of the page.
pub struct Asset {
    /// Its name under `/assets/` (empty for the page itself).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const PAGE_SOURCE: &str = include_str!("assets/index.html");

/// The files served under `/assets/`.
pub const ASSETS: [Asset; 2] = [
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
];

/// The page may load only its own script and style and talk only to this node; no inline
/// script can run, so a name or message that slipped past the script's escaping still could
/// not act with the token kept in the browser; no other site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// A year: versioned asset URLs never change content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A file as served: its bytes, content type and strong validator.
struct Served {
    content_type: &'static str,
    body: Box<[u8]>,
    /// Also the `v` of the asset's URL in the page.
    version: String,
}

impl Served {
    fn new(content_type: &'static str, body: &[u8]) -> Served {
        let digest = Sha256::digest(body);
        let version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Served {
            content_type,
            body: body.into(),
            version,
        }
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

struct Files {
    page: Served,
    assets: HashMap<&'static str, Served>,
}

/// The page's asset URLs carry each asset's hash, so browsers may keep an asset for good and
/// still fetch the new one the moment a node is upgraded.
static FILES: LazyLock<Files> = LazyLock::new(|| {
    let assets: HashMap<&'static str, Served> = ASSETS
        .iter()
        .map(|a| (a.name, Served::new(a.content_type, a.body)))
        .collect();
    let mut page = PAGE_SOURCE.to_string();
    for (name, served) in &assets {
        page = page.replace(
            &format!("\"/assets/{name}\""),
            &format!("\"/assets/{name}?v={}\"", served.version),
        );
    }
    Files {
        page: Served::new("text/html; charset=utf-8", page.as_bytes()),
        assets,
    }
});

/// The versioned URL of an asset, as the page names it.
#[cfg(test)]
pub fn asset_url(name: &str) -> Option<String> {
    let served = FILES.assets.get(name)?;
    Some(format!("/assets/{name}?v={}", served.version))
}

/// What the dashboard's routes need.
#[derive(Clone)]
pub struct Dashboard {
    pub view: SharedView,
    /// Any sender of the node loop's fact channel: it closes when the loop has ended, which is
    /// when event streams must end too (a graceful shutdown waits for open responses).
    pub node_loop: mpsc::Sender<LocalFact>,
}

pub fn router(dashboard: Dashboard) -> Router {
    let snapshots = Arc::new(events::Snapshots::new(dashboard.view));
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
        .route("/api/events", get(events::handler))
        .with_state(events::Events {
            snapshots,
            node_loop: dashboard.node_loop,
        })
}

fn respond(served: &'static Served, headers: &HeaderMap, cache_control: &'static str) -> Response {
    let etag = served.etag();
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body: &'static [u8] = &served.body;
        let mut r = axum::body::Body::from(body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(served.content_type),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /`. Revalidated on every load (`no-cache` with an ETag), so an upgraded node's page
/// is seen at once while an unchanged one costs a 304.
async fn index(headers: HeaderMap) -> Response {
    let mut response = respond(&FILES.page, &headers, "no-cache");
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /assets/{name}`: kept for good when asked for by the versioned URL the page uses,
/// revalidated otherwise.
async fn asset(Path(name): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(served) = FILES.assets.get(name.as_str()) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset\n",
        )
            .into_response();
    };
    let versioned = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix("v=") == Some(&served.version))
    });
    let cache = if versioned { IMMUTABLE } else { "no-cache" };
    respond(served, &headers, cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::view::View;
    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use std::sync::RwLock;
    use tower::ServiceExt;

    fn app() -> (Router, mpsc::Receiver<LocalFact>) {
        let (tx, rx) = mpsc::channel(1);
        let view = Arc::new(RwLock::new(View::default()));
        let router = router(Dashboard {
            view,
            node_loop: tx,
        });
        (router, rx)
    }

    async fn get(
        router: &Router,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_types_validators_and_versions() {
        let (router, _loop) = app();
        let (status, h, page) = get(&router, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        let page = String::from_utf8(page).unwrap();
        let mut total = page.len();
        for a in &ASSETS {
            let url = asset_url(a.name).unwrap();
            assert!(page.contains(&format!("\"{url}\"")), "the page names {url}");
            let (status, h, body) = get(&router, &url, &[]).await;
            assert_eq!(status, StatusCode::OK, "{url}");
            assert_eq!(h[header::CONTENT_TYPE], a.content_type);
            assert_eq!(h[header::CACHE_CONTROL], IMMUTABLE);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(body, a.body);
            assert!(!body.is_empty());
            total += body.len();

            // Without the version (or with an old one) it is revalidated, not kept.
            let (_, h, _) = get(&router, &format!("/assets/{}?v=0", a.name), &[]).await;
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");

            let etag = h[header::ETAG].to_str().unwrap().to_string();
            let (status, _, body) = get(&router, &url, &[("if-none-match", &etag)]).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED);
            assert!(body.is_empty());
        }
        // The whole page, uncompressed, stays far below the 2 MB it may weigh.
        assert!(total < 100 * 1024, "the page weighs {total} bytes");
        assert_eq!(
            page.matches("<script").count(),
            1,
            "one script, no inline code"
        );

        let (_, h, _) = get(&router, "/", &[]).await;
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let (status, _, _) = get(&router, "/", &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);

        for missing in ["/assets/nope.js", "/assets/app.js.map", "/assets/"] {
            let (status, _, _) = get(&router, missing, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        }
    }

    #[test]
    fn the_page_uses_nothing_from_elsewhere() {
        let page = String::from_utf8(FILES.page.body.to_vec()).unwrap();
        let all = ASSETS
            .iter()
            .map(|a| String::from_utf8_lossy(a.body).into_owned())
            .chain([page])
            .collect::<Vec<_>>()
            .join("\n");
        // The SVG namespace is a name, not a URL that is fetched.
        let all = all.replace("http://www.w3.org/2000/svg", "");
        for outside in ["http://", "https://", "//fonts.", "@import", "cdn."] {
            assert!(!all.contains(outside), "the dashboard refers to {outside}");
        }
    }
}
