"""The Spark Python-worker functions: `score_partitions` (for `rdd.mapPartitions`),
`score_arrow`, `predict_arrow` and `embed_arrow` (for `df.mapInArrow`), and their row counters.

Built on the driver (where they ship a cluster-storage model and check a local one) and run in
Spark's Python workers, each loads its model once per worker process through `NativeModel`
(torchspark.native_model) and overlaps reading the next batch from Spark with the previous
one's forward pass (the shared engine).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from torchspark.cluster import check_on_driver, is_remote, ship_model
from torchspark.errors import ConfigError, InputError, TorchSparkError, require_extra
from torchspark.native_model import (
    NativeModel,
    Pending,
    _check_engine,
    _column_map,
    _flag,
    _limits,
    _non_negative,
    describe,
)

# The worker functions' one warning per partition with bad rows (a worker's stderr).
_log = logging.getLogger("torchspark")
# The level of torchspark's lines in Spark's Python workers (docs/logging.md).
LOG_LEVEL_ENV = "TORCHSPARK_LOG_LEVEL"


def worker_logging() -> None:
    """In a Spark Python worker: torchspark's lifecycle lines (library and model loads, the
    engine's configuration; never per batch) to stderr, which Spark copies into the executor's
    log, at $TORCHSPARK_LOG_LEVEL (default INFO). A process that configured `logging` itself
    (a handler on the root or `torchspark` logger) keeps its own set-up."""
    logger = logging.getLogger("torchspark")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%y/%m/%d %H:%M:%S")
    )
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    logger.setLevel(level if isinstance(logging.getLevelName(level), int) else logging.INFO)
    logger.addHandler(handler)


# The conf that bounds the input bytes of one native call, as on the JVM (docs/engine.md).
MAX_BYTES_CONF = "spark.torchspark.maxBytesPerCall"
_DEFAULT_CALL_BYTES = 256 << 20
_MAX_CALL_BYTES = 1 << 30


class RowCounts:
    """The rows a Python-worker function (`score_partitions`, `score_arrow`, `predict_arrow`,
    `embed_arrow`) read and wrote: `fn.metrics()` on the driver returns them as a dict,
    `rowsIn` = `rowsOut` + `rowsSkipped`, and `rowsWithErrors` (bad rows, whatever
    `handle_invalid` did with them), the names of the JVM transformers' `metrics()`.

    Built on the driver with a SparkContext active, the counts are Spark accumulators: they
    add up over every action that runs the function (a retried task's rows count again, as
    with any accumulator). Built without one (Spark Connect, or no session), they count only
    calls in this process, and `metrics()` raises until it ran here; the workers' logs still
    carry one warning per partition with bad rows."""

    NAMES = ("rowsIn", "rowsOut", "rowsWithErrors", "rowsSkipped")

    def __init__(self) -> None:
        self._local = dict.fromkeys(self.NAMES, 0)
        self._ran = False
        self._acc: dict[str, Any] | None = None
        try:
            from pyspark import SparkContext

            sc = SparkContext._active_spark_context
        except ImportError:  # pragma: no cover - no pyspark: counts stay in this process
            sc = None
        if sc is not None:
            self._acc = {n: sc.accumulator(0) for n in self.NAMES}

    def add(self, rows_in: int, rows_out: int, errors: int, skipped: int) -> None:
        self._ran = True
        for name, n in zip(self.NAMES, (rows_in, rows_out, errors, skipped)):
            self._local[name] += n
            if self._acc is not None and n:
                self._acc[name].add(n)

    def values(self) -> dict[str, int]:
        """{"rowsIn", "rowsOut", "rowsWithErrors", "rowsSkipped"}: read on the driver after an
        action."""
        if self._acc is not None:
            return {n: int(a.value) for n, a in self._acc.items()}
        if not self._ran:
            raise TorchSparkError(
                "no SparkContext was active when this function was built (Spark Connect, or no "
                "session), so its row counts stay in the Python workers: each logs one warning "
                "per partition with bad rows"
            )
        return dict(self._local)

    def partition(self, what: str, handle_invalid: str) -> _Tally:
        """The counter of one partition (in a worker)."""
        return _Tally(self, what, handle_invalid)


class _Tally:
    """One partition's rows: added to RowCounts batch by batch, one warning at its end."""

    def __init__(self, counts: RowCounts, what: str, handle_invalid: str) -> None:
        self.counts, self.what, self.mode = counts, what, handle_invalid
        self.rows = self.bad = 0
        self.first: str | None = None

    def add(self, rows: int, bad: int, first: str | None) -> None:
        """`rows` read, `bad` of them row errors (the first's reason `first`): raises it with
        handle_invalid="error", else counts them as skipped or kept."""
        if bad and self.mode == "error":
            raise InputError(first)
        skipped = bad if self.mode == "skip" else 0
        self.rows += rows
        self.bad += bad
        if self.first is None:
            self.first = first
        self.counts.add(rows, rows - skipped, bad, skipped)

    def handle(self, result: pa.RecordBatch, error: pa.Array) -> pa.RecordBatch:
        """`result` (one row per input row; `error` their reasons) as handle_invalid says."""
        bad = len(error) - error.null_count
        first = next((e for e in error.to_pylist() if e is not None), None) if bad else None
        self.add(result.num_rows, bad, first)
        if bad and self.mode == "skip":
            result = result.filter(error.is_null())
        return result

    def close(self) -> None:
        if self.bad and self.mode != "error":
            did = "skipped" if self.mode == "skip" else "kept with their reason in `error`"
            _log.warning(
                "%s: partition %s: %d of %d rows could not be scored and were %s "
                "(handle_invalid=%r); the first: %s",
                self.what,
                _partition_id(),
                self.bad,
                self.rows,
                did,
                self.mode,
                self.first,
            )


