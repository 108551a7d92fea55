//! The process around the library: exit, fork and unload while forward passes run
//! (docs/engine.md#lifecycle has the whole story and its bounds).
//!
//! - **The gate.** Every section that runs libtorch code (a forward pass on an engine worker or
//!   on the caller's thread, a model load, building or dropping a batch's tensors, every FFI
//!   entry) holds an [`Inside`] guard from [`enter`]; waits for results or queue space step
//!   [`outside`] it. The gate counts the threads inside.
//! - **Exit.** [`shutdown`] (run by an `on_exit` handler, a JVM shutdown hook, Python's
//!   `atexit`) marks the process as exiting, drops every engine's queued jobs, stops the workers
//!   and waits up to [`drain_bound`] for the threads inside to leave. Afterwards another
//!   thread's new call fails ([`try_enter`]), and a thread that comes back to the gate holding
//!   torch objects (a wait that ended) waits there until the process is gone, so no torchspark
//!   thread runs torch code while libtorch's static destructors run. Past the bound the `on_exit`
//!   handler ends the process at once (`_exit` with its status) rather than destroy libtorch
//!   under a running pass.
//! - **Fork.** A `pthread_atfork` prepare handler waits (same bound) until no thread is inside,
//!   holds the gate closed and takes the engines' locks, so that the child gets no lock held by
//!   a thread it does not have. The child makes its own workers and decode pools on first use
//!   ([`decode_pool`] is keyed by process), and a thread that ran OpenMP regions before the fork
//!   runs its passes with one intra-op thread (libgomp's team of the parent is gone).
//! - **Exit order.** The `on_exit` handler must run before libtorch's static destructors,
//!   most of which libtorch registers lazily, during passes: see [`exit_order`].
//! - **Unload.** The library pins itself (`RTLD_NODELETE`): a detached worker's code and
//!   libtorch are never unmapped under it; `JNI_OnUnload` calls [`quiesce`].
//! - **Engines.** This module sits below the engine: the engine registers what an exit and a
//!   fork do to it (`EngineHooks`, `register_engines`) before its registry is first used.

mod exit_order;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use crate::error::{Error, Result};

unsafe extern "C" {
    fn on_exit(f: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
    fn pthread_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
    ) -> c_int;
    fn gettid() -> c_int;
    fn _exit(status: c_int) -> !;
    fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
}

#[repr(C)]
struct DlInfo {
    fname: *const c_char,
    fbase: *mut c_void,
    sname: *const c_char,
    saddr: *mut c_void,
}

const RTLD_NOW: c_int = 2;
const RTLD_NOLOAD: c_int = 4;
const RTLD_NODELETE: c_int = 0x1000;

/// Default of [`drain_bound`]; `TORCHSPARK_DRAIN_MS` overrides it.
pub const DEFAULT_DRAIN_MS: u64 = 10_000;

/// How long an exit, a fork or an unload waits for the forward passes in flight:
/// `TORCHSPARK_DRAIN_MS` (milliseconds), default [`DEFAULT_DRAIN_MS`].
pub fn drain_bound() -> Duration {
    static BOUND: Lazy<Duration> = Lazy::new(|| {
        let ms = std::env::var("TORCHSPARK_DRAIN_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_DRAIN_MS);
        Duration::from_millis(ms)
    });
    *BOUND
}

#[derive(Default)]
struct Life {
    /// Threads inside the gate.
    active: usize,
    /// The process is exiting: only `exit_thread` passes the gate.
    exiting: bool,
    exit_thread: c_int,
    /// Every drain of one exit shares the first one's deadline.
    exit_deadline: Option<Instant>,
    /// A fork is being prepared by this thread: the others wait at the gate.
    forking: Option<c_int>,
}

/// What exit and fork do to the engines, given by the engine (which lives above this module).
pub(crate) struct EngineHooks {
    /// Drops every engine's queued jobs (their tickets fail with the reason), stops workers.
    pub stop_all: fn(&str),
    /// Takes the engines' locks; they are held until the box drops (after the fork).
    pub fork_prepare: fn() -> Box<dyn std::any::Any>,
}

/// The registered [`EngineHooks`]: an atomic, not a `OnceLock`, so a fork can never copy a
/// half-made registration. Null until the first engine lookup: then no engine exists.
static ENGINES: AtomicPtr<EngineHooks> = AtomicPtr::new(std::ptr::null_mut());

/// Called by the engine before it first takes its registry's lock, so an exit or fork that
/// sees no hooks knows no thread can hold that lock.
pub(crate) fn register_engines(hooks: &'static EngineHooks) {
    ENGINES.store(std::ptr::from_ref(hooks).cast_mut(), Ordering::Release);
}

fn engine_hooks() -> Option<&'static EngineHooks> {
    // SAFETY: only `register_engines` stores here, always a `&'static EngineHooks`.
    unsafe { ENGINES.load(Ordering::Acquire).as_ref() }
}

