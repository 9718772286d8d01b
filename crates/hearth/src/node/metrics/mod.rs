//! Prometheus metrics. What this node served (HTTP requests, OpenAI requests, tokens, latencies,
//! refusals) lives in instruments that the handlers and the engine update through a cloneable
//! [`Metrics`] handle; the whole cluster as this node sees it is read from the [`View`] at each
//! scrape by [`cluster::ClusterCollector`], so a scrape is always current and a node that left
//! leaves no series behind.
//!
//! [`View`]: super::view::View

pub mod cluster;

use super::view::SharedView;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{prometheus_text, text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Every family's name starts with this, followed by `_`.
pub const PREFIX: &str = "hearth";

/// Buckets of the token latency histograms, seconds: a decode step of a small model on a fast
/// machine takes about a millisecond, a first token behind a long prompt on a phone tens of
/// seconds.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// The OpenAI endpoints, as the `endpoint` label spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
        }
    }
}

/// How an OpenAI request ended, as the `outcome` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole answer was produced.
    Ok,
    /// Turned away before reaching the engine; the reason is also counted in
    /// `hearth_refusals_total`.
    Refused(&'static str),
    /// The node failed to answer.
    Error,
    /// The client went away first.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused(_) => "refused",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome of a request answered with an error: client errors are refusals, named by
    /// what was wrong; server errors are failures.
    pub fn of_error(status: StatusCode, code: Option<&str>) -> Outcome {
        let reason = match (status, code) {
            (StatusCode::TOO_MANY_REQUESTS, _) => "queue_full",
            (StatusCode::PAYLOAD_TOO_LARGE, _) => "body_too_large",
            (StatusCode::UNAUTHORIZED, _) => "unauthorized",
            (StatusCode::FORBIDDEN, _) => "forbidden",
            (_, Some("context_length_exceeded")) => "prompt_too_long",
            (_, Some("model_not_found")) => "unknown_model",
            (_, Some("model_not_loaded")) => "no_model",
            (s, _) if s.is_client_error() => "bad_request",
            _ => return Outcome::Error,
        };
        Outcome::Refused(reason)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug)]
struct Instruments {
    http_requests: Family<HttpLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    time_to_first_token: Histogram,
    inter_token: Histogram,
    queue_depth: Gauge,
}

