//! Axum handlers: parse and check a request, tokenize it, queue it for the engine and shape the
//! engine's events into OpenAI's answer, whole or as server-sent events.

use super::super::metrics::{Endpoint, Outcome, RequestTrack};
use super::engine::{Event, Finish, Job, Refused, EVENTS_PER_REQUEST};
use super::types::*;
use super::{OpenAi, Serving};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_engine::SamplerConfig;
use hearth_model::chat::ChatMessage;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most stop strings per request, as OpenAI allows.
const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes: the engine holds back this much text while matching.
const MAX_STOP_BYTES: usize = 256;

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            param,
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub(crate) fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Records this error as the request's outcome, on its way out.
    fn tracked(self, track: &RequestTrack) -> ApiError {
        track.finish(Outcome::of_error(self.status, self.code));
        self
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Unknown routes.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("unknown URL ({method} {})", uri.path()),
    )
    .code("unknown_url")
    .into_response()
}

/// Known routes asked with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

pub async fn models(State(api): State<OpenAi>) -> Response {
    let data = api
        .models
        .list()
        .iter()
        .map(|s| model_object(s))
        .collect::<Vec<_>>();
    Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

pub async fn model(State(api): State<OpenAi>, Path(id): Path<String>) -> Response {
    match api.models.find(Some(&id)) {
        Some(s) => Json(model_object(&s)).into_response(),
        None => unknown_model(&id).into_response(),
    }
}

fn model_object(s: &Serving) -> ModelObject {
    ModelObject {
        id: s.model.id.clone(),
        object: "model",
        created: s.model.created,
        owned_by: "hearth",
    }
}

fn unknown_model(name: &str) -> ApiError {
    ApiError {
        param: Some("model"),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("the model `{name}` does not exist on this node"),
        )
    }
    .code("model_not_found")
}

pub async fn chat_completions(
    State(api): State<OpenAi>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let track = api.metrics.request(Endpoint::ChatCompletions);
    chat(api, body, &track)
        .await
        .unwrap_or_else(|e| e.tracked(&track).into_response())
}

pub async fn completions(
    State(api): State<OpenAi>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let track = api.metrics.request(Endpoint::Completions);
    completion(api, body, &track)
        .await
        .unwrap_or_else(|e| e.tracked(&track).into_response())
}

async fn chat(
    api: OpenAi,
    body: Result<Bytes, BytesRejection>,
    track: &RequestTrack,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req: ChatRequest = parse(&body)?;
    let serving = serving(&api, req.model.as_deref())?;
    let params = Params::check(req.sampling)?;
    let messages = chat_messages(req.messages)?;
    let s = Arc::clone(&serving);
    // Rendering and tokenizing a body near the size limit takes a while: off the async workers.
    let prompt = tokio::task::spawn_blocking(move || {
        let text = s.model.template.render(&messages, true).map_err(|e| {
            ApiError::invalid(
                format!("the chat template cannot render these messages: {e}"),
                Some("messages"),
            )
        })?;
        Ok::<_, ApiError>(s.model.tokenizer.encode(&text, true))
    })
    .await
    .map_err(|_| ApiError::server("tokenizing the prompt failed"))??;
    generate(
        serving,
        Kind::Chat,
        prompt,
        params,
        track,
        api.max_prompt_tokens,
    )
    .await
}

async fn completion(
    api: OpenAi,
    body: Result<Bytes, BytesRejection>,
    track: &RequestTrack,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req: CompletionRequest = parse(&body)?;
    let serving = serving(&api, req.model.as_deref())?;
    let params = Params::check(req.sampling)?;
    let text = match req.prompt {
        Prompt::One(t) => t,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::invalid(
                "`prompt` must be one string",
                Some("prompt"),
            ))
        }
    };
    let s = Arc::clone(&serving);
    let prompt = tokio::task::spawn_blocking(move || {
        // As `hearth run --prompt`: the text as is, special-token text not parsed.
        let tok = &s.model.tokenizer;
        let mut ids: Vec<u32> = tok.bos_to_add().into_iter().collect();
        ids.extend(tok.encode(&text, false));
        ids
    })
    .await
    .map_err(|_| ApiError::server("tokenizing the prompt failed"))?;
    generate(
        serving,
        Kind::Completion,
        prompt,
        params,
        track,
        api.max_prompt_tokens,
    )
    .await
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "the request body is larger than this node accepts",
        )
        .code("request_too_large")
    } else {
        ApiError::invalid(format!("cannot read the request body: {rejection}"), None)
    }
}

