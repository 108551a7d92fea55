//! The process around the library (docs/engine.md#lifecycle), through the C ABI as a Python
//! worker uses it: exits with jobs queued and forward passes in flight (on engine workers and
//! on callers' threads), an exit past the drain bound, a fork after the engine started.
//!
//! Each scenario runs in a child process: this test binary again, with `TORCHSPARK_LIFECYCLE`
//! naming the scenario, so that the child's exit is the thing tested. The verdict is the
//! child's exit status: a signal, an unexpected status or a hang (no exit within 120 s) fails.
//! `TORCHSPARK_LIFECYCLE_RUNS` sets how many children each scenario runs (`make stress`: 200).
// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use torchspark::capi::*;

#[path = "../../core/tests/common/mod.rs"]
mod common;
use common::fixtures;
mod capi;

const SCENARIO: &str = "TORCHSPARK_LIFECYCLE";

unsafe extern "C" {
    fn fork() -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Children per scenario: `TORCHSPARK_LIFECYCLE_RUNS`, else `default`.
fn runs(default: usize) -> usize {
    std::env::var("TORCHSPARK_LIFECYCLE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a child printed and how it ended.
struct Ended {
    status: ExitStatus,
    stderr: String,
    took: Duration,
}

/// Runs `test` of this binary as a child with the scenario `name` (and `env`), killing it after
/// 120 s.
fn child(test: &str, name: &str, seed: u64, env: &[(&str, &str)]) -> Ended {
    let started = Instant::now();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, name)
        .env("TORCHSPARK_LIFECYCLE_SEED", seed.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = cmd.spawn().unwrap();
    let status = loop {
        if let Some(status) = proc.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = proc.kill();
            let _ = proc.wait();
            panic!("scenario {name} (seed {seed}) hung: killed after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = proc.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    Ended {
        status,
        stderr,
        took: started.elapsed(),
    }
}

/// Fails on a signal or a status other than `code`, with the child's stderr.
fn expect(e: &Ended, code: i32, what: &str) {
    if let Some(sig) = e.status.signal() {
        panic!("{what}: killed by signal {sig}\n{}", e.stderr);
    }
    assert_eq!(
        e.status.code(),
        Some(code),
        "{what}: exit status\n{}",
        e.stderr
    );
}

/// The scenario this process runs, when it is a child.
fn scenario() -> Option<String> {
    std::env::var(SCENARIO).ok()
}

/// A small deterministic generator (the seed comes from the parent, so a failure names it).
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed: u64 = std::env::var("TORCHSPARK_LIFECYCLE_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn png() -> Vec<u8> {
    std::fs::read(fixtures().join("images/digit_00_label0.png")).unwrap()
}

fn resnet(threads: usize, engine: &str) -> u64 {
    capi::open(&capi::config(
        &fixtures().join("resnet20.pt"),
        threads,
        engine,
    ))
    .unwrap()
}

const SHARED: &str = r#"{"mode": "shared", "cores": 2, "workers": 2, "task_cpus": 1}"#;
const PER_TASK: &str = r#"{"mode": "per-task"}"#;
const OPTS: &str = r#"{"top_k": 1, "batch_size": 64}"#;

/// Threads that keep calling in until the process ends: scores on a shared engine (passes on
/// its workers), on a per-task engine (passes on the caller's thread, with 2 intra-op
/// threads), submits never collected, discards and cancels.
fn start_callers(rng: &mut Rng) {
    let png = png();
    let shared = resnet(1, SHARED);
    let per_task = resnet(2, PER_TASK);
    for t in 0..4u64 {
        let rows = 16 + rng.below(112) as usize;
        let batch = capi::pngs(&png, rows, true);
        std::thread::spawn(move || {
            for i in 0.. {
                let r = match t {
                    0 => capi::score(shared, &batch, OPTS).map(drop),
                    1 => capi::score(per_task, &batch, OPTS).map(drop),
                    // Queued and never collected: the exit drops them.
                    2 => capi::submit(shared, 0, &batch, OPTS, 100 + i).map(drop),
                    _ => capi::submit(shared, 0, &batch, OPTS, 7).map(|p| {
                        if i % 2 == 0 {
                            ts_discard(p);
                        } else {
                            ts_cancel_task(shared, 7);
                        }
                    }),
                };
                if let Err((code, m)) = r {
                    // A full queue times out only after minutes; anything else is a bug.
                    eprintln!("caller {t}: unexpected error {code}: {m}");
                    std::process::exit(2);
                }
            }
        });
    }
}

/// Exits (from the test's thread, or after returning to libtest's main) while the callers are
/// inside forward passes and jobs are queued: the exit drains them, the process ends 0.
#[test]
fn exit_with_jobs_queued_and_passes_in_flight_ends_cleanly() {
    let test = "exit_with_jobs_queued_and_passes_in_flight_ends_cleanly";
    match scenario().as_deref() {
        Some("exit-in-flight") => {
            let mut rng = Rng::from_env();
            start_callers(&mut rng);
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            if rng.below(2) == 0 {
                // exit() on this thread while libtest's main waits for it.
                std::process::exit(0);
            }
            // Return: libtest's main returns and exits with the callers still running.
        }
        Some(_) => {}
        None => {
            fixtures();
            for seed in 1..=runs(8) as u64 {
                let e = child(test, "exit-in-flight", seed, &[]);
                expect(&e, 0, &format!("exit with passes in flight (seed {seed})"));
            }
        }
    }
}

/// A pass still running when the drain bound passes: the exit handler ends the process at
/// once with the exit status (`_exit`), saying why, instead of running libtorch's destructors
/// under it.
#[test]
fn exit_past_the_drain_bound_ends_at_once_with_its_status() {
    let test = "exit_past_the_drain_bound_ends_at_once_with_its_status";
    match scenario().as_deref() {
        Some("past-bound") => {
            let slow = r#"{"mode": "shared", "cores": 2, "workers": 1, "task_cpus": 1, "debug_delay_ms": 20000}"#;
            let h = resnet(1, slow);
            let batch = capi::pngs(&png(), 2, false);
            let _pending = capi::submit(h, 0, &batch, OPTS, 1).unwrap();
            // The worker takes the job and sleeps in its pass.
            std::thread::sleep(Duration::from_millis(300));
            std::process::exit(3);
        }
        Some(_) => {}
        None => {
            fixtures();
            let e = child(test, "past-bound", 1, &[("TORCHSPARK_DRAIN_MS", "500")]);
            expect(&e, 3, "exit past the drain bound");
            assert!(
                e.stderr
                    .contains("still in a forward pass 500 ms after exit began"),
                "{}",
                e.stderr
            );
            assert!(e.took < Duration::from_secs(15), "took {:?}", e.took);
        }
    }
}

/// After the exit began (`ts_shutdown`, as Python's `atexit` calls it): another thread's new
/// call fails "the process is exiting" at once (it may hold locks an exit handler needs), the
/// exiting thread still scores, on its own thread, and the process ends 0.
#[test]
fn after_the_exit_began_new_calls_fail_and_the_exiting_thread_still_scores() {
    let test = "after_the_exit_began_new_calls_fail_and_the_exiting_thread_still_scores";
    match scenario().as_deref() {
        Some("after-shutdown") => {
            let h = resnet(1, SHARED);
            let batch = capi::pngs(&png(), 3, true);
            capi::score(h, &batch, OPTS).unwrap();
            assert_eq!(ts_shutdown(), 0, "nothing was in flight");
            let other = std::thread::spawn(move || capi::score(h, &batch, OPTS).map(drop));
            let code = match other.join().unwrap() {
                Err((7, m)) if m.contains("the process is exiting") => 0,
                other => {
                    eprintln!("another thread's call after the shutdown: {other:?}");
                    1
                }
            };
            let mine = capi::score(h, &capi::pngs(&png(), 3, true), OPTS).unwrap();
            assert_eq!(capi::good_rows(&mine), 3);
            std::process::exit(code);
        }
        Some(_) => {}
        None => {
            fixtures();
            let e = child(test, "after-shutdown", 1, &[]);
            expect(&e, 0, "calls after the shutdown");
        }
    }
}

/// Waits for `pid` at most 60 s; its exit code, or a panic naming `what` (killed on a hang).
fn wait_child(pid: i32, what: &str) -> i32 {
    let started = Instant::now();
    let mut status = 0i32;
    loop {
        // SAFETY: waitpid on our own child, WNOHANG.
        let r = unsafe { waitpid(pid, &mut status, 1) };
        if r == pid {
            break;
        }
        assert!(r == 0, "waitpid failed");
        if started.elapsed() > Duration::from_secs(60) {
            // SAFETY: our child.
            unsafe { kill(pid, 9) };
            panic!("{what}: the forked child hung (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status & 0x7f,
        0,
        "{what}: the child died of signal {}",
        status & 0x7f
    );
    (status >> 8) & 0xff
}

/// In a forked child: scores through both engines (fresh workers, fresh decode pool, one
/// OpenMP thread on the forking thread), a batch submitted before the fork fails naming both
/// processes, and the child exits through the exit handler. 0 when all of that held.
fn in_forked_child(
    shared: u64,
    per_task: u64,
    before: u64,
    batch: &arrow_array::RecordBatch,
) -> i32 {
    let check = |r: Result<arrow_array::RecordBatch, capi::Failure>, what: &str| match r {
        Ok(b) if capi::good_rows(&b) + 1 == b.num_rows() => true,
        other => {
            eprintln!("child: {what}: {:?}", other.map(|b| b.num_rows()));
            false
        }
    };
    let mut ok = check(capi::score(shared, batch, OPTS), "shared score");
    ok &= check(capi::score(per_task, batch, OPTS), "per-task score");
    ok &= check(
        capi::submit(shared, 0, batch, OPTS, 5).and_then(capi::collect),
        "submit + collect",
    );
    // A model opened in the child (the registry's model, a new handle).
    let fresh = resnet(2, SHARED);
    ok &= check(capi::score(fresh, batch, OPTS), "fresh handle");
    match capi::collect(before) {
        Err((_, m)) if m.contains("before process") && m.contains("was forked") => {}
        other => {
            eprintln!(
                "child: a pending of the parent: {:?}",
                other.map(|b| b.num_rows())
            );
            ok = false;
        }
    }
    i32::from(!ok)
}

/// A fork after the engine, its decode pool and an OpenMP team started (and while other
/// threads are in passes): the child scores through every path and exits; no hang, no signal.
#[test]
fn fork_after_the_engine_started_gives_a_working_child() {
    let test = "fork_after_the_engine_started_gives_a_working_child";
    match scenario().as_deref() {
        Some("fork") => {
            let mut rng = Rng::from_env();
            let png = png();
            let batch = capi::pngs(&png, 40, true);
            // Two decode threads (a rayon pool) and two intra-op threads on this thread.
            let shared = resnet(2, SHARED);
            let per_task = resnet(2, PER_TASK);
            capi::score(shared, &batch, OPTS).unwrap();
            capi::score(per_task, &batch, OPTS).unwrap();
            let busy = rng.below(2) == 0;
            if busy {
                start_callers(&mut rng);
                std::thread::sleep(Duration::from_millis(rng.below(200)));
            }
            let slow = r#"{"mode": "shared", "cores": 2, "workers": 1, "task_cpus": 1, "debug_delay_ms": 300}"#;
            let before = capi::submit(resnet(1, slow), 0, &batch, OPTS, 9).unwrap();
            for round in 0..2 {
                // SAFETY: fork; the child only runs this function's code and exits.
                let pid = unsafe { fork() };
                if pid == 0 {
                    std::process::exit(in_forked_child(shared, per_task, before, &batch));
                }
                assert!(pid > 0, "fork failed");
                let code = wait_child(pid, &format!("fork {round} (busy: {busy})"));
                if code != 0 {
                    std::process::exit(10 + code);
                }
            }
            // The parent still works, and its pending still comes.
            capi::score(shared, &batch, OPTS).unwrap();
            capi::collect(before).unwrap();
            std::process::exit(0);
        }
        Some(_) => {}
        None => {
            fixtures();
            for seed in 1..=runs(3) as u64 {
                let e = child(test, "fork", seed, &[]);
                expect(
                    &e,
                    0,
                    &format!("fork after the engine started (seed {seed})"),
                );
            }
        }
    }
}
