//! Alerts: conditions of the cluster a person should act on, judged by this node from the
//! replicated state.
//!
//! [`rules`] are pure functions of the state, a small local [`History`](rules::History) (a
//! trend, a departure or a duration cannot be read from one state) and the [`AlertPolicy`]; an
//! [`AlertBook`] turns what they find into alerts that start, stay and resolve, and keeps the
//! resolved ones for a while. Code that learns of a problem the state does not show (a model
//! download that failed) raises an alert by name with [`Alerts::raise`] and ends it with
//! [`Alerts::resolve`].

pub mod rules;

use super::driver::now_ms;
use super::view::SharedView;
use hearth_cluster::ClusterState;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// How often the rules run: telemetry arrives every couple of seconds and a member is removed
/// after seconds of silence, so a second keeps alerts prompt at negligible cost.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    // For alerts raised from code; no rule's condition is merely informative.
    #[allow(dead_code)]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What an alert is about. Ids are the state's (node ids, device ids, instance ids), so an
/// alert can be matched with `/api/cluster`; messages carry the names people know.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    Node {
        node: String,
    },
    Device {
        node: String,
        device: String,
    },
    Link {
        from: String,
        to: String,
    },
    Instance {
        instance: String,
    },
    /// For alerts raised from code about a model, e.g. [`rules::MODEL_DOWNLOAD_FAILED`].
    #[allow(dead_code)]
    Model {
        model: String,
    },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Node { node } => write!(f, "node {node}"),
            Subject::Device { node, device } => write!(f, "device {device} on {node}"),
            Subject::Link { from, to } => write!(f, "link {from} -> {to}"),
            Subject::Instance { instance } => write!(f, "instance {instance}"),
            Subject::Model { model } => write!(f, "model {model}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Stable: dashboards and silences match on it.
    pub name: String,
    pub severity: Severity,
    pub subject: Subject,
    /// What happened and what to do about it.
    pub message: String,
    pub started_ms: u64,
    /// When it resolved; `None` while active.
    pub ended_ms: Option<u64>,
}

/// Thresholds of the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertPolicy {
    /// Telemetry samples of one device the thermal headroom trend is fitted over.
    pub thermal_samples: usize,
    /// Fewer samples than this give no trend: a couple of points are mostly noise.
    pub thermal_min_samples: usize,
    /// A device whose headroom trend reaches 0 sooner than this is predicted to throttle, s.
    pub throttle_warning_s: f64,
    /// Used over total memory of a device at which it is under pressure (warning)…
    pub memory_warning_ratio: f64,
    /// …and at which the next allocation may fail (critical).
    pub memory_critical_ratio: f64,
    /// How long a member that disappeared is reported lost, unless it comes back, ms.
    pub node_lost_hold_ms: u64,
    /// A link whose RTT p95 exceeds this is degraded, ms: pipeline stages exchange activations
    /// on every token, so latency adds directly to each token's time.
    pub link_rtt_p95_ms: f64,
    /// A link losing more than this fraction of probes is degraded.
    pub link_loss_ratio: f64,
    /// An instance placing or loading for longer than this is stalled, ms.
    pub placement_stall_ms: u64,
    /// How long resolved alerts stay listed, ms.
    pub keep_resolved_ms: u64,
    /// At most this many resolved alerts are listed.
    pub max_resolved: usize,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            thermal_samples: 30,
            thermal_min_samples: 5,
            throttle_warning_s: 300.0,
            memory_warning_ratio: 0.90,
            memory_critical_ratio: 0.97,
            node_lost_hold_ms: 10 * 60_000,
            link_rtt_p95_ms: 150.0,
            link_loss_ratio: 0.02,
            placement_stall_ms: 5 * 60_000,
            keep_resolved_ms: 60 * 60_000,
            max_resolved: 200,
        }
    }
}

/// A condition a rule finds true now.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub name: &'static str,
    pub severity: Severity,
    pub subject: Subject,
    pub message: String,
}

/// What an evaluation or a raise changed, for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Started(Alert),
    /// Still active, at another severity.
    Changed(Alert),
    Resolved(Alert),
}

type Key = (String, Subject);

/// Active and recently resolved alerts. One alert per name and subject: a condition that
/// holds on consecutive evaluations is the same alert, whose message and severity follow it.
#[derive(Debug, Clone, Default)]
pub struct AlertBook {
    policy: AlertPolicy,
    history: rules::History,
    active: BTreeMap<Key, Alert>,
    /// Alerts raised from code: only [`AlertBook::resolve`] ends them.
    raised: BTreeSet<Key>,
    /// Oldest first.
    resolved: VecDeque<Alert>,
}

impl AlertBook {
    pub fn new(policy: AlertPolicy) -> AlertBook {
        AlertBook {
            policy,
            ..AlertBook::default()
        }
    }

    /// Runs every rule on `state`: conditions that newly hold start alerts, those that no
    /// longer hold resolve theirs.
    pub fn evaluate(&mut self, state: &ClusterState, now_ms: u64) -> Vec<Change> {
        self.history.observe(state, &self.policy, now_ms);
        let firing = rules::evaluate(state, &self.history, &self.policy, now_ms);
        let mut changes = Vec::new();
        let mut holding = BTreeSet::new();
        for f in firing {
            let key = (f.name.to_string(), f.subject);
            holding.insert(key.clone());
            changes.extend(self.fire(key, f.severity, f.message, now_ms));
        }
        let ended: Vec<Key> = self
            .active
            .keys()
            .filter(|k| !holding.contains(*k) && !self.raised.contains(*k))
            .cloned()
            .collect();
        for k in ended {
            changes.extend(self.end(&k, now_ms));
        }
        self.prune(now_ms);
        changes
    }

