"""The shared engine from Python: NativeModel.submit / Pending, the pipelined worker functions
(batch k+1 submitted before batch k is collected) against per-task's inline calls, no rows left
behind by discarded, dropped or failed batches, and the engine's sizes (docs/engine.md)."""

from __future__ import annotations

import gc
import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import FIXTURES
from torchspark import ConfigError, InputError, NativeModel
from torchspark.native import predict_arrow, score_arrow, score_partitions


@pytest.fixture(scope="module")
def images(fixtures) -> pa.RecordBatch:
    """Fourteen fixture images as path + content (small: the machine is shared)."""
    files = sorted((fixtures / "images").iterdir())[::3]
    return pa.RecordBatch.from_pydict(
        {"path": [f.name for f in files], "content": [f.read_bytes() for f in files]}
    )


def _slices(batch: pa.RecordBatch, rows: int) -> list[pa.RecordBatch]:
    return [batch.slice(i, rows) for i in range(0, batch.num_rows, rows)]


def _no_rows_left(model: NativeModel) -> None:
    stats = model.engine_stats()
    assert (stats["queued_jobs"], stats["queued_rows"], stats["queued_bytes"]) == (0, 0, 0), stats


def test_pipelined_score_arrow_equals_sequential(model, images):
    batches = _slices(images, 5)  # uneven: the last batch is short
    assert len(batches) >= 3
    out = {}
    for engine in ("shared", "per-task"):
        fn = score_arrow(model, batch_size=3, num_threads=1, engine=engine)
        out[engine] = pa.Table.from_batches(list(fn(iter(batches)))).to_pydict()
    # The engine may join a short job with the next one: equal within 1e-6 (bitwise for the
    # same batch composition), the same predictions.
    shared, per_task = out["shared"], out["per-task"]
    assert list(shared) == [
        "path",
        "prediction",
        "predicted_label",
        "probability",
        "top_k",
        "error",
    ]
    for k in ("path", "prediction", "predicted_label", "error"):
        assert shared[k] == per_task[k]
    np.testing.assert_allclose(shared["probability"], per_task["probability"], rtol=1e-6, atol=1e-7)
    assert [[t["index"] for t in r] for r in shared["top_k"]] == [
        [t["index"] for t in r] for r in per_task["top_k"]
    ]
    assert out["shared"]["path"] == images.column("path").to_pylist()
    assert sum(e is None for e in out["shared"]["error"]) == images.num_rows

    # score_partitions (rows, in chunks of batch_size) through the pipeline: other batches, so
    # equal within oneDNN's batch-shape noise.
    rows = [dict(zip(images.schema.names, r)) for r in zip(*images.to_pydict().values())]
    tuples = list(score_partitions(model, batch_size=6, num_threads=1)(iter(rows)))
    # The same columns as score_arrow's (SCORE_SCHEMA's), in its order.
    assert {len(t) for t in tuples} == {len(shared)}
    got = {k: [t[i] for t in tuples] for i, k in enumerate(shared)}
    for k in ("path", "prediction", "predicted_label", "error"):
        assert got[k] == shared[k], k
    np.testing.assert_allclose(got["probability"], shared["probability"], atol=1e-5)
    assert [[t["index"] for t in r] for r in got["top_k"]] == [
        [t["index"] for t in r] for r in shared["top_k"]
    ]


