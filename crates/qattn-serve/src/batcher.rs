//! Dynamic batching on a dedicated worker thread.
//!
//! Inference is blocking CPU work, so it runs on its own `std::thread`, never on the async
//! runtime. Callers [`Batcher::submit`] a request and await its answer (a Tokio oneshot); the
//! worker collects queued requests into batches and calls the user's batch function.
//!
//! ## How a batch forms
//! The worker sleeps until a request arrives, then waits until the batch is *full* or the
//! oldest queued request has waited `max_wait`, whichever comes first (during shutdown it does
//! not wait). It then takes requests from the front of the queue (FIFO, no reordering) while
//! - the batch has fewer than `max_batch_size` requests, and
//! - the padded token count stays within budget: `batch_len * max(tokens of members) <=
//!   max_batch_tokens`. A single request larger than the budget still runs, alone.
//!
//! The batch is full when one of these limits stops it. Requests whose deadline
//! ([`Batchable::deadline`]) has passed when the batch is formed are answered
//! [`BatchError::DeadlineExceeded`] and never reach the worker; requests whose caller has gone
//! away (the `submit` future was dropped, e.g. a cancelled RPC) are dropped without running.
//!
//! ## Failure handling
//! The batch function returns one result per request, in order; `Err(message)` becomes
//! [`BatchError::Failed`] for that request only. A panic in the batch function, or a result
//! vector of the wrong length, fails every request of that batch with a message naming the
//! batcher; the worker keeps serving later batches. If the worker thread dies anyway (a panic
//! in [`Batchable::tokens`], say), every queued and future request is answered `Failed` —
//! no caller waits forever.
//!
//! ## Runtime requirement
//! `submit` enforces a request's deadline while it waits with `tokio::time`, so it must run on
//! a Tokio runtime with the time driver enabled (`enable_all`/`enable_time`, as tonic's
//! runtime has) when requests carry deadlines.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

/// Batching limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most requests per batch (values below 1 act as 1).
    pub max_batch_size: usize,
    /// Padded-token budget per batch: `batch_len * max(tokens)` must not exceed it (a single
    /// larger request still runs alone).
    pub max_batch_tokens: usize,
    /// Longest time the oldest queued request waits for a batch to fill (default 0: batches
    /// form only from requests that queued while the previous batch ran).
    pub max_wait: Duration,
    /// Most requests waiting in the queue; more are refused with [`BatchError::QueueFull`]
    /// (values below 1 act as 1).
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            max_wait: Duration::ZERO,
            queue_capacity: 1024,
        }
    }
}

/// What the batcher needs to know about a request.
pub trait Batchable: Send + 'static {
    /// Tokens this request contributes (its longest sequence's length, for padding).
    fn tokens(&self) -> usize;
    /// When the request stops being worth answering; `None` for no deadline.
    fn deadline(&self) -> Option<Instant>;
}

/// Why a request got no result from the batch function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The queue holds `queue_capacity` requests already.
    #[error("the batch queue is full")]
    QueueFull,
    /// The request's deadline passed before it ran (it was not run).
    #[error("the request's deadline passed before it could run")]
    DeadlineExceeded,
    /// The batcher is shutting down and accepts no new requests.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The batch function failed for this request (its message), panicked, or the worker died.
    #[error("{0}")]
    Failed(String),
}

type Answer<Resp> = Result<Resp, BatchError>;

struct Pending<Req, Resp> {
    req: Req,
    tx: oneshot::Sender<Answer<Resp>>,
    enqueued: Instant,
}

struct Queue<Req, Resp> {
    items: VecDeque<Pending<Req, Resp>>,
    /// No new requests accepted.
    closed: bool,
    /// Set when the worker is gone: the answer for every later request.
    dead: Option<String>,
}

struct Shared<Req, Resp> {
    name: String,
    cfg: BatchConfig,
    queue: Mutex<Queue<Req, Resp>>,
    wake: Condvar,
    depth: AtomicUsize,
}