def _partition_id() -> Any:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return "?"
    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else "?"


def _parse_bytes(text: str | None) -> int:
    """`spark.torchspark.maxBytesPerCall` as Spark reads sizes (`256m`, `1g`, `65536`)."""
    if text is None or not str(text).strip():
        return _DEFAULT_CALL_BYTES
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)b?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{MAX_BYTES_CONF} = `{text}`: not a size (e.g. 64m, 256m, 1g)")
    n = int(m.group(1)) * 1024 ** " kmgtp".index(m.group(2) or " ")
    if not 1 <= n <= _MAX_CALL_BYTES:
        raise ConfigError(
            f"{MAX_BYTES_CONF} = `{text}` ({n} bytes): expected 1 byte to 1g ({_MAX_CALL_BYTES} "
            "bytes); Arrow holds at most 2 GiB per column"
        )
    return n


def _max_bytes_per_call() -> int:
    """The active session's bound on one call's input bytes (on the driver; else the default)."""
    try:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    except ImportError:  # pragma: no cover
        spark = None
    return _parse_bytes(spark.conf.get(MAX_BYTES_CONF, None) if spark is not None else None)


def _for_workers(model_path: str) -> str:
    """On the driver: a cluster-storage model is shipped to the executors (see ship_model), a
    local one is checked before any job (see check_on_driver), and torchspark errors raised in
    the workers come back to the action as their own classes (errors.install_py4j_handler)."""
    try:
        from pyspark.sql import SparkSession
        from pyspark.sql.utils import is_remote as connect

        spark = SparkSession.getActiveSession()
    except ImportError:  # pragma: no cover - no pyspark: NativeModel reports the path
        spark, connect = None, lambda: True
    if spark is not None and not connect():
        from torchspark.errors import install_py4j_handler

        install_py4j_handler()
    if model_path.startswith(("models:/", "runs:/")):
        # Resolved here, once for the job: the workers get the resolved version's local copy.
        from torchspark import mlflow as ts_mlflow

        model_path = ts_mlflow.resolve(model_path).model_path
    if is_remote(model_path):
        return ship_model(spark, model_path) if spark is not None else model_path
    check_on_driver(spark, model_path)
    return model_path


# What `score_arrow` yields (and `score_partitions`' tuples): the key column `path`, the `score`
# preset's outputs as `describe(spec, "score")` names and orders them, then `error`. A test
# checks it against describe and against the batches score_arrow yields.
SCORE_SCHEMA = (
    "path string, prediction double, predicted_label string, probability array<float>, "
    "top_k array<struct<index: int, label: string, probability: double>>, error string"
)

# SCORE_SCHEMA's order of the score preset's outputs: the first four columns keep the places
# they had before `top_k` was added (code that reads them by position keeps working); `error`
# stays last.
_SCORE_ORDER = {"prediction": 0, "predicted_label": 1, "probability": 2, "top_k": 3}


def _score_columns(model_path: str) -> list[str]:
    """The `score` preset's output names (`describe`) in SCORE_SCHEMA's order: a spec that has
    no `score` preset (spec version 2) raises ModelSpecError here, on the driver, before any
    job."""
    names = [f.name for f in describe(model_path, "score") if f.name != "error"]
    return sorted(names, key=lambda n: _SCORE_ORDER.get(n, len(_SCORE_ORDER)))