/// The served model a request names (or the only one), in OpenAI's error shape otherwise.
fn serving(api: &OpenAi, name: Option<&str>) -> Result<Arc<Serving>, ApiError> {
    if let Some(s) = api.models.find(name) {
        return Ok(s);
    }
    match name {
        Some(n) if !api.models.is_empty() => Err(unknown_model(n)),
        None if !api.models.is_empty() => Err(ApiError::invalid(
            "several models are served here; say which in `model`",
            Some("model"),
        )),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no model is ready on this cluster yet; load one with `hearth model load M` \
             or start a node with `hearth up --model M`",
        )
        .code("model_not_loaded")),
    }
}

fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

fn chat_messages(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    messages
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "unsupported message role {other:?}: use system, user or assistant"
                        ),
                        Some("messages"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text += &t,
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    "a text content part needs `text`",
                                    Some("messages"),
                                ))
                            }
                            (other, _) => {
                                return Err(ApiError::invalid(
                                    format!(
                                    "content parts of type {other:?} are not supported; only text"
                                ),
                                    Some("messages"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// The checked sampling and output fields.
struct Params {
    max_tokens: Option<usize>,
    sampling: SamplerConfig,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

impl Params {
    fn check(s: Sampling) -> Result<Params, ApiError> {
        if let Some(n) = s.n {
            if n != 1 {
                return Err(ApiError::invalid("only `n` = 1 is supported", Some("n")));
            }
        }
        let max_tokens = match (s.max_completion_tokens, s.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            None => None,
            Some((name, m)) if m < 1 => {
                return Err(ApiError::invalid(
                    format!("`{name}` must be at least 1"),
                    Some(name),
                ))
            }
            Some((_, m)) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        let temperature = s.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "`temperature` must be between 0 and 2",
                Some("temperature"),
            ));
        }
        let top_p = s.top_p.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(ApiError::invalid(
                "`top_p` must be between 0 and 1",
                Some("top_p"),
            ));
        }
        let stop = match s.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                format!(
                    "`stop` takes at most {MAX_STOPS} strings of at most {MAX_STOP_BYTES} bytes"
                ),
                Some("stop"),
            ));
        }
        let seed = s.seed.map(|v| v as u64).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        // top_p 0 keeps only the most likely token, which is greedy decoding.
        let temperature = if top_p == 0.0 { 0.0 } else { temperature };
        let stream = s.stream.unwrap_or(false);
        Ok(Params {
            max_tokens,
            sampling: SamplerConfig {
                temperature,
                top_p,
                seed,
                ..SamplerConfig::default()
            },
            stop,
            stream,
            include_usage: stream
                && s.stream_options
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// What every answer to one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(kind: Kind) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    format!(
        "{prefix}-{nanos:016x}{:04x}",
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

async fn generate(
    serving: Arc<Serving>,
    kind: Kind,
    prompt: Vec<u32>,
    p: Params,
    track: &RequestTrack,
    max_prompt: Option<usize>,
) -> Result<Response, ApiError> {
    let param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some(param)));
    }
    if let Some(max) = max_prompt.filter(|&m| prompt.len() > m) {
        return Err(ApiError::invalid(
            format!(
                "the prompt has {} tokens; this node accepts at most {max} per request",
                prompt.len()
            ),
            Some(param),
        )
        .code("context_length_exceeded"));
    }
    let context = serving.model.context;
    let room = context.saturating_sub(prompt.len());
    let max_tokens = p.max_tokens.unwrap_or(room);
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::invalid(
            format!(
                "this model's context holds {context} tokens; the prompt has {} and {} more \
                 were asked for",
                prompt.len(),
                max_tokens.max(1)
            ),
            Some(param),
        )
        .code("context_length_exceeded"));
    }
    let (tx, rx) = mpsc::channel(EVENTS_PER_REQUEST);
    let meta = Meta {
        id: request_id(kind),
        created: now_s(),
        model: serving.model.id.clone(),
        kind,
        prompt_tokens: prompt.len(),
    };
    track.queued();
    serving
        .engine
        .submit(Job {
            prompt,
            max_tokens,
            sampling: p.sampling,
            stop: p.stop,
            events: tx,
            track: track.clone(),
        })
        .map_err(|e| match e {
            Refused::QueueFull => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too many requests are waiting for this model; retry shortly",
            )
            .code("rate_limit_exceeded"),
            Refused::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the engine has stopped",
            ),
        })?;
    if p.stream {
        Ok(stream(meta, rx, p.include_usage))
    } else {
        whole(meta, rx).await
    }
}