impl<Req, Resp> Shared<Req, Resp> {
    fn lock(&self) -> MutexGuard<'_, Queue<Req, Resp>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A dynamic batcher: a queue plus a worker thread running the batch function.
///
/// Dropping the batcher closes the queue; the worker finishes what is queued and exits.
pub struct Batcher<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    done: watch::Receiver<bool>,
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("name", &self.shared.name)
            .field("cfg", &self.shared.cfg)
            .field("queue_depth", &self.shared.depth.load(Ordering::Relaxed))
            .finish()
    }
}

/// Running totals of a batch being formed.
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    len: usize,
    max_tokens: usize,
}

impl Budget {
    /// Whether a request of `tokens` may join (a first request always may).
    fn admits(&self, tokens: usize, cfg: &BatchConfig) -> bool {
        if self.len == 0 {
            return true;
        }
        let max_size = cfg.max_batch_size.max(1);
        let padded = (self.len + 1).saturating_mul(self.max_tokens.max(tokens));
        self.len < max_size && padded <= cfg.max_batch_tokens
    }

    fn add(&mut self, tokens: usize) {
        self.len += 1;
        self.max_tokens = self.max_tokens.max(tokens);
    }

    fn at_size_limit(&self, cfg: &BatchConfig) -> bool {
        self.len >= cfg.max_batch_size.max(1)
    }
}

/// `true` when the queue already holds a full batch (the size or the token limit stops it).
fn batch_full<Req: Batchable, Resp>(
    items: &VecDeque<Pending<Req, Resp>>,
    cfg: &BatchConfig,
) -> bool {
    let mut budget = Budget::default();
    for p in items {
        let t = p.req.tokens();
        if !budget.admits(t, cfg) {
            return true;
        }
        budget.add(t);
        if budget.at_size_limit(cfg) {
            return true;
        }
    }
    false
}

/// A formed batch: the requests, their answer channels (same order), and the channels of
/// requests that expired.
struct Formed<Req, Resp> {
    reqs: Vec<Req>,
    txs: Vec<oneshot::Sender<Answer<Resp>>>,
    expired: Vec<oneshot::Sender<Answer<Resp>>>,
}

/// Takes the next batch from the front of the queue at `now` (see the module docs).
fn take_batch<Req: Batchable, Resp>(
    items: &mut VecDeque<Pending<Req, Resp>>,
    cfg: &BatchConfig,
    now: Instant,
) -> Formed<Req, Resp> {
    let mut formed = Formed {
        reqs: Vec::new(),
        txs: Vec::new(),
        expired: Vec::new(),
    };
    let mut budget = Budget::default();
    while let Some(front) = items.front() {
        if front.tx.is_closed() {
            items.pop_front(); // caller gone: drop unrun
            continue;
        }
        if front.req.deadline().is_some_and(|d| d <= now) {
            if let Some(p) = items.pop_front() {
                formed.expired.push(p.tx);
            }
            continue;
        }
        let t = front.req.tokens();
        if !budget.admits(t, cfg) {
            break;
        }
        budget.add(t);
        if let Some(p) = items.pop_front() {
            formed.reqs.push(p.req);
            formed.txs.push(p.tx);
        }
        if budget.at_size_limit(cfg) {
            break;
        }
    }
    formed
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs when the worker thread ends, normally or by unwinding: marks the batcher dead, answers
/// everything still queued, and signals `shutdown` waiters.
struct ExitGuard<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    done: watch::Sender<bool>,
}

impl<Req, Resp> Drop for ExitGuard<Req, Resp> {
    fn drop(&mut self) {
        let message = if std::thread::panicking() {
            format!(
                "batch worker {:?} died (panic outside the batch function)",
                self.shared.name
            )
        } else {
            format!("batch worker {:?} has stopped", self.shared.name)
        };
        let orphans: Vec<_> = {
            let mut q = self.shared.lock();
            q.closed = true;
            q.dead = Some(message.clone());
            self.shared.depth.store(0, Ordering::Relaxed);
            q.items.drain(..).collect()
        };
        for p in orphans {
            let _ = p.tx.send(Err(BatchError::Failed(message.clone())));
        }
        let _ = self.done.send(true);
    }
}

