//! The kernels' persistent thread pools: `threads - 1` helper threads plus the calling thread run
//! the tasks `0..n` of one job, claimed one at a time from a shared counter. Helpers spin briefly
//! after a job (the next matmul of a forward pass usually follows within microseconds), then
//! sleep on a condvar. One job at a time per pool: a caller that finds a pool busy runs its tasks
//! itself, so concurrent callers never wait on each other.
//!
//! Concurrent generations split the cores: a thread that holds a [`Tenant`] (the runtime gives
//! one to every generation) runs its kernels on a pool of its own with `threads / tenants`
//! threads (at least 1), re-read at every call, so two models decoding side by side on 8 cores
//! take 4 each instead of 8 each, and the survivor widens back when the other ends. Other
//! threads (a lone `generate`, `bench`) use the process-wide pool with every thread. The thread
//! count is `MOA_THREADS`, else `RAYON_NUM_THREADS`, else the machine's.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before sleeping.
const SPIN: Duration = Duration::from_micros(200);

type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// The task counter while a job is being set up: no claim can succeed (every `n` is below it).
const SETTING_UP: u64 = 0xFFFF_FFFF;

struct Shared {
    /// `epoch << 32 | next task`; bumping the epoch publishes a job. While the caller writes the
    /// job's closure and task count the counter is [`SETTING_UP`], so a helper still claiming
    /// in the previous epoch can never pair the old epoch with the new count (it would run a
    /// task of the next job early and count it as done for the old one: the caller could then
    /// return while that task still ran, a use after free).
    state: AtomicU64,
    /// Tasks of the current job.
    n: AtomicUsize,
    /// Tasks finished in the current job.
    done: AtomicUsize,
    /// The current job's closure, valid while `done < n` (the caller waits for that).
    job: Mutex<Option<Task<'static>>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: &'static Shared,
    submit: Mutex<()>,
    threads: usize,
}

/// An output buffer shared by the tasks of one job, each of which writes its own disjoint part.
#[derive(Clone, Copy)]
pub struct SyncPtr(*mut f32);
// SAFETY: only handed to tasks that write disjoint ranges, and the job ends before the buffer does.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    pub fn new(p: *mut f32) -> Self {
        Self(p)
    }

    /// By method, so closures capture the `Sync` wrapper rather than the raw field.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// The pool for kernels called on this thread: the tenant's own (see [`Tenant`]) or the
/// process-wide one.
pub fn pool() -> &'static Pool {
    MINE.with(|m| {
        let mut m = m.borrow_mut();
        let Some(mine) = m.as_mut() else { return global() };
        let n = share();
        if let Some(p) = mine.pools.iter().find(|p| p.threads == n) {
            return *p;
        }
        let spare = {
            let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
            spare.iter().position(|p| p.threads == n).map(|i| spare.swap_remove(i))
        };
        let p = spare.unwrap_or_else(|| Box::leak(Box::new(Pool::new(n))));
        mine.pools.push(p);
        p
    })
}

/// Live tenants (generations splitting the cores).
static TENANTS: AtomicUsize = AtomicUsize::new(0);
/// Pools handed back by ended tenants, for later ones (their helpers sleep meanwhile).
static SPARE: std::sync::Mutex<Vec<&'static Pool>> = std::sync::Mutex::new(Vec::new());

struct TenantPools {
    /// Nested `Tenant::enter` calls on this thread.
    depth: usize,
    /// One pool per share size this tenant has run at; only this thread submits to them.
    pools: Vec<&'static Pool>,
}

thread_local! {
    static MINE: RefCell<Option<TenantPools>> = const { RefCell::new(None) };
}

/// Threads each live tenant gets now: the machine's threads split evenly (at least one each).
pub fn share() -> usize {
    (global().threads() / TENANTS.load(SeqCst).max(1)).max(1)
}

/// A generation sharing the cores with the other live tenants, bound to the thread that entered
/// (not `Send`); kernels called on that thread use its share until it is dropped.
pub struct Tenant(PhantomData<*const ()>);

impl Tenant {
    pub fn enter() -> Tenant {
        MINE.with(|m| {
            let mut m = m.borrow_mut();
            match m.as_mut() {
                Some(t) => t.depth += 1,
                None => {
                    *m = Some(TenantPools { depth: 1, pools: Vec::new() });
                    TENANTS.fetch_add(1, SeqCst);
                }
            }
        });
        Tenant(PhantomData)
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let ended = MINE.with(|m| {
            let mut m = m.borrow_mut();
            let t = m.as_mut().expect("a tenant is dropped on the thread that entered");
            t.depth -= 1;
            if t.depth == 0 { m.take() } else { None }
        });
        if let Some(t) = ended {
            TENANTS.fetch_sub(1, SeqCst);
            SPARE.lock().unwrap_or_else(|p| p.into_inner()).extend(t.pools);
        }
    }
}