static LIFE: Lazy<Mutex<Life>> = Lazy::new(|| Mutex::new(Life::default()));
static CHANGED: Condvar = Condvar::new();
/// Read without the lock on the hot path (a set flag is confirmed under the lock).
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// Nesting of [`Inside`] guards on this thread (no destructor: usable at any time).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// This thread ran a pass with more than one intra-op thread (an OpenMP team).
    static OMP_TEAM: Cell<bool> = const { Cell::new(false) };
    /// This thread forked after running OpenMP regions: its team is gone in this process.
    static OMP_STALE: Cell<bool> = const { Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tid() -> c_int {
    // SAFETY: gettid has no preconditions.
    unsafe { gettid() }
}

/// Proof that this thread is inside the gate (see the module docs); leaves it when dropped.
/// Not `Send`: it counts this thread.
pub struct Inside {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Enters the gate holding torch objects already (a job, a pending batch): waits while a fork
/// is being prepared; once the process is exiting, a thread other than the exiting one waits
/// here until the process is gone (dropping what it holds would run torch code). Never call it
/// while holding one of the engine's locks.
pub fn enter() -> Inside {
    install();
    let depth = DEPTH.with(Cell::get);
    if depth == 0 {
        admit(false);
    }
    DEPTH.with(|d| d.set(depth + 1));
    Inside {
        _not_send: std::marker::PhantomData,
    }
}

/// Enters the gate for a new call, holding nothing of torch: as [`enter`], but once the process
/// is exiting a thread other than the exiting one gets an error instead of waiting (it may hold
/// its caller's locks, which an exit handler could need).
///
/// Errors: [`Error::Internal`] "the process is exiting".
pub fn try_enter() -> Result<Inside> {
    install();
    let depth = DEPTH.with(Cell::get);
    if depth == 0 && !admit(true) {
        return Err(Error::Internal {
            reason: "the process is exiting: torchspark's engines are stopped and no new call \
                     runs (docs/engine.md#lifecycle-closing-exit-fork-unload)"
                .into(),
        });
    }
    DEPTH.with(|d| d.set(depth + 1));
    Ok(Inside {
        _not_send: std::marker::PhantomData,
    })
}

/// Counts this thread in, after the fork and exit checks; false (not counted) when the process
/// is exiting and `refuse` is set.
fn admit(refuse: bool) -> bool {
    let me = tid();
    let mut life = lock(&LIFE);
    loop {
        if life.exiting && life.exit_thread != me {
            if refuse {
                return false;
            }
            drop(life);
            park_forever();
        }
        match life.forking {
            Some(t) if t != me => {
                life = CHANGED.wait(life).unwrap_or_else(|e| e.into_inner());
            }
            _ => break,
        }
    }
    life.active += 1;
    true
}

/// The thread reached the gate after the process began to exit: it must not run torch code
/// again, and the exit does not wait for it.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let depth = DEPTH.with(Cell::get).saturating_sub(1);
        DEPTH.with(|d| d.set(depth));
        if depth == 0 {
            leave();
        }
    }
}

