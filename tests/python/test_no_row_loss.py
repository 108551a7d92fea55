"""No silent row loss (issue 25, item 4): NativeModel scores every row of a Table or
ChunkedArray, over 2 GiB too, batch by batch; the Python-worker functions add up rows in =
rows out + rows skipped, visibly (Spark accumulators read with `fn.metrics()`, one warning per
partition); `spark.torchspark.maxBytesPerCall` bounds score_partitions' calls as the JVM's.
Real local[2] SparkSession (conftest's), the real .so, the ResNet-20, diabetes and text
fixtures; PyTorch's numbers from expected.json / diabetes.json."""

from __future__ import annotations

import logging
import re

import pyarrow as pa
import pytest

import torchspark
from conftest import FIXTURES
from torchspark import (
    ConfigError,
    InputError,
    NativeModel,
    embed_arrow,
    predict_arrow,
    score_arrow,
    score_partitions,
)
from torchspark.native import as_record_batch
from torchspark.workers import _parse_bytes

WRONG_LENGTH = r"expected shape \[10\] \(10 values\), got 9 values"


@pytest.fixture(scope="module")
def pngs(fixtures) -> list[tuple[str, bytes]]:
    files = sorted((fixtures / "images").glob("*.png"))
    return [(f.name, f.read_bytes()) for f in files]


def _pytorch_class(expected, name: str) -> int:
    p = expected[name]["resnet20"]["probability"]
    return p.index(max(p))


@pytest.fixture(scope="module")
def mlp(general) -> str:
    return str(general / "diabetes_mlp.pt")


# ---- NativeModel: every chunk of a table ---------------------------------------------------


def _padded_table(pngs: list[bytes], size: int) -> pa.Table:
    """One row per PNG, each `size` bytes (the PNG, then the next ones and zeros: decoders stop
    at the PNG's end), one chunk each, all sharing one buffer: 3 rows of 800 MiB hold 2.4 GB
    of column data in 800 MiB of memory."""
    starts = [sum(len(p) for p in pngs[:i]) for i in range(len(pngs))]
    buf = bytearray(starts[-1] + size)
    for at, p in zip(starts, pngs):
        buf[at : at + len(p)] = p
    data = pa.py_buffer(buf)
    chunks = [
        pa.BinaryArray.from_buffers(
            pa.binary(), 1, [None, pa.array([at, at + size], pa.int32()).buffers()[1], data]
        )
        for at in starts
    ]
    return pa.table({"content": pa.chunked_array(chunks)})


@pytest.mark.parametrize("engine", ["shared", "per-task"])
def test_table_over_2gib_scores_every_row(model, pngs, expected, engine):
    # The audit's case: 3 rows of 800 MiB gave 2 rows back, no error (combine_chunks kept 2
    # chunks and only the first batch was scored).
    names = [n for n, _ in pngs[:3]]
    table = _padded_table([b for _, b in pngs[:3]], 800 << 20)
    assert table.nbytes > 2 << 30 and table.column(0).num_chunks == 3
    out = NativeModel(model, engine=engine).score(table).to_pydict()
    assert out["error"] == [None, None, None]
    assert out["prediction"] == [_pytorch_class(expected, n) for n in names]
    # submit takes one batch: such a table is refused, never cut short.
    with pytest.raises(ConfigError, match=r"does not fit one Arrow batch.*to_batches"):
        as_record_batch(table)


@pytest.mark.parametrize("engine", ["shared", "per-task"])
def test_every_chunk_is_scored_and_row_numbers_go_on(model, pngs, expected, engine):
    good = [b for _, b in pngs[:5]]
    m = NativeModel(model, engine=engine)
    whole = m.score(good).to_pydict()
    # Five chunks: [0, 1], [2, bad], [3], [4], and row 3 is not an image.
    chunked = pa.chunked_array(
        [[good[0], good[1]], [good[2], b"not an image"], [good[3]], [good[4]]], pa.binary()
    )
    for batch in (chunked, pa.table({"content": chunked})):
        out = m.score(batch).to_pydict()
        assert len(out["prediction"]) == 6
        assert out["prediction"][:3] + out["prediction"][4:] == whole["prediction"]
        assert out["prediction"][3] is None
        assert re.match(r"row 3: input `image` \(column content\): not a PNG", out["error"][3]), (
            out["error"][3]
        )
        feats = m.featurize(batch).to_pydict()
        assert len(feats["features"]) == 6 and feats["features"][3] is None