/// The process-wide pool.
fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
        let threads = env("MOA_THREADS")
            .or_else(|| env("RAYON_NUM_THREADS"))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Pool::new(threads)
    })
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU64::new(0),
            n: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 1..threads {
            std::thread::Builder::new()
                .name(format!("moa-kernel-{i}"))
                .spawn(move || helper(shared))
                .expect("spawning a kernel thread");
        }
        Self { shared, submit: Mutex::new(()), threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f(0..n)` across the pool; returns when every task has finished.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        let guard = if self.threads > 1 && n > 1 { self.submit.try_lock().ok() } else { None };
        let Some(_guard) = guard else {
            (0..n).for_each(f);
            return;
        };
        let s = self.shared;
        // SAFETY: the closure outlives its use: helpers only call it for a claimed task of this
        // job, and we return only after all `n` tasks are done.
        let f_static: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(f) };
        let epoch = (s.state.load(SeqCst) >> 32) + 1;
        // Close the previous epoch first: from here on no claim succeeds until the job is ready.
        s.state.store(epoch << 32 | SETTING_UP, SeqCst);
        *s.job.lock().unwrap() = Some(f_static);
        s.n.store(n, SeqCst);
        s.done.store(0, SeqCst);
        s.state.store(epoch << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap();
            s.wake.notify_all();
        }
        let mine = work(s, epoch, f);
        s.done.fetch_add(mine, SeqCst);
        while s.done.load(Acquire) < n {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap() = None;
    }
}

/// Claim and run tasks of job `epoch` until none are left; returns how many ran.
fn work(s: &Shared, epoch: u64, f: Task<'_>) -> usize {
    let n = s.n.load(SeqCst) as u64;
    let mut ran = 0;
    let mut cur = s.state.load(SeqCst);
    loop {
        if cur >> 32 != epoch || (cur & 0xFFFF_FFFF) >= n {
            return ran;
        }
        match s.state.compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst) {
            Ok(_) => {
                f((cur & 0xFFFF_FFFF) as usize);
                ran += 1;
                cur += 1;
            }
            Err(now) => cur = now,
        }
    }
}

fn helper(s: &'static Shared) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let st = s.state.load(Acquire);
            let e = st >> 32;
            // A job being set up is not ready: wait for it rather than skip its epoch.
            if e != seen && st & 0xFFFF_FFFF != SETTING_UP {
                break e;
            }
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut l = s.lock.lock().unwrap();
                s.sleepers.fetch_add(1, SeqCst);
                while s.state.load(SeqCst) >> 32 == seen {
                    l = s.wake.wait(l).unwrap();
                }
                s.sleepers.fetch_sub(1, SeqCst);
                drop(l);
                continue;
            }
            std::hint::spin_loop();
        };
        seen = epoch;
        // Claim through the counter first: a claimed task guarantees the job is still live.
        let n = s.n.load(SeqCst) as u64;
        let mut ran = 0;
        let mut cur = s.state.load(SeqCst);
        let mut f: Option<Task<'static>> = None;
        loop {
            if cur >> 32 != epoch || (cur & 0xFFFF_FFFF) >= n {
                break;
            }
            match s.state.compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst) {
                Ok(_) => {
                    let g = *f.get_or_insert_with(|| s.job.lock().unwrap().expect("a live job"));
                    g((cur & 0xFFFF_FFFF) as usize);
                    ran += 1;
                    cur += 1;
                }
                Err(now) => cur = now,
            }
        }
        if ran > 0 {
            s.done.fetch_add(ran, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many back-to-back jobs of different sizes on an oversubscribed pool: every task of every
    /// job runs exactly once, and before its job returns. (A helper late in one epoch that read
    /// the next job's task count ran that job's tasks early and twice.)
    #[test]
    fn back_to_back_jobs_never_run_a_task_twice_or_late() {
        let p = Box::leak(Box::new(Pool::new(6)));
        for round in 0..20_000usize {
            let n = 1 + round % 7;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            p.run(n, &|i| {
                if (i + round) % 3 == 0 {
                    std::thread::yield_now();
                }
                hits[i].fetch_add(1, SeqCst);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(h.load(SeqCst), 1, "round {round}: task {i} of {n}");
            }
        }
    }
}
