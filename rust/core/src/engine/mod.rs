//! One inference engine per loaded model and sizing in a process: task threads read, decode
//! and assemble their rows and [`Scorer::submit`](crate::Scorer::submit) them; forward workers take the ready inputs
//! from a bounded queue, may batch rows of several tasks into one pass, and hand each task its
//! rows back in order. `per-task` mode runs the forward pass on the caller's thread at once
//! (the reference path: the results of both modes are equal).
//!
//! The caller's thread keeps the part of the work that reads its own batch (decode, resize,
//! tokenize, assemble), so decoding the next batch overlaps the running forward pass when the
//! caller submits batch k+1 before it collects batch k.
//!
//! - **Registry**: one engine per model (`Arc`), [`EngineConfig`] and per-task threads, held
//!   weakly: the workers stop when the last [`Arc<Engine>`] drops.
//! - **Sizing** (`shared`): W workers (`workers`, or `cores / task_cpus`; 1 on a GPU), each
//!   running its passes with T intra-op threads (`threads_per_worker`, or `cores / W`);
//!   W x T never exceeds `cores`.
//! - **Merging**: a worker takes the head job and appends the following jobs in FIFO order while
//!   they are compatible (see `compatible`) and the rows fit the head's `max_batch`; when the
//!   head is thin and other tasks are active it first waits up to `max_wait_us` for more. A job
//!   is never split, so a full job runs alone: bitwise what `per-task` gives.
//! - **Failures**: a merged pass that fails (or whose output is not batched by row, see
//!   [`Value::split`]) re-runs each job alone, so only a job whose own pass fails gets the error.
//! - **Bounds**: the queue holds at most `queue_rows` rows and `queue_bytes` bytes (a larger job
//!   enters an empty queue); waiting for space fails after `timeout_ms`; [`Ticket::wait`] takes
//!   its own bound. [`Engine::cancel`] drops a task's queued jobs and its running jobs' results.
//! - **Lifecycle** ([`crate::lifecycle`]): passes run inside the gate, waits outside it; at exit
//!   every engine drops its queued jobs and stops; in a forked child an engine forgets the
//!   parent's jobs and starts its own workers on the first submit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::lifecycle;
use crate::model::{Model, Target};
use crate::value::{ModelInput, Value};

mod pending;
pub use pending::Pending;

/// A task's identity: Spark's `taskAttemptId` on the JVM, a per-process counter in Python.
pub type TaskId = u64;

/// `shared`: forward passes run on the engine's workers (batched across tasks, overlapping the
/// caller's decoding). `per-task`: each call runs its forward pass on the caller's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    #[default]
    Shared,
    PerTask,
}

/// How the engine is sized; travels in [`crate::ModelConfig`] as `"engine": {...}`. Every
/// count of 0 means "auto". Workers x threads per worker never exceed `cores`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub mode: EngineMode,
    /// The executor's cores (`spark.executor.cores`, N of `local[N]`); 0 = this host's.
    pub cores: usize,
    /// Forward workers; 0 = auto: `max(1, cores / task_cpus)` on CPU, 1 per GPU.
    pub workers: usize,
    /// Intra-op threads of each worker's passes; 0 = auto: `max(1, cores / workers)`.
    pub threads_per_worker: usize,
    /// `spark.task.cpus`: each task's decoding threads; 0 = 1.
    pub task_cpus: usize,
    /// How long a worker waits for a fuller batch when more than one task is active, in
    /// microseconds.
    pub max_wait_us: u64,
    /// Bound on queued rows; 0 = 4 x the largest batch submitted.
    pub queue_rows: usize,
    /// Bound on queued input bytes (native memory); 0 = 256 MiB.
    pub queue_bytes: usize,
    /// Bound on every wait (for queue space, for a result), in milliseconds.
    pub timeout_ms: u64,
    /// Test hook: each forward pass sleeps this long first (kill and merge tests).
    pub debug_delay_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            mode: EngineMode::Shared,
            cores: 0,
            workers: 0,
            threads_per_worker: 0,
            task_cpus: 0,
            max_wait_us: 2_000,
            queue_rows: 0,
            queue_bytes: 0,
            timeout_ms: 600_000,
            debug_delay_ms: 0,
        }
    }
}

/// Which result a submitted batch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Scorer::score`](crate::Scorer::score): class probabilities, prediction, label, top-k.
    Score,
    /// [`Scorer::featurize`](crate::Scorer::featurize): the spec's feature output.
    Featurize,
    /// [`Scorer::predict`](crate::Scorer::predict): the general path's declared outputs.
    Predict,
}