def test_predict_runs_every_batch_of_a_table(mlp, diabetes):
    xs = [[float(v) for v in x] for x in diabetes["X"][:50]]
    xs[31] = xs[31][:9]
    batches = [pa.record_batch({"features": xs[i : i + 7]}) for i in range(0, 50, 7)]
    table = pa.Table.from_batches(batches)
    assert len(table.to_batches()) == 8
    out = NativeModel(mlp).predict(table, row_offset=100).to_pydict()
    assert len(out["prediction"]) == 50
    for i, y in enumerate(out["prediction"]):
        if i == 31:
            assert y is None and re.search("row 131: .*" + WRONG_LENGTH, out["error"][i])
        else:
            assert abs(y - diabetes["pred"][i]) <= 1e-4, i


# ---- the worker functions: rows in = rows out + skipped ------------------------------------


@pytest.fixture(scope="module")
def patients(spark, diabetes):
    """200 rows in 3 partitions; 29 of them (every 7th) have 9 values instead of 10."""
    rows = []
    for i in range(200):
        x = [float(v) for v in diabetes["X"][i]]
        rows.append((i, x[:9] if i % 7 == 3 else x))
    assert sum(len(x) == 9 for _, x in rows) == 29
    return spark.createDataFrame(rows, "id int, features array<double>").repartition(3)


@pytest.mark.parametrize("mode", ["skip", "keep"])
def test_predict_arrow_counts_what_it_skipped(patients, mlp, diabetes, mode):
    fn, schema = predict_arrow(mlp, keep=["id"], input_schema=patients.schema, handle_invalid=mode)
    rows = patients.mapInArrow(fn, schema).collect()
    assert len(rows) == (171 if mode == "skip" else 200)
    skipped = 29 if mode == "skip" else 0
    assert fn.metrics() == {
        "rowsIn": 200,
        "rowsOut": 200 - skipped,
        "rowsWithErrors": 29,
        "rowsSkipped": skipped,
    }
    for r in rows:
        if r.prediction is not None:
            assert abs(r.prediction - diabetes["pred"][r.id]) <= 1e-4


def test_embed_arrow_counts_what_it_skipped(spark):
    df = spark.createDataFrame(
        [(i, None if i % 5 == 0 else f"sentence number {i}") for i in range(40)],
        "id int, text string",
    ).coalesce(1)
    ids = FIXTURES / "text" / "ids.pt"
    fn, schema = embed_arrow(
        ids, output_col="ids", keep=["id"], input_schema=df.schema, handle_invalid="skip"
    )
    rows = df.mapInArrow(fn, schema).collect()
    assert sorted(r.id for r in rows) == [i for i in range(40) if i % 5]
    assert fn.metrics() == {"rowsIn": 40, "rowsOut": 32, "rowsWithErrors": 8, "rowsSkipped": 8}


@pytest.fixture(scope="module")
def images(spark, pngs):
    """30 rows in 2 partitions: the PNGs, and every 6th row not an image."""
    rows = [
        (f"{i:02d}_{n}", b"broken" if i % 6 == 5 else b) for i, (n, b) in enumerate((pngs * 3)[:30])
    ]
    return spark.createDataFrame(rows, "path string, content binary").repartition(2)