/// This node's instruments. Cheap to clone; every clone updates the same counters.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Instruments>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let latency = || Histogram::new(LATENCY_BUCKETS);
        Metrics(Arc::new(Instruments {
            http_requests: Family::default(),
            requests: Family::default(),
            refusals: Family::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            time_to_first_token: latency(),
            inter_token: latency(),
            queue_depth: Gauge::default(),
        }))
    }

    /// Counts a request turned away before any handler ran, e.g. by authentication:
    /// `metrics.refused("unauthorized")`. Reasons are fixed words, never user input, so the
    /// label stays small.
    pub fn refused(&self, reason: &'static str) {
        self.0
            .refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one HTTP response. `route` is the matched route pattern (never the raw path, so
    /// probing for URLs cannot grow the label set).
    pub fn http(&self, route: &str, status: u16) {
        self.0
            .http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    /// Starts tracking one OpenAI request; see [`RequestTrack`].
    pub fn request(&self, endpoint: Endpoint) -> RequestTrack {
        RequestTrack(Arc::new(Track {
            metrics: self.clone(),
            endpoint,
            arrived: Instant::now(),
            progress: Mutex::new(Progress::default()),
        }))
    }

    /// The node's one registry: these instruments, and the cluster and alert families read
    /// from `view` at each scrape.
    pub fn registry(&self, view: SharedView) -> Registry {
        let m = &self.0;
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "http_requests",
            "HTTP responses of this node's API by route pattern and status",
            m.http_requests.clone(),
        );
        r.register(
            "requests",
            "OpenAI requests this node handled, by endpoint and outcome (ok, refused, error, \
             cancelled)",
            m.requests.clone(),
        );
        r.register(
            "refusals",
            "Requests this node turned away, by reason",
            m.refusals.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens this node's engine took in",
            m.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Tokens this node's engine generated",
            m.completion_tokens.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "Time from a request's arrival to its first generated token",
            Unit::Seconds,
            m.time_to_first_token.clone(),
        );
        r.register_with_unit(
            "inter_token_latency",
            "Time between consecutive generated tokens of one request",
            Unit::Seconds,
            m.inter_token.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for this node's engine",
            m.queue_depth.clone(),
        );
        r.register_collector(Box::new(cluster::ClusterCollector::new(view)));
        r
    }
}

/// One OpenAI request from arrival to its end. Clones share it: the handler holds one, the
/// queued job another, and whichever learns the outcome first records it. When the last clone
/// goes without an outcome, the client left: the request counts as cancelled.
#[derive(Debug, Clone)]
pub struct RequestTrack(Arc<Track>);

#[derive(Debug)]
struct Track {
    metrics: Metrics,
    endpoint: Endpoint,
    arrived: Instant,
    progress: Mutex<Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    outcome: Option<Outcome>,
    queued: bool,
    last_token: Option<Instant>,
}

impl RequestTrack {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        // Plain counters and flags: a panic elsewhere cannot leave them inconsistent.
        self.0.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request waits for the engine.
    pub fn queued(&self) {
        let mut p = self.progress();
        if !p.queued && p.outcome.is_none() {
            p.queued = true;
            self.0.metrics.0.queue_depth.inc();
        }
    }

    /// The engine took the request, with a prompt of `prompt_tokens`.
    pub fn started(&self, prompt_tokens: usize) {
        let mut p = self.progress();
        leave_queue(&self.0.metrics, &mut p);
        self.0.metrics.0.prompt_tokens.inc_by(prompt_tokens as u64);
    }

    /// The engine generated one token.
    pub fn token(&self) {
        let now = Instant::now();
        let m = &self.0.metrics.0;
        let mut p = self.progress();
        match p.last_token.replace(now) {
            None => m
                .time_to_first_token
                .observe(now.duration_since(self.0.arrived).as_secs_f64()),
            Some(last) => m
                .inter_token
                .observe(now.duration_since(last).as_secs_f64()),
        }
        m.completion_tokens.inc();
    }

    /// Records how the request ended; only the first outcome counts.
    pub fn finish(&self, outcome: Outcome) {
        let mut p = self.progress();
        end(&self.0.metrics, self.0.endpoint, &mut p, outcome);
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let p = self.progress.get_mut().unwrap_or_else(|e| e.into_inner());
        end(&self.metrics, self.endpoint, p, Outcome::Cancelled);
    }
}

fn leave_queue(metrics: &Metrics, p: &mut Progress) {
    if std::mem::take(&mut p.queued) {
        metrics.0.queue_depth.dec();
    }
}

/// Records `outcome` unless the request already has one.
fn end(metrics: &Metrics, endpoint: Endpoint, p: &mut Progress, outcome: Outcome) {
    if p.outcome.is_some() {
        return;
    }
    p.outcome = Some(outcome);
    leave_queue(metrics, p);
    metrics
        .0
        .requests
        .get_or_create(&RequestLabels {
            endpoint: endpoint.as_str(),
            outcome: outcome.as_str(),
        })
        .inc();
    if let Outcome::Refused(reason) = outcome {
        metrics.refused(reason);
    }
}

/// Middleware counting every response by route pattern and status.
pub async fn track_http(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(req).await;
    metrics.http(&route, response.status().as_u16());
    response
}

/// `GET /metrics`, on its own router since it reads the registry, not the view.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry))
}

/// The registry in OpenMetrics when the scraper asks for it (Prometheus does), else in the
/// Prometheus text format that every other tool reads.
async fn scrape(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (
            text::encode(&mut body, &registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            prometheus_text::encode(&mut body, &registry),
            prometheus_text::CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
            .into_response(),
    }
}

/// The registry as the Prometheus text format.
#[cfg(test)]
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_text::encode(&mut body, registry)?;
    Ok(body)
}

#[cfg(test)]
mod tests;