impl Op {
    /// The FFI code: 0 score, 1 featurize, 2 predict.
    pub fn from_code(code: i32) -> Result<Op> {
        match code {
            0 => Ok(Op::Score),
            1 => Ok(Op::Featurize),
            2 => Ok(Op::Predict),
            other => Err(Error::config(
                "op",
                format!("{other}: 0 (score), 1 (featurize) or 2 (predict) expected"),
            )),
        }
    }
}

/// What an engine did so far (`engineStats` on the JVM, `NativeModel.engine_stats()` in Python,
/// `doctor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub mode: EngineMode,
    pub cores: usize,
    pub workers: usize,
    pub threads_per_worker: usize,
    pub queued_jobs: usize,
    pub queued_rows: usize,
    pub queued_bytes: usize,
    pub active_tasks: usize,
    /// Forward passes run, and the rows and jobs in them.
    pub batches: u64,
    pub rows: u64,
    /// Passes that held rows of more than one job.
    pub merged_batches: u64,
    pub failed_jobs: u64,
    pub cancelled_jobs: u64,
    pub timeouts: u64,
}

/// One unit of forward work a task submits: the assembled inputs of `rows` good rows (one
/// forward pass's worth when run alone). Rows of different jobs may share a pass.
pub struct Job {
    pub task: TaskId,
    /// Rows in `work` (dim 0 of its tensors).
    pub rows: usize,
    /// Input bytes held (counted against `queue_bytes`).
    pub bytes: usize,
    /// The caller's batch size: a merged pass never holds more rows than this.
    pub max_batch: usize,
    pub work: Work,
}

/// The inputs of a job.
pub enum Work {
    /// Preprocessed CHW float rows (`rows x row_len` values) for [`Model::run`].
    Image { pixels: Vec<f32>, target: Target },
    /// `forward`'s arguments for [`Model::forward`] (masks and type ids included), and the
    /// method to call (`None`: forward). Jobs of different methods never share a pass.
    General {
        args: Vec<ModelInput>,
        method: Option<String>,
    },
}

/// A job's outputs: [`Model::run`]'s `(values, width)`, or [`Model::forward`]'s value.
pub enum Done {
    Image { values: Vec<f32>, width: usize },
    General(Value),
}

/// Where a job's time went in the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTimes {
    /// From submit to the start of its forward pass.
    pub queued: Duration,
    /// Its forward pass (shared with the other jobs in it).
    pub forward: Duration,
    /// Rows and jobs of the pass it ran in.
    pub batch_rows: usize,
    pub batch_jobs: usize,
}

/// The engines of this process, by model (its address: a live engine holds its `Arc<Model>`,
/// so the address cannot be reused while the engine lives), config and per-task threads.
type Key = (usize, EngineConfig, usize);
static ENGINES: Lazy<Mutex<Registry>> = Lazy::new(|| Mutex::new(Registry::default()));

#[derive(Default)]
struct Registry {
    engines: HashMap<Key, Weak<Engine>>,
    /// Every engine's shared part while a handle or a worker holds it: what an exit stops and
    /// a fork locks (a closed engine's worker may still be finishing a pass).
    inners: Vec<Weak<Inner>>,
}

/// Default bound on queued input bytes: native memory that fits Spark's memoryOverhead (also
/// the default chunk budget, so that every job fits it).
const DEFAULT_QUEUE_BYTES: usize = crate::limits::DEFAULT_BATCH_BYTES;

/// The forward worker(s) of one model and sizing (see the module docs). Dropping the last
/// handle stops the workers: each finishes the pass it is in, queued jobs fail.
pub struct Engine {
    inner: Arc<Inner>,
    /// The one strong reference of the engine to its model: a closed handle frees its model at
    /// once (unless a pass is in flight), as it did before the engine.
    _model: Arc<Model>,
}

