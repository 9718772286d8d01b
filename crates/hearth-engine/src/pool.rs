//! A persistent worker pool: threads stay alive between parallel regions and spin briefly
//! before sleeping, so the hundreds of small regions in one decode step cost microseconds,
//! not thread wake-ups.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};

/// Spins this many times waiting for work before parking the thread.
const SPIN_LIMIT: u32 = 200_000;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Bumped once per parallel region; workers run the job when they see a new value.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job, valid while `pending > 0` for the region being run.
    job: Mutex<Option<&'static Job>>,
    shutdown: AtomicBool,
    sleeping: Vec<AtomicBool>,
    panicked: AtomicBool,
    /// Set by [`ThreadPool::rest`]: idle workers park at once instead of spinning.
    resting: AtomicBool,
}

/// A fixed set of threads that run closures together. The calling thread takes part as
/// thread 0, so a pool of `n` threads starts `n - 1` workers.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Thread)>,
    /// Serializes `run` calls from different threads.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            sleeping: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            panicked: AtomicBool::new(false),
            resting: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                let handle = thread::Builder::new()
                    .name(format!("hearth-worker-{index}"))
                    .spawn(move || worker_loop(&shared, index, threads))
                    .expect("the OS refused to start a worker thread");
                let thread = handle.thread().clone();
                (handle, thread)
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Tells idle workers to sleep now rather than spin for the next region: for a caller that
    /// knows no work follows soon (a pipeline stage between tokens), so the cores go to
    /// whatever runs next (another stage on the same machine). The next `run` wakes them.
    pub fn rest(&self) {
        self.shared.resting.store(true, Ordering::SeqCst);
    }

    /// Runs `job(thread_index, thread_count)` on every thread of the pool and returns when all
    /// have finished.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync + '_)) {
        let threads = self.threads();
        if threads == 1 {
            job(0, 1);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.resting.store(false, Ordering::SeqCst);
        // SAFETY: the reference is only used by workers until `pending` drops to zero, which
        // this function waits for before returning, so it never outlives the borrow.
        let job_static: &'static Job = unsafe {
            std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(job)
        };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job_static);
        self.shared.pending.store(threads - 1, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for (index, (_, thread)) in self.workers.iter().enumerate() {
            if self.shared.sleeping[index + 1].swap(false, Ordering::SeqCst) {
                thread.unpark();
            }
        }
        job(0, threads);
        let mut spins = 0u32;
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if self.shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked while running a parallel job");
        }
    }
}

fn worker_loop(shared: &Shared, index: usize, threads: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins += 1;
            if spins < SPIN_LIMIT && !shared.resting.load(Ordering::Relaxed) {
                // Now and then give the core away: where more threads than cores want to run
                // (stages of several nodes on one machine), a pure spin would hold a core that
                // another process's stage needs.
                if spins.is_multiple_of(1024) {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            } else {
                shared.sleeping[index].store(true, Ordering::SeqCst);
                if shared.epoch.load(Ordering::SeqCst) == seen
                    && !shared.shutdown.load(Ordering::SeqCst)
                {
                    thread::park();
                }
                shared.sleeping[index].store(false, Ordering::SeqCst);
                spins = 0;
            }
        }
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index, threads)));
            if result.is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for (_, thread) in &self.workers {
            thread.unpark();
        }
        for (handle, _) in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Hands out chunks of `0..total` to threads as they ask, so a slow thread takes fewer.
pub struct ChunkCounter {
    next: AtomicUsize,
    total: usize,
    chunk: usize,
}

impl ChunkCounter {
    pub fn new(total: usize, chunk: usize) -> ChunkCounter {
        ChunkCounter {
            next: AtomicUsize::new(0),
            total,
            chunk: chunk.max(1),
        }
    }

    pub fn next_chunk(&self) -> Option<std::ops::Range<usize>> {
        let start = self.next.fetch_add(self.chunk, Ordering::Relaxed);
        (start < self.total).then(|| start..(start + self.chunk).min(self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn chunks_cover_the_range_exactly_once() {
        let pool = ThreadPool::new(4);
        let seen: Vec<AtomicUsize> = (0..1003).map(|_| AtomicUsize::new(0)).collect();
        let counter = ChunkCounter::new(seen.len(), 7);
        pool.run(&|_, _| {
            while let Some(range) = counter.next_chunk() {
                for i in range {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_resting_pool_parks_its_workers_and_still_runs_the_next_job() {
        let pool = ThreadPool::new(3);
        let count = AtomicUsize::new(0);
        for _ in 0..50 {
            pool.run(&|_, _| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            pool.rest();
            // Parked at once rather than after the spin limit.
            let start = std::time::Instant::now();
            while !pool.shared.sleeping[1..]
                .iter()
                .all(|s| s.load(Ordering::SeqCst))
            {
                assert!(start.elapsed() < std::time::Duration::from_secs(5));
                std::thread::yield_now();
            }
        }
        assert_eq!(count.load(Ordering::Relaxed), 150);
    }

    #[test]
    fn single_thread_pool_runs_inline() {
        let pool = ThreadPool::new(1);
        let count = AtomicUsize::new(0);
        pool.run(&|i, n| {
            assert_eq!((i, n), (0, 1));
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
