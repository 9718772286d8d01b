//! A running node: the peer layer (`hearth-net`), the replicated cluster state
//! (`hearth-cluster`) and the HTTP API, wired together on one tokio runtime.
//!
//! [`driver`] is the loop that turns network events and a timer into inputs of the cluster
//! member and its outputs into network sends; [`view`] is what the loop publishes for the API;
//! [`api`] serves it, with [`openai`], the OpenAI-compatible API; [`instances`] serves models
//! across the cluster and [`admin`] loads and unloads them; [`metrics`] exposes the node and the
//! cluster to Prometheus; [`alerts`] judges the state for conditions a person should act on;
//! [`security`] guards the API (tokens, TLS) and keeps the node's audit log; [`dashboard`]
//! serves the page that shows all of it in a browser.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod dashboard;
pub mod driver;
pub mod facts;
pub mod instances;
pub mod metrics;
pub mod openai;
pub mod security;
pub mod view;
