//! Timing for the benchmarks (the device's and the user-space library's):
//! rates of one run of a closure, measured the same way for the baseline
//! and the thing measured, so their ratio compares like with like.

use std::time::Instant;

/// MiB per second for `run`, which moves `bytes`.
pub fn mib_per_s(bytes: u64, run: impl FnOnce()) -> f64 {
    let start = Instant::now();
    run();
    bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Operations per second for `run`, which does `count` of them.
pub fn per_second(count: usize, run: impl FnOnce()) -> f64 {
    let start = Instant::now();
    run();
    count as f64 / start.elapsed().as_secs_f64()
}