/// What the workers share with the handles. Workers hold only this, never an [`Engine`], so
/// they cannot keep the engine alive, nor its model between passes.
struct Inner {
    model: Weak<Model>,
    /// The model's path, for messages.
    path: PathBuf,
    config: EngineConfig,
    cores: usize,
    /// Forward worker threads (0 in `per-task` mode).
    workers: usize,
    /// Intra-op threads of each pass.
    threads: usize,
    state: Mutex<State>,
    /// Workers wait here for jobs (and a gathering worker for more jobs).
    work: Condvar,
    /// Submitters wait here for queue space.
    space: Condvar,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    rows: AtomicU64,
    merged_batches: AtomicU64,
    failed_jobs: AtomicU64,
    cancelled_jobs: AtomicU64,
    timeouts: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    queued_rows: usize,
    queued_bytes: usize,
    /// The largest batch submitted so far (`queue_rows` 0 = 4 x this).
    largest_batch: usize,
    /// Queued plus running jobs per task: the active tasks.
    tasks: HashMap<TaskId, usize>,
    /// Running jobs, by id.
    running: HashMap<u64, TaskId>,
    /// Running jobs of cancelled tasks: their results are dropped.
    dropped: HashSet<u64>,
    next_id: u64,
    /// A worker is waiting for more jobs to fill its batch; the others leave the queue to it.
    gathering: bool,
    shutdown: bool,
    /// The process these jobs were queued in, and the one whose workers serve the queue:
    /// threads and queued work do not survive a fork (see `Inner::adopt`).
    pid: u32,
    workers_pid: u32,
}

/// A job in the queue, with what its result needs.
struct Queued {
    id: u64,
    task: TaskId,
    rows: usize,
    submitted: Instant,
    slot: Arc<Slot>,
    job: Job,
}

/// Where a worker leaves a job's result for its [`Ticket`].
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<(Done, JobTimes)>>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, result: Result<(Done, JobTimes)>) {
        *lock(&self.result) = Some(result);
        self.ready.notify_all();
    }
}

/// A submitted job's result, once. Dropping a ticket whose job is still queued removes the job
/// (a discarded pending batch frees its queue space and skips its pass).
pub struct Ticket {
    state: TicketState,
    /// The engine and the job's id, to remove the job when the ticket drops unread.
    queued: Option<(Weak<Inner>, u64)>,
    /// The process that submitted it: in a forked child the job never runs.
    pid: u32,
}

enum TicketState {
    /// Computed on the caller's thread (`per-task`).
    Ready(Result<(Done, JobTimes)>),
    Waiting(Arc<Slot>),
    Taken,
}