fn leave() {
    let mut life = lock(&LIFE);
    life.active = life.active.saturating_sub(1);
    drop(life);
    CHANGED.notify_all();
}

/// Runs `f` (a wait that runs no torch code: for a result, for queue space) outside the gate,
/// so that an exit or a fork need not wait for it; enters again afterwards (and may wait there,
/// see [`enter`]). `f` must release every lock it takes.
pub fn outside<T>(f: impl FnOnce() -> T) -> T {
    let depth = DEPTH.with(Cell::get);
    if depth == 0 {
        return f();
    }
    DEPTH.with(|d| d.set(0));
    leave();
    let out = f();
    // The caller holds torch objects: at exit it waits here rather than drop them.
    admit(false);
    DEPTH.with(|d| d.set(depth));
    out
}

/// Whether the process began to exit ([`shutdown`] ran).
pub fn exiting() -> bool {
    EXITING.load(std::sync::atomic::Ordering::Acquire)
}

/// The process is exiting (or the library is being unloaded, `permanent` false): drops every
/// engine's queued jobs, stops the workers, and waits until no other thread is inside the gate,
/// at most until [`drain_bound`] after the first call. Returns how many threads are still
/// inside (0: drained). When `permanent`, the gate stays closed to every thread but this one.
pub fn shutdown(permanent: bool) -> usize {
    install();
    let me = tid();
    let deadline = {
        let mut life = lock(&LIFE);
        if permanent {
            life.exiting = true;
            life.exit_thread = me;
            EXITING.store(true, std::sync::atomic::Ordering::Release);
        }
        let bound = Instant::now() + drain_bound();
        if permanent {
            *life.exit_deadline.get_or_insert(bound)
        } else {
            bound
        }
    };
    let reason = if permanent {
        "the process is exiting"
    } else {
        "the torchspark library is being unloaded"
    };
    if let Some(engines) = engine_hooks() {
        (engines.stop_all)(reason);
    }
    let own = usize::from(DEPTH.with(Cell::get) > 0);
    let mut life = lock(&LIFE);
    while life.active > own {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        life = CHANGED
            .wait_timeout(life, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    life.active.saturating_sub(own)
}

/// `JNI_OnUnload`: [`shutdown`] without closing the gate (another class loader may load the
/// pinned library again).
pub fn quiesce() -> usize {
    shutdown(false)
}

static INSTALL: Once = Once::new();

/// Once per process, from the first gate entry: the exit and fork handlers, and the pin.
fn install() {
    INSTALL.call_once(|| {
        pin_library();
        register_exit_handler();
        // SAFETY: plain function pointers, valid for the life of the (pinned) library.
        unsafe {
            pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

/// After a load (which may have brought new libraries and their static destructors): hooks
/// the new libraries' `__cxa_atexit` ([`exit_order`]) and registers the exit handler again, so
/// that it runs before everything registered so far.
pub fn register_exit_handler() {
    exit_order::hook_loaded_objects();
    register_on_exit();
}

/// Registers the (idempotent) exit handler once more: exit handlers run last-registered first.
fn register_on_exit() {
    // SAFETY: a plain function pointer, valid for the life of the (pinned) library.
    unsafe {
        on_exit(at_exit, std::ptr::null_mut());
    }
}

extern "C" fn at_exit(status: c_int, _: *mut c_void) {
    let left = std::panic::catch_unwind(|| shutdown(true)).unwrap_or(0);
    if left > 0 {
        let msg = format!(
            "torchspark: {left} thread(s) still in a forward pass {} ms after exit began \
             (TORCHSPARK_DRAIN_MS); ending the process now (_exit({status})) rather than \
             destroying libtorch under them\n",
            drain_bound().as_millis()
        );
        // SAFETY: write(2) of a valid buffer; _exit never returns. No stdio: a running thread
        // may hold its locks.
        unsafe {
            write(2, msg.as_ptr().cast(), msg.len());
            _exit(status);
        }
    }
}

/// `RTLD_NODELETE` on this library: engine workers are detached threads whose code lives
/// here, so the library (and libtorch under it) must never be unmapped (a JVM class loader's
/// unload would `dlclose` it).
fn pin_library() {
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    let here = pin_library as *const c_void;
    // SAFETY: dladdr fills `info` for an address of this library; dlopen with RTLD_NOLOAD only
    // adds the flag to an object already loaded (a null result changes nothing).
    unsafe {
        if dladdr(here, &mut info) != 0 && !info.fname.is_null() {
            dlopen(info.fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        }
    }
}

/// What the forking thread holds from `prepare` until `parent` / `child`.
struct Held {
    // Dropped in this order: the engines' locks, then the gate's.
    engines: Option<Box<dyn std::any::Any>>,
    pools: Option<MutexGuard<'static, HashMap<(u32, usize), &'static rayon::ThreadPool>>>,
    life: MutexGuard<'static, Life>,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    let _ = std::panic::catch_unwind(|| {
        let me = tid();
        let own = usize::from(DEPTH.with(Cell::get) > 0);
        let mut life = lock(&LIFE);
        life.forking = Some(me);
        let deadline = Instant::now() + drain_bound();
        while life.active > own {
            let now = Instant::now();
            if now >= deadline {
                let msg = format!(
                    "torchspark: fork with {} thread(s) still in a forward pass after {} ms \
                     (TORCHSPARK_DRAIN_MS); the child may block on a lock they hold\n",
                    life.active - own,
                    drain_bound().as_millis()
                );
                // SAFETY: write(2) of a valid buffer.
                unsafe { write(2, msg.as_ptr().cast(), msg.len()) };
                break;
            }
            life = CHANGED
                .wait_timeout(life, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // Then no thread inside can be holding these, and none can enter to take them.
        let engines = engine_hooks().map(|e| (e.fork_prepare)());
        let pools = Some(lock(&POOLS));
        HELD.with(|h| {
            *h.borrow_mut() = Some(Held {
                engines,
                pools,
                life,
            })
        });
    });
}

fn release_fork(child: bool) {
    let held = HELD.with(|h| h.borrow_mut().take());
    let Some(mut held) = held else {
        return;
    };
    drop(held.engines.take());
    drop(held.pools.take());
    held.life.forking = None;
    if child {
        // Only this thread exists here.
        held.life.active = usize::from(DEPTH.with(Cell::get) > 0);
        if OMP_TEAM.with(Cell::get) {
            OMP_STALE.with(|s| s.set(true));
        }
    }
    drop(held);
    CHANGED.notify_all();
}

extern "C" fn fork_parent() {
    let _ = std::panic::catch_unwind(|| release_fork(false));
}

extern "C" fn fork_child() {
    let _ = std::panic::catch_unwind(|| release_fork(true));
}

/// The intra-op threads this thread may use for a pass asked to use `n`: 1 on a thread that
/// forked after running OpenMP regions (the child has no threads of its team: libgomp would
/// wait for them forever). Records that the thread used a team.
pub(crate) fn omp_threads(n: usize) -> usize {
    if OMP_STALE.with(Cell::get) {
        return 1;
    }
    if n > 1 {
        OMP_TEAM.with(|t| t.set(true));
    }
    n
}

/// Decode pools by process and size: a pool's threads do not survive a fork, so a child makes
/// its own (the parent's stay leaked, threadless).
static POOLS: Lazy<Mutex<HashMap<(u32, usize), &'static rayon::ThreadPool>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// A rayon pool of `n` threads for this process (one per distinct `n`: a handful), none for
/// one thread.
pub(crate) fn decode_pool(n: usize) -> Option<&'static rayon::ThreadPool> {
    if n <= 1 {
        return None;
    }
    let key = (std::process::id(), n);
    let mut pools = lock(&POOLS);
    if let Some(p) = pools.get(&key) {
        return Some(p);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("torchspark-decode-{i}"))
        .build()
        .ok()?;
    let pool: &'static rayon::ThreadPool = Box::leak(Box::new(pool));
    pools.insert(key, pool);
    Some(pool)
}
