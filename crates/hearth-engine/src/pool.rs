//! A persistent worker pool: threads stay alive between parallel regions and spin briefly
//! before sleeping, so the hundreds of small regions in one decode step cost microseconds,
//! not thread wake-ups.
//!
//! A pool may pin its threads, one per core. A pool whose workers sleep between steps (a
//! pipeline stage between tokens) is woken by its caller; where another thread holds the other
//! core at that moment, the scheduler may put the worker on the caller's core, and the two then
//! take turns on one core through every region of the step. Pinned, they cannot.

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
    /// The core the calling thread is pinned to on its first `run`, when the pool pins.
    caller_core: Option<usize>,
}

impl ThreadPool {
    pub fn new(threads: usize) -> ThreadPool {
        ThreadPool::start(threads, None)
    }

    /// A pool whose thread `i` (the caller is thread 0) is pinned to the `i`-th core this
    /// process may use. Where pinning is not supported, or there are more threads than cores,
    /// nothing is pinned.
    pub fn pinned(threads: usize) -> ThreadPool {
        let cores = affinity::allowed_cores();
        let threads = threads.max(1);
        let plan = (threads <= cores.len()).then_some(cores);
        ThreadPool::start(threads, plan)
    }

    /// [`ThreadPool::pinned`] or [`ThreadPool::new`].
    pub fn for_options(threads: usize, pin: bool) -> ThreadPool {
        if pin {
            ThreadPool::pinned(threads)
        } else {
            ThreadPool::new(threads)
        }
    }

    fn start(threads: usize, cores: Option<Vec<usize>>) -> ThreadPool {
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
                let core = cores.as_ref().map(|c| c[index]);
                let handle = thread::Builder::new()
                    .name(format!("hearth-worker-{index}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            affinity::pin_current(core);
                        }
                        worker_loop(&shared, index, threads)
                    })
                    .expect("the OS refused to start a worker thread");
                let thread = handle.thread().clone();
                (handle, thread)
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            run_lock: Mutex::new(()),
            caller_core: cores.map(|c| c[0]),
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
        if let Some(core) = self.caller_core {
            affinity::pin_caller_once(core);
        }
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
            if spins.is_multiple_of(64) {
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
                if spins.is_multiple_of(64) {
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

/// Thread placement. Linux only; elsewhere every call does nothing.
mod affinity {
    use std::cell::Cell;

    thread_local! {
        static PINNED: Cell<bool> = const { Cell::new(false) };
    }

    /// Pins the calling thread the first time it asks; a thread that calls into several
    /// pinned pools stays where the first one put it.
    pub fn pin_caller_once(core: usize) {
        PINNED.with(|p| {
            if !p.replace(true) {
                pin_current(core);
            }
        });
    }

    #[cfg(target_os = "linux")]
    pub fn allowed_cores() -> Vec<usize> {
        // SAFETY: `cpu_set_t` is plain data; the size passed is the set's own.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[cfg(target_os = "linux")]
    pub fn pin_current(core: usize) {
        // SAFETY: as above; a failed call leaves the thread where it was.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed_cores() -> Vec<usize> {
        Vec::new()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn pin_current(_core: usize) {}
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

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_pool_runs_each_thread_on_its_own_core() {
        let cores = affinity::allowed_cores();
        if cores.len() < 2 {
            // One core: `pinned` pins nothing, which the next assertion checks instead.
            assert!(ThreadPool::pinned(2).caller_core.is_none());
            return;
        }
        // Run from a thread of its own: pinning the test harness's thread would outlive the test.
        std::thread::spawn(move || {
            let pool = ThreadPool::pinned(2);
            let seen: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(usize::MAX)).collect();
            for _ in 0..3 {
                pool.run(&|i, _| {
                    // SAFETY: no arguments; returns the core this thread runs on.
                    let cpu = unsafe { libc::sched_getcpu() };
                    seen[i].store(cpu as usize, Ordering::SeqCst);
                });
            }
            assert_eq!(seen[0].load(Ordering::SeqCst), cores[0]);
            assert_eq!(seen[1].load(Ordering::SeqCst), cores[1]);
            assert!(ThreadPool::pinned(cores.len() + 1).caller_core.is_none());
        })
        .join()
        .unwrap();
    }
}
