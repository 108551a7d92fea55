//! The shared engine: one model's forward passes for many tasks, batched across them, split
//! back in order, with failures, cancellation and bounded waits. PyTorch's own result for the
//! same rows, computed alone (`run_work` on this thread), is the reference.
//!
//! The tests take one lock each: they count threads and time passes, so they run one at a
//! time (and leave the machine's other cores to the other test binaries).
// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use tch::{Kind, Tensor};
use torchspark_core::engine::{Done, Engine, Job, JobTimes, Ticket, Work, run_work};
use torchspark_core::model::{Model, Target, get_or_load};
use torchspark_core::value::{ModelInput, Value};
use torchspark_core::{EngineConfig, EngineMode, Error, ModelConfig};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// ResNet-20's preprocessed row: 3 x 32 x 32 floats.
const ROW: usize = 3 * 32 * 32;

fn resnet() -> Arc<Model> {
    get_or_load(&ModelConfig {
        num_threads: Some(1),
        ..ModelConfig::new(fixtures().join("resnet20.pt"))
    })
    .unwrap()
}

/// `rows` rows of normalized-looking pixels, different for every `seed`.
fn pixels(seed: u64, rows: usize) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..rows * ROW)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn image_job(task: u64, seed: u64, rows: usize, max_batch: usize) -> Job {
    let pixels = pixels(seed, rows);
    Job {
        task,
        rows,
        bytes: pixels.len() * 4,
        max_batch,
        work: Work::Image {
            pixels,
            target: Target::Probabilities,
        },
    }
}

/// The job's rows run alone on this thread: what `per-task` gives.
fn alone(model: &Model, seed: u64, rows: usize) -> Vec<f32> {
    match run_work(
        model,
        Work::Image {
            pixels: pixels(seed, rows),
            target: Target::Probabilities,
        },
        rows,
        1,
    )
    .unwrap()
    {
        Done::Image { values, .. } => values,
        Done::General(_) => panic!("an image job returned a general value"),
    }
}

fn wait(ticket: &mut Ticket) -> Result<(Done, JobTimes), Error> {
    ticket
        .wait(Duration::from_secs(30))
        .expect("no result within 30 s")
}

fn image_values(done: Done) -> Vec<f32> {
    match done {
        Done::Image { values, .. } => values,
        Done::General(_) => panic!("an image job returned a general value"),
    }
}

