//! Layer 5c (beside [`super::cpu`]): a small persistent pool of worker threads for the CPU
//! kernels.
//!
//! A sequence call of 10^5 neuron-steps takes about 20-50 µs on one core; spawning a thread per
//! call (about 20-40 µs in a VM) costs as much as it saves, so such calls used to run on one
//! core. The pool keeps `candle_core::utils::get_num_threads() - 1` workers alive: after a job
//! they spin for [`SPIN`] before they sleep, so back-to-back calls (a training loop, a
//! benchmark) hand work over in about a microsecond; a sleeping worker is woken by a condition
//! variable.
//!
//! One job runs at a time. A call made while the pool is busy (another thread's kernel, or a
//! kernel called from inside a job) runs its parts on the calling thread instead, so the pool
//! never deadlocks and never oversubscribes the cores.
//!
//! A job borrows its closure from the caller's stack; the caller does not return (nor unwind)
//! until every worker that takes part in the job has finished it, which is what makes lending a
//! non-`'static` closure sound (see [`run`]). A panic in a worker is caught there and re-raised
//! on the calling thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The part a participant runs, called with the part index, as lent to the workers (lifetime
/// erased).
type Part = dyn Fn(usize) + Sync + 'static;

/// A lent `&Part`.
#[derive(Clone, Copy)]
struct Lent(*const Part);

// SAFETY: the pointee is `Sync` (so it may be called from any thread), and `run` keeps it alive
// until every worker that takes part has signalled completion.
unsafe impl Send for Lent {}

struct Job {
    /// Bumped for every job; workers compare it with the last one they saw.
    generation: usize,
    part: Option<Lent>,
    /// Parts of the job; participant `p` runs parts `p, p + stride, ...`.
    parts: usize,
    stride: usize,
}

struct Pool {
    /// Worker threads started (participants are the caller, index 0, and workers 1..=workers).
    workers: AtomicUsize,
    /// Held by the caller for the length of a job.
    busy: Mutex<()>,
    job: Mutex<Job>,
    wake: Condvar,
    /// A copy of `job.generation` that spinning workers read without the lock.
    generation: AtomicUsize,
    /// Participating workers (indices `1..stride`) that have not finished the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = candle_core::utils::get_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: AtomicUsize::new(0),
            busy: Mutex::new(()),
            job: Mutex::new(Job {
                generation: 0,
                part: None,
                parts: 0,
                stride: 1,
            }),
            wake: Condvar::new(),
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        }));
        let mut started = 0;
        for w in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("adex-cpu-{}", w + 1))
                .spawn(move || worker(pool, w + 1));
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        // Only the workers that exist take part; no job can be published before this store,
        // since the pool is shared only once this closure returns.
        pool.workers.store(started, Ordering::Release);
        pool
    })
}

/// Locks `m`; the pool's state stays consistent across a panic (parts run outside the locks),
/// so a poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(pool: &'static Pool, index: usize) {
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while pool.generation.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                break;
            }
        }
        let (part, parts, stride) = {
            let mut job = lock(&pool.job);
            while job.generation == seen {
                job = pool.wake.wait(job).unwrap_or_else(|e| e.into_inner());
            }
            seen = job.generation;
            (job.part, job.parts, job.stride)
        };
        // Only participants (indices below the stride) were counted in `pending`; the others
        // have no part in this job and leave it alone.
        if index >= stride {
            continue;
        }
        if let Some(Lent(part)) = part {
            // SAFETY: `run` keeps the closure alive until `pending` reaches zero, which cannot
            // happen before this worker's decrement below.
            let part = unsafe { &*part };
            let result = catch_unwind(AssertUnwindSafe(|| {
                let mut k = index;
                while k < parts {
                    part(k);
                    k += stride;
                }
            }));
            if result.is_err() {
                pool.panicked.store(true, Ordering::Relaxed);
            }
        }
        pool.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The number of threads a job of many parts runs on (the caller included).
pub(crate) fn threads() -> usize {
    pool().workers.load(Ordering::Acquire) + 1
}

/// Runs `part(k)` for every `k` in `0..parts`, spread over the pool's workers and the calling
/// thread; returns when all have finished. Falls back to the calling thread alone when the pool
/// is busy or has no workers.
pub(crate) fn run<'a>(parts: usize, part: &'a (dyn Fn(usize) + Sync + 'a)) {
    let pool = pool();
    let workers = pool.workers.load(Ordering::Acquire);
    let guard = if parts > 1 && workers > 0 {
        match pool.busy.try_lock() {
            Ok(g) => Some(g),
            // A panic that crossed an earlier job leaves nothing half-done: `Wait` ran.
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    } else {
        None
    };
    let Some(_busy) = guard else {
        (0..parts).for_each(part);
        return;
    };
    let stride = parts.min(workers + 1);
    // SAFETY: erases the borrow's lifetime. The `Wait` guard below blocks this function's
    // return and unwinding until every participating worker has finished with it, and the
    // slot is cleared before the guard releases `busy`, so the pointer is never used after
    // `part` goes out of scope.
    let lent = Lent(unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + 'a), *const Part>(part)
    });
    pool.panicked.store(false, Ordering::Relaxed);
    pool.pending.store(stride - 1, Ordering::Release);
    {
        let mut job = lock(&pool.job);
        job.generation += 1;
        job.part = Some(lent);
        job.parts = parts;
        job.stride = stride;
        pool.generation.store(job.generation, Ordering::Release);
    }
    pool.wake.notify_all();

    struct Wait(&'static Pool);
    impl Drop for Wait {
        fn drop(&mut self) {
            let mut spins = 0u32;
            while self.0.pending.load(Ordering::Acquire) != 0 {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins > 1 << 12 {
                    std::thread::yield_now();
                }
            }
            lock(&self.0.job).part = None;
        }
    }
    let wait = Wait(pool);
    let mut k = 0;
    while k < parts {
        part(k);
        k += stride;
    }
    drop(wait);
    if pool.panicked.swap(false, Ordering::Relaxed) {
        panic!("a CPU kernel panicked on a worker thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in [0, 1, 2, 3, 7, 64] {
            let hits: Vec<AtomicU64> = (0..parts).map(|_| AtomicU64::new(0)).collect();
            for _ in 0..50 {
                run(parts, &|k| {
                    hits[k].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                "{parts}"
            );
        }
    }

    #[test]
    fn concurrent_and_nested_calls_complete() {
        let total = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(3, &|_| {
                            run(2, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 3 * 2);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_still_works() {
        if threads() < 2 {
            return;
        }
        let r = catch_unwind(|| {
            run(2, &|k| {
                if k == 1 {
                    panic!("boom");
                }
            })
        });
        assert!(r.is_err());
        // A panic on the calling thread too (it poisons the pool's lock).
        let r = catch_unwind(|| run(2, &|_| panic!("boom")));
        assert!(r.is_err());
        // The pool still runs jobs on two threads afterwards.
        for _ in 0..20 {
            let ids = Mutex::new(std::collections::HashSet::new());
            run(2, &|_| {
                std::thread::sleep(Duration::from_millis(1));
                ids.lock().unwrap().insert(std::thread::current().id());
            });
            if ids.into_inner().unwrap().len() == 2 {
                return;
            }
        }
        panic!("the pool no longer uses its worker after a panic");
    }
}