fn worker_loop<Req, Resp, F>(shared: &Shared<Req, Resp>, mut worker: F)
where
    Req: Batchable,
    Resp: Send + 'static,
    F: FnMut(Vec<Req>) -> Vec<Result<Resp, String>>,
{
    let cfg = &shared.cfg;
    loop {
        let formed = {
            let mut q = shared.lock();
            while q.items.is_empty() {
                if q.closed {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            // Wait for the batch to fill, for the oldest request's max_wait, or for shutdown.
            while !q.closed {
                let Some(oldest) = q.items.front().map(|p| p.enqueued) else {
                    break;
                };
                let ready_at = oldest + cfg.max_wait;
                let now = Instant::now();
                if now >= ready_at || batch_full(&q.items, cfg) {
                    break;
                }
                q = shared
                    .wake
                    .wait_timeout(q, ready_at - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let formed = take_batch(&mut q.items, cfg, Instant::now());
            shared.depth.store(q.items.len(), Ordering::Relaxed);
            formed
        };
        for tx in formed.expired {
            let _ = tx.send(Err(BatchError::DeadlineExceeded));
        }
        if formed.reqs.is_empty() {
            continue;
        }
        let n = formed.reqs.len();
        let reqs = formed.reqs;
        match catch_unwind(AssertUnwindSafe(|| worker(reqs))) {
            Ok(results) if results.len() == n => {
                for (tx, r) in formed.txs.into_iter().zip(results) {
                    let _ = tx.send(r.map_err(BatchError::Failed));
                }
            }
            Ok(results) => {
                let msg = format!(
                    "batch worker {:?} returned {} results for a batch of {n} requests",
                    shared.name,
                    results.len()
                );
                for tx in formed.txs {
                    let _ = tx.send(Err(BatchError::Failed(msg.clone())));
                }
            }
            Err(payload) => {
                let msg = format!(
                    "batch worker {:?} panicked: {}",
                    shared.name,
                    panic_message(payload.as_ref())
                );
                for tx in formed.txs {
                    let _ = tx.send(Err(BatchError::Failed(msg.clone())));
                }
            }
        }
    }
}

impl<Req: Batchable, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the worker thread (named `batch-<name>`). `worker` gets a batch and returns one
    /// result per request, in order.
    ///
    /// If the thread cannot be started, the batcher answers every request with
    /// [`BatchError::Failed`] naming the reason.
    pub fn spawn<F>(name: &str, cfg: BatchConfig, worker: F) -> Self
    where
        F: FnMut(Vec<Req>) -> Vec<Result<Resp, String>> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cfg,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closed: false,
                dead: None,
            }),
            wake: Condvar::new(),
            depth: AtomicUsize::new(0),
        });
        let (done_tx, done_rx) = watch::channel(false);
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || {
                let guard = ExitGuard {
                    shared: thread_shared,
                    done: done_tx,
                };
                worker_loop(&guard.shared, worker);
            });
        if let Err(e) = spawned {
            let mut q = shared.lock();
            q.closed = true;
            q.dead = Some(format!("batch worker {name:?} could not start: {e}"));
        }
        Batcher {
            shared,
            done: done_rx,
        }
    }

    /// Queues `req` and waits for its result.
    ///
    /// Errors: [`BatchError::QueueFull`] at capacity, [`BatchError::ShuttingDown`] after
    /// [`Batcher::shutdown`], [`BatchError::DeadlineExceeded`] when the deadline passes before
    /// the request ran (checked on entry, while waiting, and when the batch forms),
    /// [`BatchError::Failed`] when the batch function failed for it. Dropping the returned
    /// future withdraws a request that has not started.
    pub async fn submit(&self, req: Req) -> Result<Resp, BatchError> {
        let deadline = req.deadline();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(BatchError::DeadlineExceeded);
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.lock();
            if let Some(msg) = &q.dead {
                return Err(BatchError::Failed(msg.clone()));
            }
            if q.closed {
                return Err(BatchError::ShuttingDown);
            }
            if q.items.len() >= self.shared.cfg.queue_capacity.max(1) {
                return Err(BatchError::QueueFull);
            }
            q.items.push_back(Pending {
                req,
                tx,
                enqueued: Instant::now(),
            });
            self.shared.depth.store(q.items.len(), Ordering::Relaxed);
        }
        self.shared.wake.notify_all();
        let name = &self.shared.name;
        let answer = async move {
            rx.await.unwrap_or_else(|_| {
                Err(BatchError::Failed(format!(
                    "batch worker {name:?} stopped before answering"
                )))
            })
        };
        match deadline {
            None => answer.await,
            Some(d) => tokio::time::timeout_at(tokio::time::Instant::from_std(d), answer)
                .await
                .unwrap_or(Err(BatchError::DeadlineExceeded)),
        }
    }

    /// Requests waiting in the queue (not counting the batch being run).
    pub fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// The batcher's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The batching limits.
    pub fn config(&self) -> &BatchConfig {
        &self.shared.cfg
    }

    /// Stops accepting requests; pending requests are still processed; returns when the worker
    /// has drained the queue and exited. Safe to call more than once and concurrently.
    pub async fn shutdown(&self) {
        self.close();
        let mut done = self.done.clone();
        // Err: the worker's sender is gone, i.e. the worker has exited (or never started).
        let _ = done.wait_for(|finished| *finished).await;
    }

    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