@pytest.mark.parametrize("mode", ["keep", "skip"])
def test_score_arrow_and_score_partitions_count_bad_rows(images, model, mode):
    skipped = 5 if mode == "skip" else 0
    want = {"rowsIn": 30, "rowsOut": 30 - skipped, "rowsWithErrors": 5, "rowsSkipped": skipped}
    fn = score_arrow(model, handle_invalid=mode)
    out = images.select("path", "content").mapInArrow(fn, torchspark.SCORE_SCHEMA).collect()
    assert len(out) == 30 - skipped and fn.metrics() == want
    assert sum(r.error is not None for r in out) == 5 - skipped
    fn = score_partitions(model, handle_invalid=mode)
    out = images.rdd.mapPartitions(fn).collect()
    assert len(out) == 30 - skipped and fn.metrics() == want


def test_handle_invalid_error_raises_the_row_error(images, model):
    fn = score_arrow(model, handle_invalid="error")
    with pytest.raises(InputError, match=r"row \d+: input `image` \(column content\): not a PNG"):
        images.select("path", "content").mapInArrow(fn, torchspark.SCORE_SCHEMA).collect()
    with pytest.raises(ConfigError, match="handle_invalid"):
        score_partitions(model, handle_invalid="drop")


def test_one_warning_per_partition_names_the_count_and_first_reason(mlp, diabetes, caplog):
    # The worker function run in this process, on two batches of one partition.
    fn, _ = predict_arrow(mlp, handle_invalid="skip")
    x = [float(v) for v in diabetes["X"][0]]
    batches = [
        pa.record_batch({"features": [x, x[:9], x]}),
        pa.record_batch({"features": [x[:9], x]}),
    ]
    with caplog.at_level(logging.WARNING, logger="torchspark"):
        out = list(fn(iter(batches)))
    assert [b.num_rows for b in out] == [2, 1]
    warnings = [r.getMessage() for r in caplog.records if r.name == "torchspark"]
    assert len(warnings) == 1, warnings
    assert re.match(
        r"predict_arrow: partition \?: 2 of 5 rows could not be scored and were skipped "
        r"\(handle_invalid='skip'\); the first: row 1: .*" + WRONG_LENGTH,
        warnings[0],
    ), warnings[0]


# ---- the byte bound of one call ------------------------------------------------------------


def test_max_bytes_per_call_reads_spark_sizes():
    assert _parse_bytes(None) == 256 << 20
    assert _parse_bytes("64m") == 64 << 20
    assert _parse_bytes("1g") == 1 << 30
    assert _parse_bytes("4096") == 4096
    for bad in ("0", "2g", "lots"):
        with pytest.raises(ConfigError, match=f"spark.torchspark.maxBytesPerCall = `{bad}`"):
            _parse_bytes(bad)


def test_score_partitions_calls_are_bounded_by_bytes(spark, model, pngs, expected, monkeypatch):
    sizes: list[int] = []
    submit = NativeModel.submit

    def counted(self, batch, *args, **kwargs):
        sizes.append(len(batch))
        return submit(self, batch, *args, **kwargs)

    rows = [{"path": n, "content": b + bytes(10_000 - len(b))} for n, b in pngs[:10]]
    spark.conf.set("spark.torchspark.maxBytesPerCall", "32k")
    try:
        fn = score_partitions(model, batch_size=64)
    finally:
        spark.conf.unset("spark.torchspark.maxBytesPerCall")
    monkeypatch.setattr(NativeModel, "submit", counted)
    out = list(fn(iter(rows)))
    # 3 rows of 10,000 bytes fit 32 KiB: calls of 3, 3, 3 and 1 rows, every row scored.
    assert sizes == [3, 3, 3, 1]
    assert [p for _, p, *_ in out] == [_pytorch_class(expected, n) for n, _ in pngs[:10]]
    assert fn.metrics()["rowsIn"] == 10


def test_jvm_transformer_counts_rows_in_out_and_skipped(images, model):
    s = torchspark.ImageScorer(modelPath=model, inputCol="content", handleInvalid="skip")
    assert s.transform(images).count() == 25
    m = s.metrics()
    assert (m["rowsIn"], m["rowsOut"], m["rowsSkipped"], m["rowsWithErrors"]) == (30, 25, 5, 5)
