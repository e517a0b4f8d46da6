//! Progress of long computations: units of work done out of a total, reported as they finish.
//!
//! A long call (a run over many prompts, an attribution, a probe sweep) counts its units of
//! work (prompts, ablated variants, probes) through a [`Progress`] handle: [`start`] once with
//! the total, [`advance`] after every batch. Whoever made the handle receives every new
//! `(done, total)` through its [`ProgressSink`]; the Python bindings forward them to a Python
//! callable from the thread that waits for the work (see `bindings::interruptible_reporting`).
//! A handle made with `Progress::default()` reports nowhere and costs one branch per batch.
//!
//! [`start`]: Progress::start
//! [`advance`]: Progress::advance

use std::sync::{Arc, Mutex};

/// Where a [`Progress`] sends its counts. Called from whichever worker thread finished a
/// batch, one call at a time, with `done` never decreasing.
pub trait ProgressSink: Send + Sync {
    fn report(&self, done: u64, total: u64);
}

impl<F: Fn(u64, u64) + Send + Sync> ProgressSink for F {
    fn report(&self, done: u64, total: u64) {
        self(done, total)
    }
}

struct Shared {
    /// `(done, total)`; the lock also orders the sink's calls, so counts arrive monotone even
    /// when several workers finish batches at once.
    counts: Mutex<(u64, u64)>,
    sink: Box<dyn ProgressSink>,
}

/// A progress handle: cheap to clone (clones count together); `Progress::default()` is silent.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Shared>>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(s) => write!(
                f,
                "Progress{:?}",
                *s.counts.lock().unwrap_or_else(|p| p.into_inner())
            ),
            None => f.write_str("Progress(silent)"),
        }
    }
}

impl Progress {
    /// A handle that reports to `sink`.
    pub fn new(sink: impl ProgressSink + 'static) -> Self {
        Progress(Some(Arc::new(Shared {
            counts: Mutex::new((0, 0)),
            sink: Box::new(sink),
        })))
    }

    /// Whether anyone receives the counts (to skip work done only to report).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// Begin counting `total` units from zero (reports `(0, total)`).
    pub fn start(&self, total: u64) {
        self.update(|_| (0, total));
    }

    /// `n` more units are done (reports the new count; never past the total).
    pub fn advance(&self, n: u64) {
        self.update(|(done, total)| (done.saturating_add(n).min(total), total));
    }

    /// All units are done (for work whose last units were skipped rather than done).
    pub fn finish(&self) {
        self.update(|(_, total)| (total, total));
    }

    fn update(&self, f: impl FnOnce((u64, u64)) -> (u64, u64)) {
        if let Some(shared) = &self.0 {
            // A sink that panicked once leaves the counts as they were: keep counting.
            let mut counts = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
            *counts = f(*counts);
            shared.sink.report(counts.0, counts.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

    fn recorder() -> (Progress, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            move |d, t| seen.lock().unwrap().push((d, t))
        };
        (Progress::new(sink), seen)
    }

    #[test]
    fn counts_from_many_threads_arrive_monotone_and_reach_the_total() {
        let (p, seen) = recorder();
        p.start(400);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let p = p.clone();
                s.spawn(move || (0..100).for_each(|_| p.advance(1)));
            }
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 401);
        assert_eq!(seen[0], (0, 400));
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "not monotone");
        assert_eq!(*seen.last().unwrap(), (400, 400));
    }

    #[test]
    fn counts_stop_at_the_total_and_a_silent_handle_reports_nothing() {
        let (p, seen) = recorder();
        p.start(3);
        p.advance(2);
        p.advance(5);
        p.start(4);
        p.advance(1);
        p.finish();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(0, 3), (2, 3), (3, 3), (0, 4), (1, 4), (4, 4)]
        );
        let silent = Progress::default();
        silent.start(3);
        silent.advance(1);
        assert!(!silent.is_active());
    }
}