impl<Req, Resp> Drop for Batcher<Req, Resp> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::mpsc;

    #[derive(Debug, Clone)]
    struct R {
        id: u64,
        tokens: usize,
        deadline: Option<Instant>,
    }

    impl R {
        fn new(id: u64, tokens: usize) -> R {
            R {
                id,
                tokens,
                deadline: None,
            }
        }
    }

    impl Batchable for R {
        fn tokens(&self) -> usize {
            if self.tokens == usize::MAX {
                panic!("tokens() exploded");
            }
            self.tokens
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
    }

    fn cfg(size: usize, tokens: usize, wait_ms: u64, cap: usize) -> BatchConfig {
        BatchConfig {
            max_batch_size: size,
            max_batch_tokens: tokens,
            max_wait: Duration::from_millis(wait_ms),
            queue_capacity: cap,
        }
    }

    /// The ids of every batch the worker received, in order.
    type Log = Arc<Mutex<Vec<Vec<u64>>>>;

    /// A batch function that records every batch (ids) and answers id * 2.
    fn recording() -> (
        Log,
        impl FnMut(Vec<R>) -> Vec<Result<u64, String>> + Send + 'static,
    ) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let f = move |batch: Vec<R>| {
            l.lock().unwrap().push(batch.iter().map(|r| r.id).collect());
            batch.iter().map(|r| Ok(r.id * 2)).collect()
        };
        (log, f)
    }

    /// A batch function that blocks on its first batch until `release` is sent, and reports
    /// (on `started`) when it has begun that first batch.
    #[allow(clippy::type_complexity)] // a test helper returning its channels and closure
    fn gated() -> (
        Log,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        mpsc::Sender<()>,
        impl FnMut(Vec<R>) -> Vec<Result<u64, String>> + Send + 'static,
    ) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let l = log.clone();
        let mut first = true;
        let f = move |batch: Vec<R>| {
            l.lock().unwrap().push(batch.iter().map(|r| r.id).collect());
            if first {
                first = false;
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            }
            batch.iter().map(|r| Ok(r.id * 2)).collect()
        };
        (log, started_rx, release_tx, f)
    }

    fn pending(
        id: u64,
        tokens: usize,
        deadline: Option<Instant>,
    ) -> (Pending<R, u64>, oneshot::Receiver<Answer<u64>>) {
        let (tx, rx) = oneshot::channel();
        (
            Pending {
                req: R {
                    id,
                    tokens,
                    deadline,
                },
                tx,
                enqueued: Instant::now(),
            },
            rx,
        )
    }

    #[test]
    fn take_batch_respects_size_and_padded_token_budget() {
        let c = cfg(3, 100, 0, 100);
        let mut q = VecDeque::new();
        let mut rxs = Vec::new();
        for (id, t) in [
            (0, 30),
            (1, 30),
            (2, 40),
            (3, 10),
            (4, 10),
            (5, 10),
            (6, 10),
            (7, 500),
            (8, 1),
        ] {
            let (p, rx) = pending(id, t, None);
            q.push_back(p);
            rxs.push(rx);
        }
        let ids = |f: &Formed<R, u64>| f.reqs.iter().map(|r| r.id).collect::<Vec<_>>();
        let now = Instant::now();
        // 2 * 30 = 60 fits; 3 * 40 = 120 > 100 stops at 2
        assert_eq!(ids(&take_batch(&mut q, &c, now)), vec![0, 1]);
        // 40, then 2 * 40 = 80; 3 * 40 = 120 > 100 stops at 2
        assert_eq!(ids(&take_batch(&mut q, &c, now)), vec![2, 3]);
        assert_eq!(ids(&take_batch(&mut q, &c, now)), vec![4, 5, 6]); // size limit
        assert_eq!(ids(&take_batch(&mut q, &c, now)), vec![7]); // oversized runs alone
        assert_eq!(ids(&take_batch(&mut q, &c, now)), vec![8]);
        assert!(q.is_empty());
    }

    #[test]
    fn take_batch_answers_expired_and_drops_abandoned() {
        let c = cfg(8, 1000, 0, 100);
        let now = Instant::now();
        let mut q = VecDeque::new();
        let (p0, mut rx0) = pending(0, 1, Some(now - Duration::from_millis(1)));
        let (p1, rx1) = pending(1, 1, None);
        let (p2, _rx2) = pending(2, 1, Some(now + Duration::from_secs(60)));
        let (p3, mut rx3) = pending(3, 1, Some(now)); // deadline == now counts as passed
        q.extend([p0, p1, p2, p3]);
        drop(rx1); // caller of 1 went away
        let f = take_batch(&mut q, &c, now);
        assert_eq!(f.reqs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
        for tx in f.expired {
            let _ = tx.send(Err(BatchError::DeadlineExceeded));
        }
        assert_eq!(rx0.try_recv().unwrap(), Err(BatchError::DeadlineExceeded));
        assert_eq!(rx3.try_recv().unwrap(), Err(BatchError::DeadlineExceeded));
    }

    proptest! {
        /// Every formed batch obeys the limits, is a FIFO prefix, and is maximal: the next
        /// request in the queue would have broken a limit.
        #[test]
        fn batches_obey_limits_and_are_maximal(
            tokens in proptest::collection::vec(0usize..300, 1..80),
            size in 1usize..10,
            budget in 0usize..1000,
        ) {
            let c = cfg(size, budget, 0, 1000);
            let mut q = VecDeque::new();
            let mut _rxs = Vec::new();
            for (i, &t) in tokens.iter().enumerate() {
                let (p, rx) = pending(i as u64, t, None);
                q.push_back(p);
                _rxs.push(rx);
            }
            let mut next = 0u64;
            let now = Instant::now();
            while !q.is_empty() {
                let full_before = batch_full(&q, &c);
                let f = take_batch(&mut q, &c, now);
                prop_assert!(!f.reqs.is_empty());
                let ids: Vec<u64> = f.reqs.iter().map(|r| r.id).collect();
                let expect: Vec<u64> = (next..next + ids.len() as u64).collect();
                prop_assert_eq!(&ids, &expect);
                next += ids.len() as u64;
                let n = f.reqs.len();
                let max_t = f.reqs.iter().map(|r| r.tokens).max().unwrap();
                prop_assert!(n <= size);
                prop_assert!(n == 1 || n * max_t <= budget, "{} x {} > {}", n, max_t, budget);
                if let Some(p) = q.front() {
                    let m = max_t.max(p.req.tokens);
                    prop_assert!(n == size || (n + 1) * m > budget);
                    prop_assert!(full_before);
                } else {
                    prop_assert_eq!(full_before, n == size);
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_results_are_not_mixed() {
        let (log, f) = recording();
        let b = Arc::new(Batcher::spawn("mix", cfg(8, 64, 1, 1024), f));
        let mut set = tokio::task::JoinSet::new();
        for id in 0..300u64 {
            let b = b.clone();
            set.spawn(async move {
                let r = b.submit(R::new(id, (id % 13) as usize + 1)).await;
                (id, r)
            });
        }
        let mut n = 0;
        while let Some(res) = set.join_next().await {
            let (id, r) = res.unwrap();
            assert_eq!(r, Ok(id * 2));
            n += 1;
        }
        assert_eq!(n, 300);
        let batches = log.lock().unwrap().clone();
        let total: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(total, 300, "every request ran exactly once");
        for batch in &batches {
            assert!(batch.len() <= 8);
            let max_t = batch.iter().map(|id| (id % 13) as usize + 1).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * max_t <= 64, "{batch:?}");
        }
        assert!(
            batches.iter().any(|b| b.len() > 1),
            "no batching happened: {batches:?}"
        );
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_fill_to_max_size_then_wait_for_the_rest() {
        let (log, f) = recording();
        let b = Arc::new(Batcher::spawn("fill", cfg(4, 10_000, 300, 64), f));
        let mut set = tokio::task::JoinSet::new();
        for id in 0..10u64 {
            let b = b.clone();
            set.spawn(async move { b.submit(R::new(id, 1)).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let sizes: Vec<usize> = log.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_wait_is_respected() {
        let (_log, f) = recording();
        let b = Batcher::spawn("wait", cfg(32, 10_000, 80, 64), f);
        let t = Instant::now();
        assert_eq!(b.submit(R::new(1, 1)).await, Ok(2));
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(80),
            "dispatched early after {waited:?}"
        );
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        // max_wait 0: no waiting for company
        let (_log, f) = recording();
        let b = Batcher::spawn("nowait", cfg(32, 10_000, 0, 64), f);
        let t = Instant::now();
        assert_eq!(b.submit(R::new(1, 1)).await, Ok(2));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_requests_never_reach_the_worker() {
        let (log, mut started, release, f) = gated();
        let b = Arc::new(Batcher::spawn("deadline", cfg(8, 10_000, 0, 64), f));
        let blocker = tokio::spawn({
            let b = b.clone();
            async move { b.submit(R::new(0, 1)).await }
        });
        started.recv().await.unwrap();
        // The worker is busy; this request expires while queued.
        let short = R {
            id: 1,
            tokens: 1,
            deadline: Some(Instant::now() + Duration::from_millis(30)),
        };
        let t = Instant::now();
        let keep = tokio::spawn({
            let b = b.clone();
            async move { b.submit(R::new(2, 1)).await }
        });
        assert_eq!(b.submit(short).await, Err(BatchError::DeadlineExceeded));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "deadline answer was late"
        );
        // already expired on entry
        let stale = R {
            id: 3,
            tokens: 1,
            deadline: Some(Instant::now() - Duration::from_millis(1)),
        };
        assert_eq!(b.submit(stale).await, Err(BatchError::DeadlineExceeded));
        release.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Ok(0));
        assert_eq!(keep.await.unwrap(), Ok(4));
        let seen: Vec<u64> = log.lock().unwrap().iter().flatten().copied().collect();
        assert_eq!(seen, vec![0, 2], "expired requests reached the worker");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_is_refused_and_depth_reported() {
        let (_log, mut started, release, f) = gated();
        let b = Arc::new(Batcher::spawn("full", cfg(8, 10_000, 0, 2), f));
        let blocker = tokio::spawn({
            let b = b.clone();
            async move { b.submit(R::new(0, 1)).await }
        });
        started.recv().await.unwrap();
        assert_eq!(b.queue_depth(), 0);
        let queued: Vec<_> = (1..=2u64)
            .map(|id| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(R::new(id, 1)).await })
            })
            .collect();
        while b.queue_depth() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(b.submit(R::new(9, 1)).await, Err(BatchError::QueueFull));
        release.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Ok(0));
        for (i, h) in queued.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Ok((i as u64 + 1) * 2));
        }
        assert_eq!(b.queue_depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_drains_pending_and_refuses_new() {
        let (log, mut started, release, f) = gated();
        // max_wait 5 s: a drain that waited for partial batches to fill would take seconds.
        let b = Arc::new(Batcher::spawn("drain", cfg(2, 10_000, 5_000, 64), f));
        // Two blockers fill the first batch (size 2), so it is dispatched at once.
        let blockers: Vec<_> = [0u64, 10]
            .into_iter()
            .map(|id| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(R::new(id, 1)).await })
            })
            .collect();
        started.recv().await.unwrap();
        let queued: Vec<_> = (1..=5u64)
            .map(|id| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(R::new(id, 1)).await })
            })
            .collect();
        while b.queue_depth() < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let shut = tokio::spawn({
            let b = b.clone();
            async move { b.shutdown().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!shut.is_finished(), "shutdown returned before draining");
        assert_eq!(b.submit(R::new(99, 1)).await, Err(BatchError::ShuttingDown));
        let released = Instant::now();
        release.send(()).unwrap();
        shut.await.unwrap();
        let drain_time = released.elapsed();
        assert!(
            drain_time < Duration::from_secs(3),
            "drain waited for max_wait: {drain_time:?}"
        );
        for (h, id) in blockers.into_iter().zip([0u64, 10]) {
            assert_eq!(h.await.unwrap(), Ok(id * 2));
        }
        for (i, h) in queued.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Ok((i as u64 + 1) * 2));
        }
        let batches = log.lock().unwrap().clone();
        assert_eq!(batches.len(), 4, "{batches:?}"); // [0,10], [1,2], [3,4], [5]
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 7);
        b.shutdown().await; // idempotent
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_panics_and_errors_become_failed() {
        let f = |batch: Vec<R>| -> Vec<Result<u64, String>> {
            if batch.iter().any(|r| r.id == 13) {
                panic!("unlucky batch");
            }
            if batch.iter().any(|r| r.id == 7) {
                return vec![]; // wrong length
            }
            batch
                .iter()
                .map(|r| {
                    if r.id == 5 {
                        Err("bad input 5".into())
                    } else {
                        Ok(r.id)
                    }
                })
                .collect()
        };
        let b = Batcher::spawn("panicky", cfg(1, 10_000, 0, 64), f);
        match b.submit(R::new(13, 1)).await {
            Err(BatchError::Failed(m)) => {
                assert!(m.contains("panicky") && m.contains("unlucky batch"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match b.submit(R::new(7, 1)).await {
            Err(BatchError::Failed(m)) => assert!(m.contains("returned 0 results"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            b.submit(R::new(5, 1)).await,
            Err(BatchError::Failed("bad input 5".into()))
        );
        // the worker survives
        assert_eq!(b.submit(R::new(4, 1)).await, Ok(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_worker_answers_everyone() {
        let (_log, f) = recording();
        let b = Batcher::spawn("dies", cfg(4, 10_000, 0, 64), f);
        // tokens() panics inside the worker thread, outside the batch function
        match b.submit(R::new(1, usize::MAX)).await {
            Err(BatchError::Failed(m)) => assert!(m.contains("dies"), "{m}"),
            other => panic!("{other:?}"),
        }
        match b.submit(R::new(2, 1)).await {
            Err(BatchError::Failed(m)) => assert!(m.contains("died"), "{m}"),
            other => panic!("{other:?}"),
        }
        b.shutdown().await; // returns: the worker is gone
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_submit_is_withdrawn() {
        let (log, mut started, release, f) = gated();
        let b = Arc::new(Batcher::spawn("cancel", cfg(8, 10_000, 0, 64), f));
        let blocker = tokio::spawn({
            let b = b.clone();
            async move { b.submit(R::new(0, 1)).await }
        });
        started.recv().await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), b.submit(R::new(1, 1))).await;
        assert!(
            r.is_err(),
            "should have timed out while the worker was blocked"
        );
        release.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Ok(0));
        assert_eq!(b.submit(R::new(2, 1)).await, Ok(4));
        let seen: Vec<u64> = log.lock().unwrap().iter().flatten().copied().collect();
        assert_eq!(seen, vec![0, 2]);
    }
}