def _spark_score_column(name: str, column: pa.Array) -> pa.Array:
    """A score output as SCORE_SCHEMA holds it: `top_k`'s probability as float64 (Spark's
    double, as in ImageScorer's `top_k` column); the others as the native side gives them."""
    t = column.type
    if name != "top_k" or not pa.types.is_list(t):
        return column
    entry = t.value_type
    fields = [
        pa.field(f.name, pa.float64(), f.nullable) if f.name == "probability" else f for f in entry
    ]
    return column.cast(pa.list_(pa.struct(fields)))


def _in_order(
    model: NativeModel,
    items: Iterable[Any],
    op: str,
    options: Any,
) -> Iterator[tuple[Any, pa.RecordBatch]]:
    """(item, result) for each item (a batch to submit), in order. With the shared engine,
    item k+1 is read (from Spark's input) and submitted before item k's result is collected, so
    the reading overlaps item k's forward pass; per-task calls each one inline, as before.
    `options(item)` gives the call's batch and options. A failure or an early stop drops the
    batch still in flight and this task's queued work."""
    if model.engine == "per-task":
        for item in items:
            batch, opts = options(item)
            yield item, model._apply(op, batch, opts)
        return
    in_flight: tuple[Any, Pending] | None = None
    try:
        for item in items:
            batch, opts = options(item)
            current = (item, model.submit(batch, op, **opts))
            previous, in_flight = in_flight, current
            if previous is not None:
                yield previous[0], previous[1].result()
        if in_flight is not None:
            last, in_flight = in_flight, None
            yield last[0], last[1].result()
    finally:
        if in_flight is not None:
            in_flight[1].discard()
            model.cancel()


HANDLE_INVALID = ("error", "skip", "keep")


def score_partitions(
    model_path: str,
    content_col: str = "content",
    key_col: str = "path",
    batch_size: int = 0,
    device: str = "cpu",
    num_threads: int | None = None,
    engine: str = "shared",
    engine_timeout_ms: int = 600_000,
    handle_invalid: str = "keep",
):
    """A function for `rdd.mapPartitions`: Rows with `key_col` and `content_col` in, tuples
    (key, prediction, predicted_label, probability, top_k, error) out, in order: SCORE_SCHEMA's
    columns (`rdd.mapPartitions(fn).toDF(SCORE_SCHEMA)`; `prediction` a float, the class index;
    `top_k` a list of dicts {index, label, probability}).

    `model_path` is a local path, a shipped file's name, or a cluster-storage URI (shipped to
    the executors when this is called on the driver). `batch_size` 0: the model's auto size;
    `num_threads`, `engine`, `engine_timeout_ms`: as for NativeModel. A call takes at most
    `batch_size` rows and `spark.torchspark.maxBytesPerCall` bytes of content (256 MiB; a
    larger row goes alone). `handle_invalid`: `keep` (the default) keeps a bad row with its
    reason in `error`, `skip` drops it, `error` raises InputError. `fn.metrics()` on the driver
    gives the rows in, out, with errors and skipped (see RowCounts)."""
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    model_path = _for_workers(model_path)
    names = _score_columns(model_path)
    max_bytes = _max_bytes_per_call()
    counts = RowCounts()

    def run(rows: Iterator[Any]) -> Iterator[tuple]:
        worker_logging()
        model = NativeModel(
            model_path,
            device=device,
            num_threads=num_threads,
            engine=engine,
            engine_timeout_ms=engine_timeout_ms,
        )
        size = model._batch_size(batch_size)

        def chunks() -> Iterator[list[Any]]:
            chunk: list[Any] = []
            nbytes = 0
            for row in rows:
                value = row[content_col]
                weight = len(value) if value is not None else 0
                if chunk and (len(chunk) == size or nbytes + weight > max_bytes):
                    yield chunk
                    chunk, nbytes = [], 0
                chunk.append(row)
                nbytes += weight
            if chunk:
                yield chunk

        offset = 0  # rows are numbered by their position in the partition, as the JVM does

        def options(chunk: list[Any]) -> tuple[Any, dict[str, Any]]:
            nonlocal offset
            opts = {"batch_size": size, "row_offset": offset}
            offset += len(chunk)
            return [r[content_col] for r in chunk], opts

        tally = counts.partition("score_partitions", handle_invalid)
        try:
            for chunk, result in _in_order(model, chunks(), "score", options):
                out = result.to_pydict()
                errors = out["error"]
                bad = sum(e is not None for e in errors)
                tally.add(len(chunk), bad, next((e for e in errors if e is not None), None))
                for r, *values, e in zip(chunk, *(out[n] for n in names), errors):
                    if e is None or handle_invalid == "keep":
                        yield (r[key_col], *values, e)
        finally:
            tally.close()

    run.metrics = counts.values
    return run


