//! `GET /api/events`: the dashboard's live picture as server-sent events.
//!
//! A client gets a `snapshot` event at once — `{"cluster", "instances", "alerts"}`, each what
//! `/api/cluster`, `/api/instances` and `/api/alerts` return — and another whenever the
//! replicated state, this node's idea of the coordinator, the placement errors or the alerts
//! change, at most one per [`MIN_INTERVAL`]. Comment lines keep an idle connection open
//! through proxies.
//!
//! The stream is pulled: the next snapshot is made only when the client's connection has taken
//! the previous one, and from the newest state, so a slow client skips pictures rather than
//! queueing them and costs one snapshot of memory however far behind it is. Clients share the
//! serialized snapshot of each state.

use crate::node::admin::instances_json;
use crate::node::driver::LocalFact;
use crate::node::view::{SharedView, View};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Snapshots are at least this far apart: the state changes with every telemetry sample and
/// heartbeat, and a person cannot read faster than this anyway.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// A comment line this often when nothing changed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One snapshot, as `/api/events` sends it: the dashboard's picture of the cluster from one
/// view; `alerts` is `/api/alerts`'s answer.
fn build(view: &View, alerts: Value) -> Value {
    json!({
        "cluster": view.cluster_json(),
        "instances": instances_json(&view.state, &view.placement_errors),
        "alerts": alerts,
    })
}

/// What a snapshot shows, hashed without building it. The node loop refreshes the view every
/// tick with counters that always move; those alone are not worth a new picture.
fn fingerprint(view: &View, alerts: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    view.state_hash.hash(&mut h);
    view.coordinator.hash(&mut h);
    view.role.hash(&mut h);
    view.listen.hash(&mut h);
    view.live_peers.hash(&mut h);
    view.placement_errors.hash(&mut h);
    alerts.hash(&mut h);
    h.finish()
}

/// The newest snapshot, shared by every client of the node.
pub struct Snapshots {
    view: SharedView,
    last: Mutex<Option<(u64, Arc<str>)>>,
}

impl Snapshots {
    pub fn new(view: SharedView) -> Snapshots {
        Snapshots {
            view,
            last: Mutex::new(None),
        }
    }

    /// The current snapshot and its fingerprint; `None` when the view cannot be read.
    pub fn current(&self) -> Option<(u64, Arc<str>)> {
        // The alert book has a lock of its own; it is not taken while the view is held.
        let alerts = self.view.read().ok()?.alerts.clone().json();
        let alerts_text = alerts.to_string();
        let view = self.view.read().ok()?;
        let fp = fingerprint(&view, &alerts_text);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, text)) = last.as_ref() {
            if *f == fp {
                return Some((fp, Arc::clone(text)));
            }
        }
        let text: Arc<str> = build(&view, alerts).to_string().into();
        drop(view);
        *last = Some((fp, Arc::clone(&text)));
        Some((fp, text))
    }
}

/// The events route's state.
#[derive(Clone)]
pub struct Events {
    pub snapshots: Arc<Snapshots>,
    /// Closes when the node loop ends; see [`super::Dashboard::node_loop`].
    pub node_loop: mpsc::Sender<LocalFact>,
}