/// A poisoned lock only means a thread panicked while holding it; the data (queues and
/// counters updated in single steps) is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// The process's engine for `model` and `config` (one per model and sizing; created on
    /// first use, its workers stop when the last handle drops). `threads`: intra-op threads
    /// of a pass in `per-task` mode (the caller's `num_threads`); `shared` mode sizes its
    /// workers from the config alone (see [`EngineConfig`]).
    ///
    /// Errors: [`Error::Internal`] when a worker thread cannot be started.
    pub fn get(model: &Arc<Model>, config: &EngineConfig, threads: usize) -> Result<Arc<Engine>> {
        let key_threads = match config.mode {
            EngineMode::PerTask => threads,
            EngineMode::Shared => 0,
        };
        let key = (Arc::as_ptr(model) as usize, config.clone(), key_threads);
        let mut reg = lock(&ENGINES);
        reg.engines.retain(|_, e| e.strong_count() > 0);
        reg.inners.retain(|i| i.strong_count() > 0);
        // A stopped engine (after a library unload) is replaced, not handed out.
        if let Some(engine) = reg.engines.get(&key).and_then(Weak::upgrade)
            && !lock(&engine.inner.state).shutdown
        {
            return Ok(engine);
        }
        let engine = Arc::new(Engine::start(model, config, threads)?);
        reg.engines.insert(key, Arc::downgrade(&engine));
        reg.inners.push(Arc::downgrade(&engine.inner));
        Ok(engine)
    }

    fn start(model: &Arc<Model>, config: &EngineConfig, threads: usize) -> Result<Engine> {
        let cores = match config.cores {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (workers, threads) = match config.mode {
            EngineMode::PerTask => (0, threads.max(1)),
            EngineMode::Shared => {
                // One pass at a time per GPU: its kernels already use the whole device.
                let auto = if model.device().is_cuda() {
                    1
                } else {
                    cores / config.task_cpus.max(1)
                };
                let workers = match config.workers {
                    0 => auto,
                    n => n,
                }
                .clamp(1, cores.max(1));
                // W x T <= cores: OpenMP threads spin, so oversubscribing slows every pass.
                let most = (cores / workers).max(1);
                let threads = match config.threads_per_worker {
                    0 => most,
                    n => n.min(most),
                };
                (workers, threads)
            }
        };
        let pid = std::process::id();
        let engine = Engine {
            _model: Arc::clone(model),
            inner: Arc::new(Inner {
                model: Arc::downgrade(model),
                path: model.path().to_path_buf(),
                config: config.clone(),
                cores,
                workers,
                threads,
                state: Mutex::new(State {
                    pid,
                    workers_pid: pid,
                    ..State::default()
                }),
                work: Condvar::new(),
                space: Condvar::new(),
                counters: Counters::default(),
            }),
        };
        // On an error `engine` drops here, which stops the workers already started.
        engine.inner.spawn_workers()?;
        Ok(engine)
    }

    /// Queues `job` and returns its ticket. `shared`: waits at most `timeout_ms` for queue
    /// space (rows and bytes; a job larger than the bounds is admitted into an empty queue).
    /// `per-task`: runs the forward pass on the caller's thread first.
    ///
    /// Errors: [`Error::Inference`] when no space came within `timeout_ms` (naming the queued
    /// rows, bytes and tasks, and `engineTimeoutMs`) or the engine was closed. A forward pass's
    /// error comes from [`Ticket::wait`].
    pub fn submit(&self, job: Job) -> Result<Ticket> {
        let _inside = lifecycle::enter();
        let inner = &self.inner;
        // Past the gate while exiting, this is the exiting thread (an `atexit` handler that
        // scores): the workers are stopped, so the pass runs here.
        if inner.config.mode == EngineMode::PerTask || lifecycle::exiting() {
            let rows = job.rows;
            let (result, forward) = inner.pass(job.work, rows);
            if result.is_err() {
                inner.counters.failed_jobs.fetch_add(1, Ordering::Relaxed);
            }
            let times = JobTimes {
                queued: Duration::ZERO,
                forward,
                batch_rows: rows,
                batch_jobs: 1,
            };
            return Ok(Ticket {
                state: TicketState::Ready(result.map(|done| (done, times))),
                queued: None,
                pid: std::process::id(),
            });
        }
        inner.enqueue(job)
    }

    /// Drops `task`'s queued jobs (their tickets resolve to a "cancelled" error) and marks its
    /// running ones, whose results are then dropped the same way; returns how many queued jobs
    /// were dropped.
    pub fn cancel(&self, task: TaskId) -> usize {
        self.inner.cancel(task)
    }

    /// The engine's sizes, queue and counters, live.
    pub fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let c = &inner.counters;
        let mut st = lock(&inner.state);
        inner.adopt(&mut st);
        EngineStats {
            mode: inner.config.mode,
            cores: inner.cores,
            workers: inner.workers,
            threads_per_worker: inner.threads,
            queued_jobs: st.queue.len(),
            queued_rows: st.queued_rows,
            queued_bytes: st.queued_bytes,
            active_tasks: st.tasks.len(),
            batches: c.batches.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            merged_batches: c.merged_batches.load(Ordering::Relaxed),
            failed_jobs: c.failed_jobs.load(Ordering::Relaxed),
            cancelled_jobs: c.cancelled_jobs.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Workers finish the pass they are in and exit; they are not joined (an exit drains
        // them through the gate).
        self.inner
            .stop("the engine was closed before this job's forward pass");
    }
}

/// Every engine of the process drops its queued jobs (their tickets fail with `reason`) and
/// stops its workers after their current pass ([`lifecycle::shutdown`]).
pub(crate) fn stop_all(reason: &str) {
    let inners: Vec<Arc<Inner>> = lock(&ENGINES)
        .inners
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for inner in inners {
        inner.stop(reason);
    }
}

/// The engines' locks, held by a forking thread from `prepare` to `parent` / `child`: no
/// thread of the parent holds one when the child is made.
pub(crate) struct ForkHeld {
    // Dropped in this order: the guards borrow from `inners`.
    _states: Vec<MutexGuard<'static, State>>,
    _inners: Vec<Arc<Inner>>,
    _registry: MutexGuard<'static, Registry>,
}

/// Takes the registry's lock, then every engine's (the order every other path takes them in).
pub(crate) fn fork_prepare() -> ForkHeld {
    let registry = lock(&ENGINES);
    let inners: Vec<Arc<Inner>> = registry.inners.iter().filter_map(Weak::upgrade).collect();
    let states = inners
        .iter()
        .map(|inner| {
            // SAFETY: the Arc is kept in the same ForkHeld, whose guards drop first.
            let inner: &'static Inner = unsafe { &*Arc::as_ptr(inner) };
            lock(&inner.state)
        })
        .collect();
    ForkHeld {
        _states: states,
        _inners: inners,
        _registry: registry,
    }
}

impl State {
    /// Takes the head job out of the queue and marks it running.
    fn pop(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.queued_rows = self.queued_rows.saturating_sub(q.rows);
        self.queued_bytes = self.queued_bytes.saturating_sub(q.job.bytes);
        self.running.insert(q.id, q.task);
        Some(q)
    }

    /// One job of `task` is no longer queued or running.
    fn release(&mut self, task: TaskId) {
        if let Some(n) = self.tasks.get_mut(&task) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.tasks.remove(&task);
            }
        }
    }
}