def score_arrow(
    model_path: str,
    content_col: str = "content",
    key_col: str = "path",
    batch_size: int = 0,
    device: str = "cpu",
    num_threads: int | None = None,
    engine: str = "shared",
    engine_timeout_ms: int = 600_000,
    handle_invalid: str = "keep",
):
    """A function for `df.mapInArrow(f, SCORE_SCHEMA)`: Arrow batches straight to native code.

    Yields `path` (the `key_col` column), the `score` preset's outputs (`describe(spec,
    "score")`: prediction double, predicted_label, probability array<float>, top_k) and
    `error`. `model_path` as for `score_partitions`; with the shared engine the next Arrow
    batch is read from Spark while the previous one runs its forward pass. `handle_invalid`
    and `fn.metrics()`: as for `score_partitions`."""
    require_extra("pandas", "pandas", "df.mapInArrow (score_arrow)")
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    model_path = _for_workers(model_path)
    names = _score_columns(model_path)
    counts = RowCounts()

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker_logging()
        model = NativeModel(
            model_path,
            device=device,
            num_threads=num_threads,
            engine=engine,
            engine_timeout_ms=engine_timeout_ms,
        )
        size = model._batch_size(batch_size)
        offset = 0

        def options(b: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, Any]]:
            nonlocal offset
            opts = {"batch_size": size, "input_column": content_col, "row_offset": offset}
            offset += b.num_rows
            return b, opts

        tally = counts.partition("score_arrow", handle_invalid)
        try:
            for b, out in _in_order(model, batches, "score", options):
                result = pa.RecordBatch.from_arrays(
                    [
                        b.column(key_col),
                        *(_spark_score_column(n, out.column(n)) for n in names),
                        out.column("error"),
                    ],
                    ["path", *names, "error"],
                )
                yield tally.handle(result, result.column("error"))
        finally:
            tally.close()

    run.metrics = counts.values
    return run


def spark_type(t: pa.DataType):
    """The Spark SQL type that mapInArrow reads an Arrow output column of type `t` as (a
    `vector` output, List<Float64>, is array<double> here; the JVM's TorchModel makes it an ML
    Vector)."""
    from pyspark.sql import types as T

    simple = {
        pa.float64(): T.DoubleType(),
        pa.float32(): T.FloatType(),
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.int16(): T.ShortType(),
        pa.int8(): T.ByteType(),
        pa.bool_(): T.BooleanType(),
        pa.string(): T.StringType(),
        pa.large_string(): T.StringType(),
        pa.binary(): T.BinaryType(),
        pa.large_binary(): T.BinaryType(),
    }
    if t in simple:
        return simple[t]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return T.ArrayType(spark_type(t.value_type), containsNull=True)
    if pa.types.is_struct(t):
        return T.StructType(
            [
                T.StructField(t.field(i).name, spark_type(t.field(i).type))
                for i in range(t.num_fields)
            ]
        )
    raise ConfigError(f"no Spark type for the Arrow type {t}")


