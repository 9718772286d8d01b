//! hearth-netlab's tests, one binary. Lab tests need root, iproute2 and nftables; where
//! `Lab::available()` says no, they print the reason and pass without running.

mod lab;
mod relay;
mod shaping;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Tests that measure time or throughput take this lock so they do not compete for the
/// machine's few cores with each other.
pub fn timing() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The median of a set of durations, in milliseconds.
pub fn median_ms(mut v: Vec<std::time::Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}