impl Inner {
    fn fail(&self, reason: String) -> Error {
        Error::Inference {
            path: self.path.clone(),
            reason,
        }
    }

    fn cancelled(&self, task: TaskId) -> Error {
        self.fail(format!(
            "cancelled: task {task} ended before this job's result was collected"
        ))
    }

    fn row_bound(&self, st: &State) -> usize {
        match self.config.queue_rows {
            0 => st.largest_batch.max(1).saturating_mul(4),
            n => n,
        }
    }

    fn byte_bound(&self) -> usize {
        match self.config.queue_bytes {
            0 => DEFAULT_QUEUE_BYTES,
            n => n,
        }
    }

    /// Starts the workers (in the process that runs this; none once it is exiting, when the
    /// exiting thread's passes run on it).
    fn spawn_workers(self: &Arc<Self>) -> Result<()> {
        if lifecycle::exiting() {
            return Ok(());
        }
        for i in 0..self.workers {
            let inner = Arc::clone(self);
            std::thread::Builder::new()
                .name(format!("torchspark-forward-{i}"))
                .spawn(move || inner.work_loop())
                .map_err(|e| Error::Internal {
                    reason: format!("cannot start engine worker {i}: {e}"),
                })?;
        }
        Ok(())
    }

    /// In a forked child, first use: the parent's queued and running jobs stay the parent's
    /// (their tickets fail here, see [`Ticket::wait`]); their slots are not touched (a parent
    /// thread may have held one's lock at the fork).
    fn adopt(&self, st: &mut State) {
        let pid = std::process::id();
        if st.pid == pid {
            return;
        }
        let parents = std::mem::take(&mut st.queue);
        st.queued_rows = 0;
        st.queued_bytes = 0;
        st.tasks.clear();
        st.running.clear();
        st.dropped.clear();
        st.gathering = false;
        st.pid = pid;
        // Freed without a pass: the memory is this process's copy.
        drop(parents);
    }

    /// Closes the engine: queued jobs fail with `reason`, workers exit after their pass.
    fn stop(&self, reason: &str) {
        let mut st = lock(&self.state);
        self.adopt(&mut st);
        st.shutdown = true;
        let queued: Vec<Queued> = st.queue.drain(..).collect();
        st.queued_rows = 0;
        st.queued_bytes = 0;
        for q in &queued {
            st.release(q.task);
        }
        drop(st);
        self.work.notify_all();
        self.space.notify_all();
        for q in queued {
            q.slot.fill(Err(self.fail(reason.into())));
        }
    }

    /// Queues `job`, waiting for space outside the gate; a job that is not queued is dropped
    /// back inside it (its tensors are libtorch's).
    fn enqueue(self: &Arc<Self>, job: Job) -> Result<Ticket> {
        let pid = std::process::id();
        let mut st = lock(&self.state);
        self.adopt(&mut st);
        if st.workers_pid != pid && !st.shutdown {
            // A forked child: the parent's workers are not here.
            st.workers_pid = pid;
            drop(st);
            self.spawn_workers()?;
        } else {
            drop(st);
        }
        let (result, rejected) = lifecycle::outside(|| self.push(job));
        drop(rejected);
        result
    }