def test_submit_collect_discard_never_leak(model, images):
    m = NativeModel(model, num_threads=1)
    expected = m.score(images, batch_size=4, input_column="content").to_pydict()
    pendings = [
        m.submit(b, "score", batch_size=4, input_column="content") for b in _slices(images, 2) * 3
    ]
    for i, p in enumerate(pendings):
        if i % 3 == 1:
            p.discard()
            p.discard()  # a second discard is a no-op, not a double free
            with pytest.raises(ConfigError, match="already collected or discarded"):
                p.result()
    for i, p in enumerate(pendings):
        if i % 3 == 0:
            got = p.result().to_pydict()
            first = (i % len(_slices(images, 2))) * 2
            assert got["prediction"] == expected["prediction"][first : first + 2]
            with pytest.raises(ConfigError, match="already collected"):
                p.result()
    del pendings, p  # the third never collected: freed by the garbage collector
    gc.collect()
    _no_rows_left(m)

    # A consumer that stops early, and a partition whose second batch fails: the batch in
    # flight is dropped, nothing stays queued, and the engine keeps serving.
    run = score_arrow(model, batch_size=2, num_threads=1)(iter(_slices(images, 3)))
    next(run)
    run.close()
    bad = pa.RecordBatch.from_pydict({"features": [[0.5] * 10, [0.5] * 9, [0.5] * 10]})
    diabetes = str(FIXTURES / "general" / "diabetes_mlp.pt")
    mlp = NativeModel(diabetes, num_threads=1)  # the worker's engine: same model and sizes
    fn, _ = predict_arrow(diabetes, handle_invalid="error", num_threads=1)
    with pytest.raises(InputError, match=r"row 3: input `features`.*10.*9"):
        list(fn(iter([bad.slice(0, 1), bad.slice(0, 1), bad, bad])))
    _no_rows_left(mlp)
    assert m.score(images, batch_size=4, input_column="content").to_pydict() == expected
    _no_rows_left(m)
    m.close()
    with pytest.raises(ConfigError, match="closed"):
        m.submit(images, "score")


def test_batch_size_zero_means_auto(model, images):
    m = NativeModel(model, num_threads=1)
    auto = m.auto_batch_size()
    assert auto >= 1
    assert (
        m.score(images, batch_size=0, input_column="content").to_pydict()
        == m.score(images, batch_size=auto, input_column="content").to_pydict()
    )
    with pytest.raises(ConfigError, match="batch_size must be a non-negative int"):
        m.score(images, batch_size=-1, input_column="content")
    with pytest.raises(ConfigError, match="engine must be one of shared, per-task"):
        NativeModel(model, engine="pooled")


def test_engine_stats_and_auto_batch_size(model, general):
    # The rule (docs/engine.md): 256 rows for a 32x32 image model, 8192 for a small tabular
    # MLP, 64 for text.
    shared = NativeModel(model, num_threads=2)
    assert shared.auto_batch_size() == 256
    assert NativeModel(general / "diabetes_mlp.pt").auto_batch_size() == 8192
    assert NativeModel(FIXTURES / "text" / "ids.pt").auto_batch_size() == 64
    stats = shared.engine_stats()
    assert stats["mode"] == "shared" and stats["cores"] == 2, stats
    assert stats["workers"] >= 1
    assert stats["workers"] * stats["threads_per_worker"] <= stats["cores"], stats
    before = stats["rows"]
    shared.score([(FIXTURES / "images" / "digit_00_label0.png").read_bytes()])
    assert shared.engine_stats()["rows"] == before + 1
    assert NativeModel(model, num_threads=1, engine="per-task").engine_stats()["mode"] == "per-task"


def test_predict_arrow_over_spark_shared_equals_per_task(spark, general, diabetes):
    from pyspark.sql import functions as F

    rows = [(i, [float(v) for v in x]) for i, x in enumerate(diabetes["X"])]
    # One partition (one Python worker to start), several Arrow batches in it, so that the
    # pipeline has a batch in flight.
    df = spark.createDataFrame(rows, "id int, features array<double>").coalesce(1)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")
    try:
        out = {}
        for engine in ("shared", "per-task"):
            fn, schema = predict_arrow(
                general / "diabetes_mlp.pt",
                keep=["id"],
                input_schema=df.schema,
                batch_size=16,
                num_threads=1,
                engine=engine,
            )
            got = df.mapInArrow(fn, schema).orderBy(F.col("id")).collect()
            out[engine] = [(r.id, r.prediction) for r in got]
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    # Equal within 1e-6: the engine may join a partition's short chunk with its next one.
    assert (
        [i for i, _ in out["shared"]] == [i for i, _ in out["per-task"]] == list(range(len(rows)))
    )
    np.testing.assert_allclose(
        [p for _, p in out["shared"]], [p for _, p in out["per-task"]], rtol=1e-6
    )
    np.testing.assert_allclose([p for _, p in out["shared"]], diabetes["pred"], atol=1e-4)
    assert json.dumps(out["shared"])  # plain numbers, no NaN from a lost batch