/// Waits for the whole answer. Dropping this future (the client left) drops the receiver, and
/// the engine stops at its next token.
async fn whole(meta: Meta, mut rx: mpsc::Receiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => text += &t,
            Some(Event::Done {
                finish,
                completion_tokens,
            }) => {
                let usage = Usage::new(meta.prompt_tokens, completion_tokens);
                return Ok(match meta.kind {
                    Kind::Chat => Json(ChatCompletion {
                        id: meta.id,
                        object: "chat.completion",
                        created: meta.created,
                        model: meta.model,
                        choices: vec![ChatChoice {
                            index: 0,
                            message: AssistantMessage {
                                role: "assistant",
                                content: text,
                            },
                            finish_reason: finish.as_str(),
                        }],
                        usage,
                    })
                    .into_response(),
                    Kind::Completion => Json(Completion {
                        id: meta.id,
                        object: "text_completion",
                        created: meta.created,
                        model: meta.model,
                        choices: vec![CompletionChoice {
                            index: 0,
                            text,
                            logprobs: None,
                            finish_reason: Some(finish.as_str()),
                        }],
                        usage: Some(usage),
                    })
                    .into_response(),
                });
            }
            Some(Event::Failed(m)) => return Err(ApiError::server(m)),
            None => return Err(ApiError::server("the engine stopped before answering")),
        }
    }
}

impl Meta {
    /// One streamed chunk as a server-sent event.
    fn chunk(
        &self,
        role: bool,
        content: Option<String>,
        finish: Option<Finish>,
        usage: Option<Usage>,
    ) -> Bytes {
        let finish_reason = finish.map(Finish::as_str);
        let last_usage = usage.is_some();
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: if last_usage {
                    Vec::new()
                } else {
                    vec![ChatChunkChoice {
                        index: 0,
                        delta: Delta {
                            role: role.then_some("assistant"),
                            content,
                        },
                        finish_reason,
                    }]
                },
                usage,
            }),
            Kind::Completion => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: if last_usage {
                    Vec::new()
                } else {
                    vec![CompletionChoice {
                        index: 0,
                        text: content.unwrap_or_default(),
                        logprobs: None,
                        finish_reason,
                    }]
                },
                usage,
            }),
        };
        event(&json.unwrap_or_else(|_| "{}".to_string()))
    }
}

fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

struct StreamState {
    meta: Meta,
    rx: mpsc::Receiver<Event>,
    out: VecDeque<Bytes>,
    include_usage: bool,
    done: bool,
}

/// Server-sent events. The body pulls from the engine's channel only as fast as the client
/// reads; when the client disconnects the body is dropped with the receiver, which stops the
/// generation.
fn stream(meta: Meta, rx: mpsc::Receiver<Event>, include_usage: bool) -> Response {
    let mut out = VecDeque::new();
    if meta.kind == Kind::Chat {
        out.push_back(meta.chunk(true, Some(String::new()), None, None));
    }
    let state = StreamState {
        meta,
        rx,
        out,
        include_usage,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(t)) => {
                    let c = st.meta.chunk(false, Some(t), None, None);
                    st.out.push_back(c);
                }
                Some(Event::Done {
                    finish,
                    completion_tokens,
                }) => {
                    let content = (st.meta.kind == Kind::Completion).then(String::new);
                    let c = st.meta.chunk(false, content, Some(finish), None);
                    st.out.push_back(c);
                    if st.include_usage {
                        let usage = Usage::new(st.meta.prompt_tokens, completion_tokens);
                        let c = st.meta.chunk(false, None, None, Some(usage));
                        st.out.push_back(c);
                    }
                    st.out.push_back(event("[DONE]"));
                    st.done = true;
                }
                failed => {
                    let message = match failed {
                        Some(Event::Failed(m)) => m,
                        _ => "the engine stopped before answering".to_string(),
                    };
                    let e = ApiError::server(message).body();
                    let json = serde_json::to_string(&e).unwrap_or_else(|_| "{}".to_string());
                    st.out.push_back(event(&json));
                    st.out.push_back(event("[DONE]"));
                    st.done = true;
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| ApiError::server("cannot start the stream").into_response())
}