    fn push(self: &Arc<Self>, job: Job) -> (Result<Ticket>, Option<Job>) {
        let submitted = Instant::now();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        // None: a timeout past the clock's range, i.e. never.
        let deadline = submitted.checked_add(timeout);
        let mut st = lock(&self.state);
        st.largest_batch = st.largest_batch.max(job.max_batch).max(job.rows);
        loop {
            if st.shutdown {
                return (Err(self.fail("the engine was closed".into())), Some(job));
            }
            let fits = st.queued_rows.saturating_add(job.rows) <= self.row_bound(&st)
                && st.queued_bytes.saturating_add(job.bytes) <= self.byte_bound();
            // A job larger than the bounds goes into an empty queue: no deadlock.
            if fits || st.queue.is_empty() {
                break;
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if now >= d => {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    let error = self.fail(format!(
                        "timed out after {} ms waiting for space in the engine's queue for {} \
                         rows: {} rows and {} bytes of {} task(s) queued (bounds: {} rows, {} \
                         bytes); raise engineTimeoutMs (engine.timeout_ms) or the queue bounds \
                         (engine.queue_rows, engine.queue_bytes)",
                        self.config.timeout_ms,
                        job.rows,
                        st.queued_rows,
                        st.queued_bytes,
                        st.tasks.len(),
                        self.row_bound(&st),
                        self.byte_bound(),
                    ));
                    return (Err(error), Some(job));
                }
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            st = self
                .space
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.queued_rows += job.rows;
        st.queued_bytes += job.bytes;
        *st.tasks.entry(job.task).or_insert(0) += 1;
        let slot = Arc::new(Slot::default());
        st.queue.push_back(Queued {
            id,
            task: job.task,
            rows: job.rows,
            submitted,
            slot: Arc::clone(&slot),
            job,
        });
        drop(st);
        // All: a gathering worker must see the new job, not only an idle one.
        self.work.notify_all();
        let ticket = Ticket {
            state: TicketState::Waiting(slot),
            queued: Some((Arc::downgrade(self), id)),
            pid: std::process::id(),
        };
        (Ok(ticket), None)
    }

    /// Removes job `id` if it is still queued (its ticket was dropped unread).
    fn forget(&self, id: u64) {
        let mut st = lock(&self.state);
        self.adopt(&mut st);
        let Some(at) = st.queue.iter().position(|q| q.id == id) else {
            return;
        };
        if let Some(q) = st.queue.remove(at) {
            st.queued_rows = st.queued_rows.saturating_sub(q.rows);
            st.queued_bytes = st.queued_bytes.saturating_sub(q.job.bytes);
            st.release(q.task);
        }
        drop(st);
        self.space.notify_all();
        self.work.notify_all();
    }

    fn cancel(&self, task: TaskId) -> usize {
        let mut st = lock(&self.state);
        self.adopt(&mut st);
        let (removed, kept): (VecDeque<Queued>, VecDeque<Queued>) = std::mem::take(&mut st.queue)
            .into_iter()
            .partition(|q| q.task == task);
        st.queue = kept;
        for q in &removed {
            st.queued_rows = st.queued_rows.saturating_sub(q.rows);
            st.queued_bytes = st.queued_bytes.saturating_sub(q.job.bytes);
            st.release(task);
        }
        let running: Vec<u64> = st
            .running
            .iter()
            .filter(|(_, t)| **t == task)
            .map(|(id, _)| *id)
            .collect();
        st.dropped.extend(running);
        drop(st);
        self.space.notify_all();
        self.work.notify_all();
        self.counters
            .cancelled_jobs
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
        for q in &removed {
            q.slot.fill(Err(self.cancelled(task)));
        }
        removed.len()
    }

    fn work_loop(&self) {
        while let Some(batch) = self.next_batch() {
            // A pass (and the tensors it merges, splits and drops) runs inside the gate.
            let _inside = lifecycle::enter();
            self.run_batch(batch);
        }
    }

    /// The next pass's jobs: the head job plus the following compatible ones that fit its
    /// batch, after a short wait for more when the head is thin and other tasks are active.
    /// `None` when the engine shuts down.
    fn next_batch(&self) -> Option<Vec<Queued>> {
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                return None;
            }
            if !st.queue.is_empty() && !st.gathering {
                break;
            }
            st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let head = st.pop()?;
        let gather =
            head.rows < head.job.max_batch && st.tasks.len() > 1 && self.config.max_wait_us > 0;
        if gather {
            st.gathering = true;
            let started = Instant::now();
            let most = Duration::from_micros(self.config.max_wait_us);
            loop {
                let (_, complete) = followers(&head, &st.queue);
                let waited = started.elapsed();
                if complete || st.shutdown || waited >= most {
                    break;
                }
                st = self
                    .work
                    .wait_timeout(st, most - waited)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            st.gathering = false;
        }
        let (n, _) = followers(&head, &st.queue);
        let mut batch = Vec::with_capacity(n + 1);
        batch.push(head);
        batch.extend((0..n).filter_map(|_| st.pop()));
        let more = !st.queue.is_empty();
        drop(st);
        self.space.notify_all();
        if gather || more {
            self.work.notify_all();
        }
        Some(batch)
    }

    /// One forward pass on this thread: the test delay, then [`run_work`] under
    /// `catch_unwind` (a panic fails the job, never the worker). Counted in the stats.
    fn pass(&self, work: Work, rows: usize) -> (Result<Done>, Duration) {
        let _inside = lifecycle::enter();
        if self.config.debug_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.config.debug_delay_ms));
        }
        let Some(model) = self.model.upgrade() else {
            let closed = "the engine was closed before this job's forward pass";
            return (Err(self.fail(closed.into())), Duration::ZERO);
        };
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            run_work(&model, work, rows, self.threads)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(self.fail(format!("forward pass panicked: {what}")))
        });
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.rows.fetch_add(rows as u64, Ordering::Relaxed);
        (result, started.elapsed())
    }

    /// Runs `batch` as one pass (merged when it holds several jobs) and gives each job its
    /// rows. A merged pass that fails, or whose output cannot be split by rows, runs each job
    /// alone: only a job whose own pass fails gets an error.
    fn run_batch(&self, batch: Vec<Queued>) {
        let started = Instant::now();
        if batch.len() > 1 {
            let sizes: Vec<usize> = batch.iter().map(|q| q.rows).collect();
            let total: usize = sizes.iter().sum();
            if let Some(work) = merge(&batch) {
                self.counters.merged_batches.fetch_add(1, Ordering::Relaxed);
                let (result, forward) = self.pass(work, total);
                if let Some(parts) = result.ok().and_then(|done| split(done, &sizes)) {
                    for (q, done) in batch.into_iter().zip(parts) {
                        let times = JobTimes {
                            queued: started.saturating_duration_since(q.submitted),
                            forward,
                            batch_rows: total,
                            batch_jobs: sizes.len(),
                        };
                        self.deliver(q.id, q.task, &q.slot, Ok((done, times)));
                    }
                    return;
                }
            }
        }
        for q in batch {
            let queued = Instant::now().saturating_duration_since(q.submitted);
            let (result, forward) = self.pass(q.job.work, q.rows);
            let times = JobTimes {
                queued,
                forward,
                batch_rows: q.rows,
                batch_jobs: 1,
            };
            self.deliver(q.id, q.task, &q.slot, result.map(|done| (done, times)));
        }
    }

    fn deliver(&self, id: u64, task: TaskId, slot: &Slot, result: Result<(Done, JobTimes)>) {
        let mut st = lock(&self.state);
        st.running.remove(&id);
        let dropped = st.dropped.remove(&id);
        st.release(task);
        drop(st);
        let result = if dropped {
            self.counters.cancelled_jobs.fetch_add(1, Ordering::Relaxed);
            Err(self.cancelled(task))
        } else {
            if result.is_err() {
                self.counters.failed_jobs.fetch_add(1, Ordering::Relaxed);
            }
            result
        };
        slot.fill(result);
    }
}