    /// Starts (or updates) an alert that stays active until [`AlertBook::resolve`].
    #[allow(dead_code)] // the hook for code that learns of problems the state does not show
    pub fn raise(
        &mut self,
        name: &str,
        severity: Severity,
        subject: Subject,
        message: String,
        now_ms: u64,
    ) -> Option<Change> {
        let key = (name.to_string(), subject);
        self.raised.insert(key.clone());
        self.fire(key, severity, message, now_ms)
    }

    /// Ends a raised alert; `None` when it was not active.
    #[allow(dead_code)] // with `raise`
    pub fn resolve(&mut self, name: &str, subject: &Subject, now_ms: u64) -> Option<Change> {
        let key = (name.to_string(), subject.clone());
        self.raised.remove(&key);
        let change = self.end(&key, now_ms);
        self.prune(now_ms);
        change
    }

    /// Active alerts, most severe first, then oldest first.
    pub fn active(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().collect();
        v.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.started_ms.cmp(&b.started_ms))
        });
        v
    }

    /// Resolved alerts still kept, most recently resolved first.
    pub fn resolved(&self) -> impl Iterator<Item = &Alert> {
        self.resolved.iter().rev()
    }

    fn fire(
        &mut self,
        key: Key,
        severity: Severity,
        message: String,
        now_ms: u64,
    ) -> Option<Change> {
        if let Some(a) = self.active.get_mut(&key) {
            let changed = a.severity != severity;
            a.severity = severity;
            a.message = message;
            return changed.then(|| Change::Changed(a.clone()));
        }
        let a = Alert {
            name: key.0.clone(),
            severity,
            subject: key.1.clone(),
            message,
            started_ms: now_ms,
            ended_ms: None,
        };
        self.active.insert(key, a.clone());
        Some(Change::Started(a))
    }

    fn end(&mut self, key: &Key, now_ms: u64) -> Option<Change> {
        let mut a = self.active.remove(key)?;
        a.ended_ms = Some(now_ms);
        self.resolved.push_back(a.clone());
        Some(Change::Resolved(a))
    }

    fn prune(&mut self, now_ms: u64) {
        let keep = self.policy.keep_resolved_ms;
        while self
            .resolved
            .front()
            .is_some_and(|a| a.ended_ms.is_some_and(|e| now_ms.saturating_sub(e) > keep))
            || self.resolved.len() > self.policy.max_resolved
        {
            self.resolved.pop_front();
        }
    }
}

/// The node's alert book, shared by the evaluation task, the API, the metrics and any code
/// that raises an alert.
#[derive(Debug, Clone)]
pub struct Alerts(Arc<Mutex<AlertBook>>);

impl Default for Alerts {
    fn default() -> Self {
        Alerts::new(AlertPolicy::default())
    }
}

impl Alerts {
    pub fn new(policy: AlertPolicy) -> Alerts {
        Alerts(Arc::new(Mutex::new(AlertBook::new(policy))))
    }

    fn book(&self) -> MutexGuard<'_, AlertBook> {
        // The book stays consistent between statements, so one that panicked holding the lock
        // left nothing half-done worth refusing to read.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises an alert no rule derives from the state, e.g.
    /// `alerts.raise(rules::MODEL_DOWNLOAD_FAILED, Severity::Warning, Subject::Model { .. }, "…")`.
    /// It stays active until [`Alerts::resolve`] with the same name and subject.
    #[allow(dead_code)] // the hook for code that learns of problems the state does not show
    pub fn raise(
        &self,
        name: &str,
        severity: Severity,
        subject: Subject,
        message: impl Into<String>,
    ) {
        let change = self
            .book()
            .raise(name, severity, subject, message.into(), now_ms());
        if let Some(c) = change {
            log(&c);
        }
    }

    #[allow(dead_code)] // with `raise`
    pub fn resolve(&self, name: &str, subject: &Subject) {
        let change = self.book().resolve(name, subject, now_ms());
        if let Some(c) = change {
            log(&c);
        }
    }

    /// Runs the rules on `state` and logs what changed.
    pub fn evaluate(&self, state: &ClusterState, now_ms: u64) {
        let changes = self.book().evaluate(state, now_ms);
        for c in &changes {
            log(c);
        }
    }

    pub fn active(&self) -> Vec<Alert> {
        self.book().active().into_iter().cloned().collect()
    }

    /// `GET /api/alerts`.
    pub fn json(&self) -> Value {
        let book = self.book();
        json!({
            "active": book.active(),
            "resolved": book.resolved().collect::<Vec<_>>(),
        })
    }
}

fn log(change: &Change) {
    match change {
        Change::Started(a) | Change::Changed(a) => tracing::warn!(
            alert = %a.name,
            severity = a.severity.as_str(),
            subject = %a.subject,
            "{}",
            a.message
        ),
        Change::Resolved(a) => tracing::info!(
            alert = %a.name,
            subject = %a.subject,
            "resolved after {:.0} s",
            a.ended_ms.unwrap_or(a.started_ms).saturating_sub(a.started_ms) as f64 / 1e3
        ),
    }
}

/// Evaluates the view's state every [`EVALUATE_EVERY`] until `stop` turns true. It reads the
/// copy the node loop publishes, so the loop itself does no alerting work.
pub fn spawn(view: SharedView, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVALUATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
            // Cloned so the lock is held for a copy, not for the rules.
            let Ok((state, alerts)) = view.read().map(|v| (v.state.clone(), v.alerts.clone()))
            else {
                continue;
            };
            alerts.evaluate(&state, now_ms());
        }
    })
}
