//! Independent pieces of work (chunks of a batch, packs of ablated variants) run one per
//! core, each with single-threaded kernels.
//!
//! The kernels of one forward are parallel inside (rayon loops, the row split of the BLAS
//! calls), which hands work between the cores at every operation. With several independent
//! forwards at hand, one per core needs no hand-off at all (what that gains is measured in
//! README's Benchmarks section).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::{MsError, Result};

/// Workers to use: the rayon pool's size (`RAYON_NUM_THREADS`).
pub fn workers() -> usize {
    rayon::current_num_threads()
}

/// `f` on every item, on up to `workers` threads, each running its items inside a rayon
/// pool of one thread (so the kernels' parallel loops stay on it); results in item order.
/// Items are handed out in order to whichever worker is free; after an error no further item
/// starts, and the first error (in item order) is returned. With one worker or one item,
/// everything runs on the calling thread with the kernels parallel as usual.
pub fn map<T: Send, R: Send>(
    items: Vec<T>,
    workers: usize,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if workers < 2 || items.len() < 2 {
        return items.into_iter().map(f).collect();
    }
    let n_items = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let pools = single_thread_pools(workers)?;
    let done: Mutex<Vec<(usize, Result<R>)>> = Mutex::new(Vec::with_capacity(n_items));
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for pool in pools.iter().take(n_items) {
            scope.spawn(|| {
                pool.install(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let next = queue.lock().expect("no panics while held").next();
                    let Some((i, item)) = next else { break };
                    let out = f(item);
                    failed.fetch_or(out.is_err(), Ordering::Relaxed);
                    done.lock().expect("no panics while held").push((i, out));
                })
            });
        }
    });
    let mut done = done.into_inner().expect("no panics while held");
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Run `f` on a worker of the global rayon pool and wait for it. The kernels split their
/// loops with rayon; called from a thread outside the pool, each split is handed over
/// through a lock and wakes the workers from sleep (tens of microseconds, hundreds of times a
/// generated token), while inside the pool it is a cheap `join`.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("rayon::scope waits for the job it spawned")
}

/// Up to `n` rayon pools of one thread each, made once per process.
fn single_thread_pools(n: usize) -> Result<&'static [rayon::ThreadPool]> {
    static POOLS: OnceLock<Vec<rayon::ThreadPool>> = OnceLock::new();
    if let Some(p) = POOLS.get() {
        return Ok(&p[..n.min(p.len())]);
    }
    let pools = (0..n)
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("mindscope-core-{i}"))
                .build()
                .map_err(|e| MsError::invalid(format!("cannot start a worker thread: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let p = POOLS.get_or_init(|| pools);
    Ok(&p[..n.min(p.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order() {
        let out = map((0..20).collect(), 2, |i: usize| Ok(i * i)).unwrap();
        assert_eq!(out, (0..20).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn each_item_runs_on_a_single_thread_pool() {
        let out = map(vec![(); 4], 2, |_| Ok(rayon::current_num_threads())).unwrap();
        assert_eq!(out, vec![1; 4]);
    }

    #[test]
    fn the_first_error_in_item_order_is_returned() {
        let err = map((0..10).collect(), 2, |i: usize| {
            if i >= 3 {
                Err(MsError::invalid(format!("item {i}")))
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("item 3"), "{err}");
    }
}