pub async fn handler(
    State(events): State<Events>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(stream(events.snapshots, events.node_loop))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

struct Cursor {
    snapshots: Arc<Snapshots>,
    node_loop: mpsc::Sender<LocalFact>,
    /// Fingerprint of the snapshot sent last.
    sent: Option<u64>,
    /// When the next snapshot may be looked at.
    due: Instant,
}

/// Snapshot events: the current one, then each new one, until the node loop ends.
pub fn stream(
    snapshots: Arc<Snapshots>,
    node_loop: mpsc::Sender<LocalFact>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let cursor = Cursor {
        snapshots,
        node_loop,
        sent: None,
        due: Instant::now(),
    };
    futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            tokio::select! {
                biased;
                _ = c.node_loop.closed() => return None,
                _ = tokio::time::sleep_until(c.due) => {}
            }
            c.due = Instant::now() + MIN_INTERVAL;
            let (fp, text) = c.snapshots.current()?;
            if c.sent != Some(fp) {
                c.sent = Some(fp);
                let event = Event::default().event("snapshot").data(&*text);
                return Some((Ok(event), c));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::alerts::{Severity, Subject};
    use futures_util::StreamExt;
    use hearth_cluster::{ClusterState, NodeEntry, NodeId};
    use std::sync::RwLock;

    fn view() -> View {
        let mut state = ClusterState::default();
        state.members.insert(
            NodeId::from("n1"),
            NodeEntry {
                name: "desk".into(),
                addresses: vec![],
                devices: vec![],
                last_seen_ms: 1,
                incarnation: 1,
                joined_seq: 1,
            },
        );
        View {
            node_id: "n1".into(),
            node_name: "desk".into(),
            state_hash: state.state_hash(),
            state: std::sync::Arc::new(state),
            ..View::default()
        }
    }

    #[test]
    fn a_snapshot_is_what_the_three_endpoints_return() {
        let v = view();
        v.alerts.raise(
            "model_download_failed",
            Severity::Warning,
            Subject::Model { model: "m".into() },
            "retry",
        );
        let s = build(&v, v.alerts.json());
        let mut cluster = v.cluster_json();
        // Counters aside, the cluster part is `/api/cluster`'s answer.
        assert_eq!(s["cluster"]["nodes"], cluster["nodes"]);
        assert_eq!(s["cluster"]["node"]["name"], "desk");
        cluster["counters"] = s["cluster"]["counters"].clone();
        assert_eq!(s["cluster"], cluster);
        assert_eq!(
            s["instances"],
            instances_json(&v.state, &v.placement_errors)
        );
        assert_eq!(s["alerts"], v.alerts.json());
        assert_eq!(s["alerts"]["active"][0]["name"], "model_download_failed");
        assert_eq!(s.as_object().unwrap().len(), 3);
    }

    /// The next event's data within `limit`, or `None`.
    async fn next_data(
        s: &mut (impl Stream<Item = Result<Event, Infallible>> + Unpin),
        limit: Duration,
    ) -> Option<Value> {
        let event = tokio::time::timeout(limit, s.next()).await.ok()??.ok()?;
        let rendered = render(event).await;
        assert!(
            rendered.starts_with("event: snapshot\ndata: "),
            "{rendered}"
        );
        let data = rendered
            .strip_prefix("event: snapshot\ndata: ")?
            .trim_end_matches('\n');
        Some(serde_json::from_str(data).expect("one line of JSON"))
    }

    /// What a client reads for `event`: it goes through the body the handler returns.
    async fn render(event: Event) -> String {
        use axum::response::IntoResponse;
        let one = futures_util::stream::iter([Ok::<_, Infallible>(event)]);
        let body = Sse::new(one).into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn snapshots_come_on_connect_and_on_change_only_and_end_with_the_node_loop() {
        let shared: SharedView = Arc::new(RwLock::new(view()));
        let snapshots = Arc::new(Snapshots::new(Arc::clone(&shared)));
        let (tx, rx) = mpsc::channel::<LocalFact>(1);
        let mut s = Box::pin(stream(Arc::clone(&snapshots), tx.clone()));

        let first = next_data(&mut s, Duration::from_millis(200))
            .await
            .expect("a snapshot on connect");
        assert_eq!(first["cluster"]["node"]["name"], "desk");

        // Counters move every tick; that alone sends nothing.
        shared.write().unwrap().net.gossip_in += 5;
        assert!(next_data(&mut s, 3 * MIN_INTERVAL).await.is_none());

        // A new state does.
        {
            let mut v = shared.write().unwrap();
            std::sync::Arc::make_mut(&mut v.state).last_seq = 7;
            v.state_hash = v.state.state_hash();
        }
        let second = next_data(&mut s, 3 * MIN_INTERVAL)
            .await
            .expect("a new state");
        assert_eq!(second["cluster"]["last_seq"], 7);
        assert_eq!(second["cluster"]["counters"]["gossip_in"], 5);

        // So does an alert.
        let alerts = shared.read().unwrap().alerts.clone();
        alerts.raise(
            "model_download_failed",
            Severity::Warning,
            Subject::Model { model: "m".into() },
            "retry",
        );
        let third = next_data(&mut s, 3 * MIN_INTERVAL).await.expect("an alert");
        assert_eq!(
            third["alerts"]["active"][0]["name"],
            "model_download_failed"
        );

        // Clients share the serialized snapshot.
        let (fp1, a) = snapshots.current().unwrap();
        let (fp2, b) = snapshots.current().unwrap();
        assert_eq!(fp1, fp2);
        assert!(Arc::ptr_eq(&a, &b));

        drop(rx);
        let end = tokio::time::timeout(Duration::from_secs(1), s.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the stream ends with the node loop"
        );
    }

    #[tokio::test]
    async fn a_state_that_changes_constantly_gives_at_most_four_snapshots_a_second() {
        let shared: SharedView = Arc::new(RwLock::new(view()));
        let (tx, _rx) = mpsc::channel::<LocalFact>(1);
        let mut s = Box::pin(stream(Arc::new(Snapshots::new(Arc::clone(&shared))), tx));
        let writer = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                for seq in 1.. {
                    {
                        let mut v = shared.write().unwrap();
                        std::sync::Arc::make_mut(&mut v.state).last_seq = seq;
                        v.state_hash = v.state.state_hash();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_millis(1100) {
            if let Some(v) = next_data(&mut s, Duration::from_millis(300)).await {
                seen.push(v["cluster"]["last_seq"].as_u64().unwrap());
            }
        }
        writer.abort();
        // One on connect, then one per interval: 5 in 1.1 s at most.
        assert!((3..=6).contains(&seen.len()), "{seen:?}");
        // Each is the newest state, not a queued one: they skip ahead.
        assert!(seen.windows(2).all(|w| w[1] > w[0] + 5), "{seen:?}");
    }
}
