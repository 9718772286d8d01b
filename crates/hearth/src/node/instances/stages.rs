//! Every node's half of serving: it runs the stages the coordinator placed on it. When the state
//! gives this node a stage it finds the model file, loads its layers and starts the stage's
//! thread, reporting each step as a `StageStatus`; when the stage leaves the state it is
//! stopped.

use super::files::LocalModels;
use super::transport::{Transport, TransportOutbox};
use crate::node::driver::LocalFact;
use hearth_cluster::{ClusterState, Event, InstanceStatus, NodeId, StageStatus, WantedModel};
use hearth_engine::{Shard, ShardOptions};
use hearth_model::gguf::GgufFile;
use hearth_pipeline::{spawn, ActDtype, Outbox, StageConfig, StageWorker};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How this node runs the stages it is given.
#[derive(Debug, Clone)]
pub struct StageSettings {
    pub threads: usize,
    pub pin_threads: bool,
    /// Sequences each stage holds at once.
    pub sequences: usize,
    /// Share of full speed (a declared slower device), see `ShardOptions::compute_share`.
    pub compute_share: f64,
    /// Messages waiting for a stage.
    pub queue: usize,
    /// Prompt tokens computed at once: the same as a local run, so results match it exactly.
    pub batch: usize,
}

impl Default for StageSettings {
    fn default() -> Self {
        StageSettings {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_threads: false,
            sequences: 4,
            compute_share: 1.0,
            queue: 64,
            batch: ShardOptions::default().max_batch,
        }
    }
}

pub struct StageRunner {
    pub me: NodeId,
    pub transport: Arc<Transport>,
    pub files: Arc<LocalModels>,
    pub facts: mpsc::Sender<LocalFact>,
    pub settings: StageSettings,
}

/// A stage this node started; `cancelled` stops a load that finishes after the stage was
/// removed from the state; `status` is what this node last said about it.
struct Running {
    cancelled: Arc<AtomicBool>,
    status: Arc<Mutex<StageStatus>>,
}

impl StageRunner {
    pub async fn run(self, mut states: watch::Receiver<Arc<ClusterState>>) {
        let this = Arc::new(self);
        let mut running: HashMap<String, Running> = HashMap::new();
        loop {
            let state = states.borrow_and_update().clone();
            this.sync(&state, &mut running);
            if states.changed().await.is_err() {
                break;
            }
        }
        for (id, r) in running {
            r.cancelled.store(true, Ordering::Relaxed);
            this.transport.remove_stage(&id);
        }
    }

    fn sync(self: &Arc<Self>, state: &ClusterState, running: &mut HashMap<String, Running>) {
        let mine: HashMap<&String, usize> = state
            .instances
            .iter()
            .filter(|(_, i)| !matches!(i.status, InstanceStatus::Failed { .. }))
            .filter_map(|(id, i)| {
                i.stages
                    .iter()
                    .position(|s| s.node == self.me)
                    .map(|at| (id, at))
            })
            .collect();
        running.retain(|id, r| {
            let keep = mine.contains_key(id);
            if !keep {
                tracing::info!(instance = %id, "stopping a stage no longer placed here");
                r.cancelled.store(true, Ordering::Relaxed);
                self.transport.remove_stage(id);
            }
            keep
        });
        for (id, &at) in &mine {
            if let Some(r) = running.get(*id) {
                // A report lost to a change of coordinator is made again.
                let said = r.status.lock().map(|s| s.clone()).unwrap_or_default();
                let recorded = &state.instances[*id].stages[at].status;
                if said != StageStatus::Pending && *recorded != said {
                    self.report(id, said);
                }
                continue;
            }
            let inst = &state.instances[*id];
            let Some(model) = state.wanted.get(&inst.model).cloned() else {
                continue;
            };
            let stage = &inst.stages[at];
            let job = LoadJob {
                instance: (*id).clone(),
                model,
                state: Arc::new(state.clone()),
                layers: stage.first_layer as usize..stage.end_layer as usize,
                next: inst.stages.get(at + 1).map(|s| s.node.to_string()),
                cancelled: Arc::new(AtomicBool::new(false)),
                status: Arc::new(Mutex::new(StageStatus::Pending)),
            };
            running.insert(
                (*id).clone(),
                Running {
                    cancelled: Arc::clone(&job.cancelled),
                    status: Arc::clone(&job.status),
                },
            );
            let this = Arc::clone(self);
            tokio::task::spawn_blocking(move || this.load(job));
        }
    }

    /// Proposes the stage's status; never waits (it is called from the async loop too): a
    /// report that does not fit the queue is made again on the next state.
    fn report(&self, instance: &str, status: StageStatus) {
        let event = Event::StageStatus {
            instance: instance.to_string(),
            node: self.me.clone(),
            status,
        };
        let _ = self.facts.try_send(LocalFact::Propose(event));
    }

    fn load(&self, job: LoadJob) {
        let id = job.instance.clone();
        let set = |status: StageStatus| {
            if let Ok(mut s) = job.status.lock() {
                *s = status.clone();
            }
            self.report(&id, status);
        };
        set(StageStatus::Loading { progress: 0.0 });
        let started = std::time::Instant::now();
        match self.start_stage(&job) {
            Ok(()) if job.cancelled.load(Ordering::Relaxed) => self.transport.remove_stage(&id),
            Ok(()) => {
                tracing::info!(instance = %id, layers = ?job.layers, seconds = started.elapsed().as_secs_f64(), "stage ready");
                set(StageStatus::Ready);
            }
            Err(reason) => {
                tracing::warn!(instance = %id, %reason, "stage failed to load");
                set(StageStatus::Failed { reason });
            }
        }
    }

    fn start_stage(&self, job: &LoadJob) -> Result<(), String> {
        // Loading progress is the fetch's, when the file comes from peers.
        let last = Mutex::new(std::time::Instant::now());
        let on_progress = |p: hearth_transfer::Progress| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if p.total > 0 && last.elapsed() >= Duration::from_millis(500) {
                *last = std::time::Instant::now();
                let progress = (p.done as f64 / p.total as f64).clamp(0.0, 0.99);
                self.report(&job.instance, StageStatus::Loading { progress });
            }
        };
        let path = self.files.obtain(
            &job.model,
            Some(job.layers.clone()),
            &job.state,
            &on_progress,
        )?;
        let file = GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s = &self.settings;
        let shard = Shard::load(
            Arc::new(file),
            job.layers.clone(),
            ShardOptions {
                context: job.model.context as usize,
                max_sequences: s.sequences,
                max_batch: s.batch,
                threads: s.threads,
                pin_threads: s.pin_threads,
                compute_share: s.compute_share,
                ..ShardOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let worker = StageWorker::new(
            shard,
            StageConfig {
                instance: job.instance.clone(),
                next: job.next.clone(),
                act_dtype: ActDtype::F32,
                idle_timeout: Duration::from_secs(120),
            },
        );
        let out: Arc<dyn Outbox> = Arc::new(TransportOutbox(Arc::clone(&self.transport)));
        let handle = spawn(worker, out, s.queue).map_err(|e| e.to_string())?;
        self.transport.add_stage(&job.instance, handle);
        Ok(())
    }
}

struct LoadJob {
    instance: String,
    model: WantedModel,
    /// The state when the stage was placed: who may have the file.
    state: Arc<ClusterState>,
    layers: std::ops::Range<usize>,
    next: Option<String>,
    cancelled: Arc<AtomicBool>,
    status: Arc<Mutex<StageStatus>>,
}