fn shared(cores: usize, workers: usize) -> EngineConfig {
    EngineConfig {
        cores,
        workers,
        threads_per_worker: 1,
        ..EngineConfig::default()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn eight_threads_through_one_engine_equal_one_thread() {
    let _serial = serial();
    let model = resnet();
    let engine = Engine::get(&model, &shared(2, 2), 1).unwrap();
    let stats = engine.stats();
    assert_eq!((stats.workers, stats.threads_per_worker), (2, 1));
    // 8 tasks x 10 jobs, most thin (1-3 rows of a batch of 8): passes merge rows of several
    // tasks.
    // Per task: (seed, rows, values, times) of each job.
    type Results = Vec<Vec<(u64, usize, Vec<f32>, JobTimes)>>;
    let results: Results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|task| {
                let engine = Arc::clone(&engine);
                s.spawn(move || {
                    let mut tickets = Vec::new();
                    for j in 0..10u64 {
                        let seed = task * 100 + j;
                        // Every 4th job is full: it runs alone, as per-task would.
                        let rows = if j % 4 == 0 {
                            8
                        } else {
                            1 + (seed % 3) as usize
                        };
                        let t = engine.submit(image_job(task, seed, rows, 8)).unwrap();
                        tickets.push((seed, rows, t));
                    }
                    tickets
                        .into_iter()
                        .map(|(seed, rows, mut t)| {
                            let (done, times) = wait(&mut t).unwrap();
                            (seed, rows, image_values(done), times)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut alone_passes = 0;
    let mut total_rows = 0;
    let mut worst = 0f32;
    for (seed, rows, values, times) in results.into_iter().flatten() {
        total_rows += rows as u64;
        let reference = alone(&model, seed, rows);
        let d = max_abs_diff(&values, &reference);
        if times.batch_jobs == 1 {
            // The same rows in the same pass with the same threads: bitwise.
            assert_eq!(values, reference, "job {seed} ran alone");
            alone_passes += 1;
        } else {
            // Other batch shapes: equal up to oneDNN's blocking (docs/internals.md).
            assert!(d <= 1e-5, "job {seed}: {d}");
            worst = worst.max(d);
            assert!(times.batch_rows <= 8 && times.batch_rows >= rows);
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.rows, total_rows, "every row ran once: {stats:?}");
    assert!(stats.batches >= 10 && stats.batches <= 80, "{stats:?}");
    assert_eq!(
        (stats.queued_rows, stats.active_tasks, stats.failed_jobs),
        (0, 0, 0)
    );
    assert!(
        alone_passes >= 24,
        "the full jobs ran alone: {alone_passes}"
    );
    eprintln!("{stats:?}, {alone_passes} jobs alone, merged max abs diff {worst:e}");
}

#[test]
fn merged_passes_happen_and_split_back_in_order() {
    let _serial = serial();
    let model = resnet();
    // One worker, slowed: the queue fills behind the first pass, so the next ones merge.
    let config = EngineConfig {
        debug_delay_ms: 100,
        ..shared(1, 1)
    };
    let engine = Engine::get(&model, &config, 1).unwrap();
    // Made first: all are submitted while the first pass sleeps.
    let jobs: Vec<(u64, usize, Job)> = (0..5u64)
        .map(|i| {
            let rows = 1 + (i % 2) as usize;
            (1000 + i, rows, image_job(10 + i, 1000 + i, rows, 8))
        })
        .collect();
    let mut tickets: Vec<(u64, usize, Ticket)> = jobs
        .into_iter()
        .map(|(seed, rows, job)| (seed, rows, engine.submit(job).unwrap()))
        .collect();
    let mut merged_jobs = 0;
    for (seed, rows, t) in &mut tickets {
        let (done, times) = wait(t).unwrap();
        let values = image_values(done);
        // Its own rows, in place: a wrong order would give another seed's probabilities.
        assert_eq!(values.len(), *rows * 10);
        assert!(max_abs_diff(&values, &alone(&model, *seed, *rows)) <= 1e-5);
        if times.batch_jobs > 1 {
            merged_jobs += 1;
        }
    }
    let stats = engine.stats();
    assert!(stats.merged_batches >= 1, "{stats:?}");
    assert!(merged_jobs >= 2, "{merged_jobs} jobs in merged passes");
    assert_eq!(stats.rows, 7);

    // The general path: tensors joined along dim 0, the output narrowed back per job.
    let mlp = get_or_load(&ModelConfig {
        num_threads: Some(1),
        ..ModelConfig::new(general_fixtures().join("diabetes_mlp.pt"))
    })
    .unwrap();
    let engine = Engine::get(&mlp, &config, 1).unwrap();
    let features = |seed: u64, rows: usize| {
        Tensor::from_slice(&pixels(seed, 1)[..rows * 10]).view([rows as i64, 10])
    };
    let sizes = [3usize, 1, 4, 2];
    let mut tickets: Vec<Ticket> = sizes
        .iter()
        .enumerate()
        .map(|(i, &rows)| {
            engine
                .submit(Job {
                    task: 20 + i as u64,
                    rows,
                    bytes: rows * 40,
                    max_batch: 16,
                    work: Work::General {
                        args: vec![ModelInput::Batch(features(i as u64, rows))],
                        method: None,
                    },
                })
                .unwrap()
        })
        .collect();
    for (i, (t, &rows)) in tickets.iter_mut().zip(&sizes).enumerate() {
        let (done, _) = wait(t).unwrap();
        let Done::General(Value::Tensor(out)) = done else {
            panic!("the MLP returns one tensor");
        };
        let reference = match run_work(
            &mlp,
            Work::General {
                args: vec![ModelInput::Batch(features(i as u64, rows))],
                method: None,
            },
            rows,
            1,
        )
        .unwrap()
        {
            Done::General(Value::Tensor(t)) => t,
            _ => panic!("the MLP returns one tensor"),
        };
        assert_eq!(out.size(), reference.size());
        let d = (out - reference).abs().max().double_value(&[]);
        assert!(d <= 1e-5, "job {i}: {d}");
    }
    assert!(engine.stats().merged_batches >= 1, "{:?}", engine.stats());
}

/// MiniLM's three int64 inputs for `rows` rows of 8 tokens; `bad` puts an id past the
/// vocabulary (30522) in the last row: same shape and dtype, so it merges, but its own forward
/// pass fails in the embedding lookup.
fn minilm_args(rows: usize, seed: i64, bad: bool) -> Vec<ModelInput> {
    let mut ids: Vec<i64> = (0..rows as i64 * 8)
        .map(|i| 1000 + (i * 37 + seed * 11) % 2000)
        .collect();
    if bad {
        let last = ids.len() - 1;
        ids[last] = 99_999;
    }
    let ids = Tensor::from_slice(&ids).view([rows as i64, 8]);
    let ones = Tensor::ones([rows as i64, 8], (Kind::Int64, tch::Device::Cpu));
    let types = Tensor::zeros([rows as i64, 8], (Kind::Int64, tch::Device::Cpu));
    vec![
        ModelInput::Batch(ids),
        ModelInput::Batch(ones),
        ModelInput::Batch(types),
    ]
}

fn general_job(task: u64, rows: usize, args: Vec<ModelInput>) -> Job {
    Job {
        task,
        rows,
        bytes: rows * 8 * 8 * 3,
        max_batch: 16,
        work: Work::General { args, method: None },
    }
}

fn first_tensor(v: &Value) -> &Tensor {
    match v {
        Value::Tensor(t) => t,
        Value::List(items) => first_tensor(&items[0]),
        Value::Dict(items) => first_tensor(&items[0].1),
        other => panic!("no tensor in {}", other.describe()),
    }
}

#[test]
fn merged_failure_fails_only_the_bad_job_and_engine_stays_usable() {
    let _serial = serial();
    let model = get_or_load(&ModelConfig {
        num_threads: Some(1),
        ..ModelConfig::new(text_fixtures().join("minilm.pt"))
    })
    .unwrap();
    let config = EngineConfig {
        debug_delay_ms: 150,
        ..shared(1, 1)
    };
    let engine = Engine::get(&model, &config, 1).unwrap();
    // The first job holds the worker; the next three queue and merge: good, bad, good.
    let mut blocker = engine
        .submit(general_job(1, 1, minilm_args(1, 0, false)))
        .unwrap();
    let good1 = engine
        .submit(general_job(2, 2, minilm_args(2, 1, false)))
        .unwrap();
    let mut bad = engine
        .submit(general_job(3, 2, minilm_args(2, 2, true)))
        .unwrap();
    let good2 = engine
        .submit(general_job(4, 1, minilm_args(1, 3, false)))
        .unwrap();
    wait(&mut blocker).unwrap();
    let err = wait(&mut bad).err().expect("the bad job must fail");
    let message = err.to_string();
    assert!(matches!(err, Error::Inference { .. }), "{message}");
    assert!(message.contains("minilm.pt"), "{message}");
    assert!(message.contains("index out of range"), "{message}");
    for (mut t, rows, seed) in [(good1, 2, 1), (good2, 1, 3)] {
        let (done, times) = wait(&mut t).unwrap();
        // Re-run alone after the merged pass failed: per-task's result, bitwise.
        assert_eq!(times.batch_jobs, 1);
        let Done::General(v) = done else { panic!() };
        let Done::General(r) = run_work(
            &model,
            Work::General {
                args: minilm_args(rows, seed, false),
                method: None,
            },
            rows,
            1,
        )
        .unwrap() else {
            panic!()
        };
        assert!(first_tensor(&v).equal(first_tensor(&r)), "job {seed}");
    }
    let stats = engine.stats();
    assert_eq!(
        (stats.merged_batches, stats.failed_jobs),
        (1, 1),
        "{stats:?}"
    );
    // Still usable; a result is given once.
    let mut after = engine
        .submit(general_job(5, 1, minilm_args(1, 4, false)))
        .unwrap();
    wait(&mut after).unwrap();
    assert!(after.wait(Duration::ZERO).unwrap().is_err());
}

#[test]
fn cancel_leaves_no_rows_queued() {
    let _serial = serial();
    let model = resnet();
    let config = EngineConfig {
        debug_delay_ms: 300,
        queue_rows: 64,
        ..shared(1, 1)
    };
    let engine = Engine::get(&model, &config, 1).unwrap();
    // Made first: the submits below all happen while the first pass sleeps.
    let mut jobs: Vec<Job> = (0..3).map(|i| image_job(7, 10 + i, 2, 2)).collect();
    jobs.push(image_job(8, 20, 2, 2));
    jobs.push(image_job(9, 30, 2, 2));
    let mut running = engine.submit(image_job(1, 1, 2, 2)).unwrap();
    // Let the worker take the first job: it is in flight when its task is cancelled.
    let started = Instant::now();
    while engine.stats().queued_jobs > 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut tickets: Vec<Ticket> = jobs.drain(..4).map(|j| engine.submit(j).unwrap()).collect();
    let mut other = tickets.pop().unwrap();
    let mut queued = tickets;
    let before = engine.stats();
    assert_eq!(
        (before.queued_jobs, before.queued_rows),
        (4, 8),
        "{before:?}"
    );
    assert_eq!(before.active_tasks, 3);
    // A ticket dropped unread (a discarded pending batch) takes its queued job with it.
    drop(engine.submit(jobs.remove(0)).unwrap());
    assert_eq!(engine.stats(), before);

    assert_eq!(engine.cancel(7), 3);
    let after = engine.stats();
    assert_eq!((after.queued_jobs, after.queued_rows), (1, 2), "{after:?}");
    assert_eq!(after.queued_bytes, 2 * ROW * 4);
    assert_eq!(after.active_tasks, 2);
    for t in &mut queued {
        let err = t
            .wait(Duration::ZERO)
            .expect("resolved at once")
            .err()
            .unwrap();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }
    // In flight: its result is dropped when the pass ends.
    assert_eq!(engine.cancel(1), 0);
    let err = wait(&mut running)
        .err()
        .expect("a cancelled job has no result");
    assert!(err.to_string().contains("cancelled: task 1"), "{err}");
    let values = image_values(wait(&mut other).unwrap().0);
    assert_eq!(values, alone(&model, 20, 2));
    let end = engine.stats();
    assert_eq!(
        (
            end.queued_jobs,
            end.queued_rows,
            end.queued_bytes,
            end.active_tasks
        ),
        (0, 0, 0, 0),
        "{end:?}"
    );
    assert_eq!(end.cancelled_jobs, 4);
    assert_eq!(end.rows, 4, "the cancelled jobs never ran");
}

#[test]
fn full_queue_times_out_with_a_clear_error() {
    let _serial = serial();
    let model = resnet();
    let config = EngineConfig {
        queue_rows: 2,
        debug_delay_ms: 400,
        timeout_ms: 100,
        ..shared(1, 1)
    };
    let engine = Engine::get(&model, &config, 1).unwrap();
    let mut first = engine.submit(image_job(1, 1, 2, 2)).unwrap();
    let mut second = engine.submit(image_job(2, 2, 2, 2)).unwrap();
    let started = Instant::now();
    let err = engine
        .submit(image_job(3, 3, 2, 2))
        .err()
        .expect("no space within 100 ms");
    let waited = started.elapsed();
    // Not later than the first pass's end either: then the queue would have had space.
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    let message = err.to_string();
    assert!(message.contains("engineTimeoutMs"), "{message}");
    assert!(
        message.contains("2 rows and 24576 bytes of 2 task(s) queued"),
        "{message}"
    );
    assert_eq!(engine.stats().timeouts, 1);
    // A ticket's wait is bounded too: not ready while the first pass still sleeps.
    assert!(second.wait(Duration::from_millis(10)).is_none());
    wait(&mut first).unwrap();
    wait(&mut second).unwrap();
    // Larger than the whole queue: admitted into the empty queue, no deadlock.
    let mut big = engine.submit(image_job(4, 4, 5, 8)).unwrap();
    assert_eq!(image_values(wait(&mut big).unwrap().0), alone(&model, 4, 5));
}

/// The engine's forward threads alive in this process.
fn forward_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("torchspark-forw"))
        .count()
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn engine_drops_its_workers() {
    let _serial = serial();
    let model = resnet();
    until("earlier tests' workers exit", || forward_threads() == 0);
    let model_refs = Arc::strong_count(&model);
    let config = shared(2, 2);
    let a = Engine::get(&model, &config, 1).unwrap();
    let b = Engine::get(&model, &config, 1).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "one engine per model and sizing");
    let c = Engine::get(&model, &shared(2, 1), 1).unwrap();
    assert!(!Arc::ptr_eq(&a, &c), "another sizing, another engine");
    // A thread names itself once it runs.
    until("three workers start", || forward_threads() == 3);
    let mut t = a.submit(image_job(1, 1, 1, 1)).unwrap();
    wait(&mut t).unwrap();
    let weak = Arc::downgrade(&a);
    drop((a, b, c));
    assert!(weak.upgrade().is_none());
    until("the workers exit when the last handle drops", || {
        forward_threads() == 0
    });
    until("the workers release the model", || {
        Arc::strong_count(&model) == model_refs
    });
    let d = Engine::get(&model, &config, 1).unwrap();
    until("two workers start", || forward_threads() == 2);
    let mut t = d.submit(image_job(1, 1, 1, 1)).unwrap();
    wait(&mut t).unwrap();
}

#[test]
fn per_task_mode_runs_on_the_callers_thread() {
    let _serial = serial();
    let model = resnet();
    let config = EngineConfig {
        mode: EngineMode::PerTask,
        ..EngineConfig::default()
    };
    let engine = Engine::get(&model, &config, 1).unwrap();
    assert_eq!(engine.stats().workers, 0);
    let mut t = engine.submit(image_job(1, 5, 3, 8)).unwrap();
    let (done, times) = t
        .wait(Duration::ZERO)
        .expect("ready when submit returns")
        .unwrap();
    assert_eq!(times.queued, Duration::ZERO);
    assert_eq!(image_values(done), alone(&model, 5, 3));
}