/// How many jobs at the front of `queue` join `head`'s pass (compatible, in FIFO order, the
/// rows within `head.max_batch`), and whether waiting could add more (false = it could).
fn followers(head: &Queued, queue: &VecDeque<Queued>) -> (usize, bool) {
    let limit = head.job.max_batch;
    let mut rows = head.rows;
    for (n, q) in queue.iter().enumerate() {
        if !compatible(&head.job, &q.job) || rows + q.rows > limit {
            return (n, true);
        }
        rows += q.rows;
    }
    (queue.len(), rows >= limit)
}

/// Whether two jobs can share one pass: images of the same target and row length; general
/// jobs whose every argument is a batched tensor of equal dtype, device and shape past dim 0.
/// `List[Tensor]` arguments (`ragged: "list"`) never merge.
fn compatible(a: &Job, b: &Job) -> bool {
    if a.rows == 0 || b.rows == 0 {
        return false;
    }
    match (&a.work, &b.work) {
        (
            Work::Image {
                pixels: pa,
                target: ta,
            },
            Work::Image {
                pixels: pb,
                target: tb,
            },
        ) => {
            ta == tb
                && pa.len() % a.rows == 0
                && pb.len() % b.rows == 0
                && pa.len() / a.rows == pb.len() / b.rows
        }
        (
            Work::General {
                args: xa,
                method: ma,
            },
            Work::General {
                args: xb,
                method: mb,
            },
        ) => {
            ma == mb
                && xa.len() == xb.len()
                && xa.iter().zip(xb).all(|(x, y)| match (x, y) {
                    (ModelInput::Batch(x), ModelInput::Batch(y)) => {
                        let (sx, sy) = (x.size(), y.size());
                        !sx.is_empty()
                            && sx.len() == sy.len()
                            && sx[0] == a.rows as i64
                            && sy[0] == b.rows as i64
                            && sx[1..] == sy[1..]
                            && x.kind() == y.kind()
                            && x.device() == y.device()
                    }
                    _ => false,
                })
        }
        _ => false,
    }
}

