//! The shared job pool: tensors cut into row chunks of about [`CHUNK_ELEMS`] values, run in
//! parallel on a pool of `-j` threads, results (and the first error) in job order so that
//! nothing observable depends on scheduling. Used by `quantize`, `verify`, `eval` and
//! `export`.

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Values per chunk: 1 Mi values = 4 MiB of f32 per job.
pub const CHUNK_ELEMS: usize = 1 << 20;

/// Builds a thread pool of `threads` workers (all cores when `None`).
pub(crate) fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        b = b.num_threads(n.max(1));
    }
    b.build().map_err(Error::Threads)
}

/// Runs `f` over `jobs` in parallel; returns results in job order, or the first error in job
/// order among the jobs that ran (later jobs are skipped once one fails).
pub(crate) fn run_jobs<J: Sync, T: Send>(
    pool: &rayon::ThreadPool,
    jobs: &[J],
    f: impl Fn(&J) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let failed = AtomicBool::new(false);
    let results: Vec<Option<Result<T>>> = pool.install(|| {
        // every job its own unit of work: rayon otherwise hands each thread long runs of jobs
        // it works through without splitting, and the last such run finishes alone (the other
        // threads idle for up to a quarter of the jobs' time on a small model)
        jobs.par_iter()
            .with_max_len(1)
            .map(|j| {
                if failed.load(Ordering::Relaxed) {
                    return None;
                }
                let r = f(j);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                Some(r)
            })
            .collect()
    });
    let mut out = Vec::with_capacity(results.len());
    let mut first_err = None;
    for r in results {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Rows per chunk for a tensor: about `target_elems` values, a multiple of `align`.
pub fn chunk_rows(
    rows: usize,
    cols: usize,
    align: usize,
    target_elems: usize,
) -> Vec<(usize, usize)> {
    if cols == 0 {
        // empty rows: one job, whatever the row count
        return vec![(0, rows)];
    }
    let per = (target_elems / cols).max(1);
    let per = per.div_ceil(align) * align;
    let mut v = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + per).min(rows);
        v.push((r0, r1));
        r0 = r1;
    }
    if v.is_empty() {
        v.push((0, 0));
    }
    v
}