def predict_arrow(
    model_path: str | os.PathLike,
    *,
    keep: Sequence[str] = (),
    input_schema: Any = None,
    columns: Mapping[str, Sequence[str] | str] | None = None,
    batch_size: int = 0,
    num_threads: int | None = None,
    handle_invalid: str = "error",
    device: str = "cpu",
    precision: str = "fp32",
    max_pixels: int = 0,
    engine: str = "shared",
    engine_timeout_ms: int = 600_000,
    max_row_elements: int = 0,
    max_batch_bytes: int = 0,
    max_text_bytes: int = 0,
    sort_by_length: bool = True,
):
    """`(fn, schema)` for `df.mapInArrow(fn, schema)`: any model (spec version 2, or an image
    spec) in Spark's Python workers, its output schema derived from the spec.

    >>> fn, schema = predict_arrow("mlp.pt", keep=["id"], input_schema=df.schema)  # doctest: +SKIP
    >>> df.mapInArrow(fn, schema)                                                  # doctest: +SKIP

    The schema: the `keep` columns (their types from `input_schema`, e.g. `df.schema`), one
    column per declared output (`describe`; a `vector` output is array<double>), and `error`
    (string) when `handle_invalid="keep"`. `handle_invalid`: `error` fails the task with the
    first bad row's reason (InputError naming the row in its partition, the input, the column
    and the shapes), `skip` drops bad rows, `keep` keeps them with null outputs and the reason.
    `fn.metrics()` on the driver (after an action) counts rows in, out, with errors and skipped
    (RowCounts), and each partition with bad rows logs one warning.
    `columns` maps input names to other columns than the spec's. `model_path` as for
    `score_partitions`; the model is loaded once per Python worker process. `batch_size` 0: the
    model's auto size. `engine` ("shared": the next Arrow batch is read from Spark while the
    previous one runs its forward pass; "per-task": inline) and `engine_timeout_ms`: as for
    NativeModel. `max_pixels`, `max_row_elements`, `max_batch_bytes`, `max_text_bytes` and
    `sort_by_length`: as for `NativeModel.predict` (docs/limits.md)."""
    require_extra("pandas", "pandas", "df.mapInArrow (predict_arrow)")
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    _non_negative("max_pixels", max_pixels)
    limits = _limits(max_row_elements, max_batch_bytes, max_text_bytes)
    if not _flag("sort_by_length", sort_by_length):
        limits["sort_by_length"] = False
    column_map = _column_map(columns) if columns else None
    model_path = _for_workers(os.fspath(model_path))
    return _map_in_arrow(
        model_path,
        describe(model_path),
        keep=keep,
        input_schema=input_schema,
        column_map=column_map,
        rename={},
        batch_size=batch_size,
        num_threads=num_threads,
        handle_invalid=handle_invalid,
        device=device,
        precision=precision,
        max_pixels=max_pixels,
        limits=limits,
        engine=engine,
        engine_timeout_ms=engine_timeout_ms,
    )


def embed_arrow(
    model_path: str | os.PathLike,
    *,
    input_col: str = "text",
    output_col: str = "embedding",
    keep: Sequence[str] = (),
    input_schema: Any = None,
    batch_size: int = 0,
    num_threads: int | None = None,
    handle_invalid: str = "error",
    device: str = "cpu",
    precision: str = "fp32",
    engine: str = "shared",
    engine_timeout_ms: int = 600_000,
    max_text_bytes: int = 0,
    max_batch_bytes: int = 0,
    sort_by_length: bool = True,
):
    """`(fn, schema)` for `df.mapInArrow(fn, schema)`: a text model (a spec with one `text`
    input, e.g. from `export_text_model`) embeds the string column `input_col` in Spark's
    Python workers, tokenized natively with the spec's tokenizer.

    >>> fn, schema = embed_arrow("minilm.pt", keep=["id"], input_schema=df.schema)  # doctest: +SKIP
    >>> df.mapInArrow(fn, schema)                                                   # doctest: +SKIP

    The schema: the `keep` columns, `output_col` (the spec's one output, e.g. 384 floats of
    all-MiniLM-L6-v2 as array<double>; `pyspark.ml.functions.array_to_vector` makes it an ML
    Vector), and `error` (string) when `handle_invalid="keep"`. `input_col`: string or binary
    (UTF-8). A null or non-UTF-8 row is a row error (handled as in `predict_arrow`: `error`
    raises InputError naming the row in its partition, the input and the column); empty text
    embeds as `[CLS] [SEP]`; text over the spec's `max_length` tokens is truncated. Raises
    ConfigError when the spec has no text input or more than one output. `batch_size`,
    `engine`, `engine_timeout_ms` and `fn.metrics()`: as for `predict_arrow`. A row over
    `max_text_bytes` (0: the spec's, default 1 MiB) is a row error; `max_batch_bytes`: as for
    `predict_arrow`. `sort_by_length` (default True) runs the rows of each Arrow batch longest
    first, so each forward pass pads little (results stay in input order); False keeps their
    order."""
    require_extra("pandas", "pandas", "df.mapInArrow (embed_arrow)")
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    limits = _limits(0, max_batch_bytes, max_text_bytes)
    if not _flag("sort_by_length", sort_by_length):
        limits["sort_by_length"] = False
    if not isinstance(input_col, str) or not input_col:
        raise ConfigError(f"input_col must be a column name, not {input_col!r}")
    if not isinstance(output_col, str) or not output_col:
        raise ConfigError(f"output_col must be a column name, not {output_col!r}")
    path = _for_workers(os.fspath(model_path))
    described = describe(path)
    inputs = json.loads((described.metadata or {}).get(b"torchspark.inputs", b"[]"))
    text = [i["name"] for i in inputs if i.get("kind") == "text"]
    outputs = [f.name for f in described if f.name != "error"]
    if len(text) != 1 or len(outputs) != 1:
        raise ConfigError(
            f"{os.fspath(model_path)}: embed_arrow needs a spec with one `text` input and one "
            f"output, this one has {len(text)} text input(s) and outputs "
            f"{', '.join(outputs) or 'none'} (predict_arrow runs any spec)"
        )
    return _map_in_arrow(
        path,
        described,
        keep=keep,
        input_schema=input_schema,
        column_map={text[0]: [input_col]},
        rename={outputs[0]: output_col},
        batch_size=batch_size,
        num_threads=num_threads,
        handle_invalid=handle_invalid,
        device=device,
        precision=precision,
        max_pixels=0,
        limits=limits,
        engine=engine,
        engine_timeout_ms=engine_timeout_ms,
    )