/// The work of one pass over `batch`'s jobs, rows in job order (the jobs keep their own
/// work, to run alone if the merged pass fails); `None` when the tensors cannot be joined.
fn merge(batch: &[Queued]) -> Option<Work> {
    let first = batch.first()?;
    match &first.job.work {
        Work::Image { target, .. } => {
            let mut pixels = Vec::with_capacity(
                batch
                    .iter()
                    .map(|q| match &q.job.work {
                        Work::Image { pixels, .. } => pixels.len(),
                        Work::General { .. } => 0,
                    })
                    .sum(),
            );
            for q in batch {
                let Work::Image { pixels: p, .. } = &q.job.work else {
                    return None;
                };
                pixels.extend_from_slice(p);
            }
            Some(Work::Image {
                pixels,
                target: *target,
            })
        }
        Work::General { args, method } => {
            let mut merged = Vec::with_capacity(args.len());
            for i in 0..args.len() {
                let parts = batch
                    .iter()
                    .map(|q| match &q.job.work {
                        Work::General { args, .. } => match args.get(i) {
                            Some(ModelInput::Batch(t)) => Some(t),
                            _ => None,
                        },
                        Work::Image { .. } => None,
                    })
                    .collect::<Option<Vec<&Tensor>>>()?;
                merged.push(ModelInput::Batch(Tensor::f_cat(&parts, 0).ok()?));
            }
            Some(Work::General {
                args: merged,
                method: method.clone(),
            })
        }
    }
}

/// A merged pass's result cut back into its jobs' rows (`sizes`, in order); `None` when an
/// output is not batched by row (then each job runs alone).
fn split(done: Done, sizes: &[usize]) -> Option<Vec<Done>> {
    match done {
        Done::Image { values, width } => {
            let total: usize = sizes.iter().sum();
            if values.len() != total.checked_mul(width)? {
                return None;
            }
            let mut start = 0;
            Some(
                sizes
                    .iter()
                    .map(|&n| {
                        let part = values[start..start + n * width].to_vec();
                        start += n * width;
                        Done::Image {
                            values: part,
                            width,
                        }
                    })
                    .collect(),
            )
        }
        Done::General(value) => Some(value.split(sizes)?.into_iter().map(Done::General).collect()),
    }
}

impl Ticket {
    /// The job's result, waiting at most `timeout`: `None` = not ready yet (call again);
    /// the result once, then an [`Error::Internal`] "already collected". A cancelled job's
    /// result is an [`Error::Inference`] "cancelled: ...".
    pub fn wait(&mut self, timeout: Duration) -> Option<Result<(Done, JobTimes)>> {
        match std::mem::replace(&mut self.state, TicketState::Taken) {
            TicketState::Ready(result) => Some(result),
            TicketState::Taken => Some(Err(Error::Internal {
                reason: "this job's result was already collected".into(),
            })),
            TicketState::Waiting(_) if self.pid != std::process::id() => {
                Some(Err(Error::Internal {
                    reason: format!(
                        "this batch was submitted in process {} before process {} was forked \
                         from it: its forward pass runs there; submit it again in this process",
                        self.pid,
                        std::process::id()
                    ),
                }))
            }
            TicketState::Waiting(slot) => {
                // Waiting runs no torch code: an exit or a fork need not wait for it.
                let result = lifecycle::outside(|| {
                    let guard = lock(&slot.result);
                    let mut guard = if guard.is_none() {
                        slot.ready
                            .wait_timeout_while(guard, timeout, |r| r.is_none())
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    } else {
                        guard
                    };
                    guard.take()
                });
                if result.is_none() {
                    self.state = TicketState::Waiting(slot);
                }
                result
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // The parent's job: its slot's lock may have been held by a parent thread at the
            // fork; the child's copy of the engine forgot the job already.
            return;
        }
        let unread = match &self.state {
            TicketState::Waiting(slot) => lock(&slot.result).is_none(),
            TicketState::Ready(_) | TicketState::Taken => false,
        };
        if unread
            && let Some((inner, id)) = self.queued.take()
            && let Some(inner) = inner.upgrade()
        {
            inner.forget(id);
        }
    }
}

/// Runs one job's work alone on the calling thread with `threads` intra-op threads.
pub fn run_work(model: &Model, work: Work, rows: usize, threads: usize) -> Result<Done> {
    match work {
        Work::Image { pixels, target } => {
            let (values, width) = model.run(&pixels, rows, threads, target)?;
            Ok(Done::Image { values, width })
        }
        Work::General { args, method } => Ok(Done::General(model.forward(
            args,
            method.as_deref(),
            threads,
        )?)),
    }
}