def _check_worker_options(
    handle_invalid: str, batch_size: int, engine: str, engine_timeout_ms: int
) -> None:
    if handle_invalid not in HANDLE_INVALID:
        raise ConfigError(
            f"handle_invalid must be one of {', '.join(HANDLE_INVALID)}, not {handle_invalid!r}"
        )
    _non_negative("batch_size", batch_size)
    _check_engine(engine, engine_timeout_ms)


def _map_in_arrow(
    model_path: str,
    described: pa.Schema,
    *,
    keep: Sequence[str],
    input_schema: Any,
    column_map: dict[str, list[str]] | None,
    rename: Mapping[str, str],
    batch_size: int,
    num_threads: int | None,
    handle_invalid: str,
    device: str,
    precision: str,
    max_pixels: int,
    engine: str,
    engine_timeout_ms: int,
    limits: Mapping[str, Any] | None = None,
):
    """predict_arrow's `(fn, schema)`, the outputs named by `rename` (output -> column);
    `limits`: the batch options of `_limits` (and `sort_by_length` when off)."""
    keep = [keep] if isinstance(keep, str) else list(keep)
    outputs = [f for f in described if f.name != "error"]
    from pyspark.sql import types as T

    kept: list[Any] = []
    if keep:
        if input_schema is None:
            raise ConfigError("keep needs input_schema (the DataFrame's schema: df.schema)")
        by_name = {f.name: f for f in input_schema.fields}
        for k in keep:
            if k not in by_name:
                raise ConfigError(
                    f"keep: no column `{k}` in the input (it has {', '.join(by_name)})"
                )
            kept.append(by_name[k])
    out_names = [rename.get(f.name, f.name) for f in outputs]
    names = [*keep, *out_names] + (["error"] if handle_invalid == "keep" else [])
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"keep: {', '.join(dup)} would also be an output column's name")
    schema = T.StructType(
        kept
        + [T.StructField(n, spark_type(f.type)) for n, f in zip(out_names, outputs)]
        + ([T.StructField("error", T.StringType())] if handle_invalid == "keep" else [])
    )
    n_out = len(outputs)
    counts = RowCounts()
    what = "embed_arrow" if rename else "predict_arrow"

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker_logging()
        model = NativeModel(
            model_path,
            device=device,
            num_threads=num_threads,
            precision=precision,
            engine=engine,
            engine_timeout_ms=engine_timeout_ms,
        )
        size = model._batch_size(batch_size)
        offset = 0  # rows are numbered by their position in the partition, as the JVM does

        def options(b: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, Any]]:
            nonlocal offset
            opts = {
                "columns": column_map,
                "batch_size": size,
                "row_offset": offset,
                "max_pixels": max_pixels,
                **(limits or {}),
            }
            offset += b.num_rows
            return b, opts

        tally = counts.partition(what, handle_invalid)
        try:
            for b, out in _in_order(model, batches, "predict", options):
                error = out.column(n_out)
                arrays = [b.column(k) for k in keep] + [out.column(i) for i in range(n_out)]
                if handle_invalid == "keep":
                    arrays.append(error)
                yield tally.handle(pa.RecordBatch.from_arrays(arrays, names=names), error)
        finally:
            tally.close()

    run.metrics = counts.values
    return run, schema
