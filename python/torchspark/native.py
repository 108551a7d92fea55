"""The Python-worker path: score Arrow batches in this process with the native library.

`NativeModel` is what `rdd.mapPartitions` and `DataFrame.mapInArrow` functions use inside
Spark's Python workers. Batches cross into Rust through the Arrow C Data Interface (no pickling,
no copy of the image bytes); the model is loaded once per process and shared by every handle, and
loaded again when its model or spec file changes.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import pyarrow as pa

from torchspark import _native
from torchspark.cluster import (
    _shipped,
    check_on_driver,
    is_remote,
    resolve_local,
    ship_model,
    spec_path,
)
from torchspark.errors import BY_CODE, ConfigError, InputError, ModelSpecError, TorchSparkError

# `engine`: "shared" queues every batch to the model's one engine in this process (its forward
# pass overlaps the caller reading the next batch); "per-task" runs it inline (docs/engine.md).
ENGINES = ("shared", "per-task")
# ts_submit's op codes (torchspark_core::Op::from_code).
_OPS = {"score": 0, "featurize": 1, "predict": 2}
# ts_collect blocks in slices this long, so that Python handles signals (a killed task) between.
_COLLECT_SLICE_MS = 100
# Task ids of this process's handles: the engine drops a handle's queued work by its id.
_tasks = itertools.count(1)
# The worker functions' one warning per partition with bad rows (a worker's stderr).
_log = logging.getLogger("torchspark")
# The conf that bounds the input bytes of one native call, as on the JVM (docs/engine.md).
MAX_BYTES_CONF = "spark.torchspark.maxBytesPerCall"
_DEFAULT_CALL_BYTES = 256 << 20
_MAX_CALL_BYTES = 1 << 30


def _default_threads() -> int:
    # Spark sets OMP_NUM_THREADS = spark.task.cpus in Python workers.
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def _raise(so: ctypes.CDLL, code: int, err: ctypes.c_void_p) -> None:
    raise BY_CODE.get(code, TorchSparkError)(_native.take_error(so, err))


def _check_engine(engine: Any, engine_timeout_ms: Any) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    _positive("engine_timeout_ms", engine_timeout_ms)


def _task_device(device: str) -> str:
    """`cuda` in a Spark task means the GPU Spark's resource scheduler gave the task
    (`TaskContext.resources()["gpu"]`), as the JVM does; other devices, and `cuda` outside a task
    or without a GPU resource, are left as they are (opening `cuda` fails fast without a GPU).
    Untested: this machine has no GPU (docs/engine.md)."""
    if device != "cuda":
        return device
    try:
        from pyspark import TaskContext
    except ImportError:  # not in Spark: keep the device as given
        return device
    ctx = TaskContext.get()
    gpu = ctx.resources().get("gpu") if ctx is not None else None
    if gpu is not None and gpu.addresses:
        return f"cuda:{gpu.addresses[0]}"
    return device


def _raise_open(so: ctypes.CDLL, code: int, err: ctypes.c_void_p) -> None:
    # Opening depends on the node (its files, GPU, libtorch): say which node, as the JVM does.
    raise BY_CODE.get(code, TorchSparkError)(
        f"{_native.take_error(so, err)} (on host {socket.gethostname()})"
    )


class Pending:
    """A batch submitted to a model's engine (`NativeModel.submit`). `result()` returns the
    record batch the synchronous call (`score`, `featurize`, `predict`) returns for it, once;
    `discard()` drops it. The native side is freed exactly once: by `result` (ready, failed or
    timed out), by `discard`, or when this object is garbage collected."""

    def __init__(self, model: NativeModel, ptr: int) -> None:
        # Keeps the object alive while the batch is in flight (the native batch holds its
        # model itself: a close does not free it).
        self._model = model
        self._so = model._so
        self._ptr = ptr
        self._lock = threading.Lock()

    def _take(self) -> int:
        with self._lock:
            ptr, self._ptr = self._ptr, 0
        return ptr

    def result(self, timeout: float | None = None) -> pa.RecordBatch:
        """The batch's result, waiting at most `timeout` seconds (None: the model's
        `engine_timeout_ms`). Raises the batch's error (InputError, InferenceError naming its
        rows, ...), TorchSparkError when no result came in time (the batch is then dropped),
        and ConfigError when the result was already taken or discarded."""
        ptr = self._take()
        if not ptr:
            raise ConfigError("this pending batch was already collected or discarded")
        if timeout is None:
            timeout = self._model.engine_timeout_ms / 1000
        so, deadline = self._so, time.monotonic() + timeout
        try:
            while True:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                out_a, out_s = _native.ArrowArray(), _native.ArrowSchema()
                ready, err = ctypes.c_int32(0), ctypes.c_void_p()
                code = so.ts_collect(
                    ptr,
                    min(_COLLECT_SLICE_MS, left_ms),
                    ctypes.byref(out_a),
                    ctypes.byref(out_s),
                    ctypes.byref(ready),
                    ctypes.byref(err),
                )
                if code or ready.value:
                    ptr = 0  # ts_collect freed it
                    if code:
                        _raise(so, code, err)
                    return pa.RecordBatch._import_from_c(
                        ctypes.addressof(out_a), ctypes.addressof(out_s)
                    )
                if left_ms == 0:
                    raise TorchSparkError(
                        f"no result for a submitted batch after {timeout:g} s; raise "
                        f"engine_timeout_ms (now {self._model.engine_timeout_ms}) if the "
                        f"engine is busy: {self._model.engine_stats()}"
                    )
        finally:
            if ptr:  # timed out or interrupted: nobody will collect it
                so.ts_discard(ptr)

    def discard(self) -> None:
        """Drops the batch (its forward pass may still run; its result is thrown away)."""
        ptr = self._take()
        if ptr:
            self._so.ts_discard(ptr)

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self.discard()


class NativeModel:
    """A TorchScript `.pt` or AOTInductor `.pt2` model (with its spec JSON beside it), scored
    natively.

    >>> m = NativeModel("model.pt")                     # doctest: +SKIP
    >>> m.score([open("cat.png", "rb").read()])          # doctest: +SKIP

    `engine="shared"` (the default) sends batches through the model's one engine in this
    process, whose forward passes run beside the caller (`submit`); `"per-task"` runs each
    call inline, as before the engine. Results are equal either way. `engine_timeout_ms` bounds
    every wait for the engine (queue space, a result). `num_threads` (default: this worker's
    OMP_NUM_THREADS, which Spark sets to spark.task.cpus) is also the engine's core budget.
    `device="cuda"` in a Spark task takes the GPU Spark assigned to the task.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        num_threads: int | None = None,
        precision: str = "fp32",
        engine: str = "shared",
        engine_timeout_ms: int = 600_000,
    ) -> None:
        _check_engine(engine, engine_timeout_ms)
        self.model_path = resolve_local(os.fspath(model_path))
        self.device = _task_device(device)
        self.num_threads = num_threads or _default_threads()
        self.precision = precision
        self.engine = engine
        self.engine_timeout_ms = engine_timeout_ms
        self.task = next(_tasks)
        # close() may race calls and __del__: the handle is taken out under this lock, and a
        # call that read it before gets the native "handle N is not open" error.
        self._close_lock = threading.Lock()
        self._so = _native.lib()
        config = json.dumps(
            {
                "model_path": self.model_path,
                "device": self.device,
                "num_threads": self.num_threads,
                "precision": precision,
                # A Python worker is one task: its thread budget is the engine's cores.
                "engine": {
                    "mode": engine,
                    "cores": self.num_threads,
                    "task_cpus": self.num_threads,
                    "timeout_ms": engine_timeout_ms,
                },
            }
        )
        handle, err = ctypes.c_uint64(0), ctypes.c_void_p()
        code = self._so.ts_open(config.encode(), ctypes.byref(handle), ctypes.byref(err))
        if code:
            _raise_open(self._so, code, err)
        self._handle = handle.value

    def close(self) -> None:
        """Drops this handle's queued batches and releases it; the model stays loaded for the
        process (until its file changes). Safe while other threads are in calls on this object:
        a call already running finishes (or, queued, fails "cancelled"), a later one raises
        ConfigError ("closed", "handle N is not open"). Idempotent."""
        lock = getattr(self, "_close_lock", None)
        if lock is None:  # __init__ failed before the handle existed
            return
        with lock:
            handle, self._handle = getattr(self, "_handle", 0), 0
        if handle:
            self._so.ts_cancel_task(handle, self.task)
            self._so.ts_close(handle)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self) -> int:
        """Drops this handle's batches still queued in the engine (their `Pending.result`
        fails); returns how many were dropped."""
        return int(self._so.ts_cancel_task(self._live(), self.task))

    def engine_stats(self) -> dict[str, Any]:
        """The engine's sizes and counters: mode, cores, workers, threads_per_worker,
        queued_jobs, queued_rows, queued_bytes, active_tasks, batches, rows, merged_batches,
        failed_jobs, cancelled_jobs, timeouts."""
        out, err = ctypes.c_void_p(), ctypes.c_void_p()
        code = self._so.ts_engine_stats(self._live(), ctypes.byref(out), ctypes.byref(err))
        if code:
            _raise(self._so, code, err)
        return json.loads(_native.take_error(self._so, out))

    def auto_batch_size(self) -> int:
        """The rows per forward pass `batch_size=0` ("auto") means for this model (chosen from
        its input size: docs/engine.md)."""
        return int(self._so.ts_auto_batch_size(self._live()))

    def _batch_size(self, batch_size: Any) -> int:
        return _non_negative("batch_size", batch_size) or self.auto_batch_size()

    def _live(self) -> int:
        handle = self._handle  # read once: close() may run on another thread
        if not handle:
            raise ConfigError("this NativeModel is closed")
        return handle

    def submit(
        self,
        batch: Any,
        op: str = "predict",
        *,
        top_k: int = 5,
        batch_size: int = 0,
        input_column: str | None = None,
        columns: Mapping[str, Sequence[str] | str] | None = None,
        row_offset: int = 0,
        max_pixels: int = 0,
        max_row_elements: int = 0,
        max_batch_bytes: int = 0,
        max_text_bytes: int = 0,
    ) -> Pending:
        """Prepares `batch` on this thread (read, decode, tokenize) and queues its forward
        passes; `Pending.result()` returns what `score`, `featurize` or `predict` (`op`) return.
        Raises at once what concerns the whole batch (a missing column, a bad option). `batch`
        is one batch: a Table whose columns do not fit one (over 2 GiB in a binary column)
        raises ConfigError; `score`, `featurize` and `predict` take it whole. The `max_*`
        limits: as for `predict`."""
        if op not in _OPS:
            raise ConfigError(f"op must be one of {', '.join(_OPS)}, not {op!r}")
        opts: dict[str, Any] = {
            "batch_size": self._batch_size(batch_size),
            "max_pixels": _non_negative("max_pixels", max_pixels),
            **_limits(max_row_elements, max_batch_bytes, max_text_bytes),
        }
        # Every op numbers its row errors from row_offset (a table's later batches go on counting).
        opts["row_offset"] = _non_negative("row_offset", row_offset)
        if op == "predict":
            if columns:
                opts["columns"] = _column_map(columns)
        else:
            opts["top_k"] = top_k if op == "score" else 1
            if input_column:
                opts["input_column"] = input_column
        rb, handle = as_record_batch(batch), self._live()
        in_a, in_s = _native.ArrowArray(), _native.ArrowSchema()
        rb._export_to_c(ctypes.addressof(in_a), ctypes.addressof(in_s))
        pending, err = ctypes.c_uint64(0), ctypes.c_void_p()
        code = self._so.ts_submit(
            handle,
            _OPS[op],
            json.dumps(opts).encode(),
            ctypes.byref(in_a),
            ctypes.byref(in_s),
            self.task,
            ctypes.byref(pending),
            ctypes.byref(err),
        )
        if code:
            _raise(self._so, code, err)
        return Pending(self, pending.value)

    @staticmethod
    def load_count() -> int:
        """Models loaded from disk by this process."""
        return int(_native.lib().ts_load_count())

    def score(
        self,
        batch: Any,
        top_k: int = 5,
        batch_size: int = 0,
        input_column: str | None = None,
        max_pixels: int = 0,
        max_batch_bytes: int = 0,
    ) -> pa.RecordBatch:
        """prediction, probability, predicted_label, top_k, error: one row per input row.

        `batch`: a RecordBatch, a Table, a ChunkedArray or Array of encoded images, a list of
        bytes, or a float array (N,C,H,W). A Table (or ChunkedArray) is scored batch by batch,
        every row of every chunk, without combining it past 256 MiB (so a table over 2 GiB
        works); the results come back as one RecordBatch. `max_pixels` (width x height) lowers
        the spec's `preprocess.max_pixels` for this call (0: the spec's); larger images are row
        errors, found from their headers. `batch_size` 0: `auto_batch_size()`.
        A `top_k` past the class count gives every class. `max_batch_bytes` lowers the bytes of
        one forward pass's input (0: the engine's 256 MiB; docs/limits.md)."""
        return self._call(
            "score", batch, top_k, batch_size, input_column, max_pixels, max_batch_bytes
        )

    def featurize(
        self,
        batch: Any,
        batch_size: int = 0,
        input_column: str | None = None,
        max_pixels: int = 0,
        max_batch_bytes: int = 0,
    ) -> pa.RecordBatch:
        """features (list<float32>) and error: one row per input row (`max_pixels`,
        `max_batch_bytes`: as score)."""
        return self._call(
            "featurize", batch, 1, batch_size, input_column, max_pixels, max_batch_bytes
        )

    def predict(
        self,
        batch: pa.RecordBatch | pa.Table,
        *,
        columns: Mapping[str, Sequence[str] | str] | None = None,
        batch_size: int = 0,
        row_offset: int = 0,
        max_pixels: int = 0,
        max_row_elements: int = 0,
        max_batch_bytes: int = 0,
        max_text_bytes: int = 0,
    ) -> pa.RecordBatch:
        """Runs any model through its spec's `inputs` and `outputs` (spec version 2, or a
        version-1 image spec): one column per declared output, in order, then `error`.

        The batch holds the inputs' columns (the spec's `column`s, or `columns` maps an input's
        name to other column(s)): numeric scalars, lists (nested or not), FixedSizeList,
        `arrow.fixed_shape_tensor`, Spark's vector struct, or encoded images. Output column
        types: see `output_schema()` (docs/models-python.md). A row that cannot be read or
        converted gets nulls and its reason in `error`, naming the row (`row_offset` + its
        position), the input, the column, and the expected and actual shapes; the other rows
        are still run. Raises InputError when a column is missing or of a type its input cannot
        read, InferenceError when the model's outputs do not match the declared ones.
        `batch_size` 0: `auto_batch_size()`.

        The limits (docs/limits.md; each 0: the spec's or the engine's, and a value only
        lowers it): `max_pixels` (width x height of an image), `max_row_elements` (values of
        one row of one input: a list's length, a sparse vector's size, an image at its own
        size), `max_text_bytes` (UTF-8 bytes of one text row): a row past one is a row error
        naming the row, input, column, the size and the limit; `max_batch_bytes` (one forward
        pass's input bytes, padding included): passes are cut before it."""
        kw = {
            "columns": columns,
            "batch_size": batch_size,
            "row_offset": row_offset,
            "max_pixels": max_pixels,
            **_limits(max_row_elements, max_batch_bytes, max_text_bytes),
        }
        return self._apply("predict", batch, kw)

    def output_schema(self) -> pa.Schema:
        """The schema `predict` returns (as `describe` of this model's spec)."""
        return describe(self.model_path)

    def _call(
        self, op, batch, top_k, batch_size, input_column, max_pixels=0, max_batch_bytes=0
    ) -> pa.RecordBatch:
        if not isinstance(max_pixels, int) or max_pixels < 0:
            raise ConfigError(f"max_pixels must be a non-negative int, not {max_pixels!r}")
        _non_negative("max_batch_bytes", max_batch_bytes)
        kw = {
            "top_k": top_k,
            "batch_size": batch_size,
            "input_column": input_column,
            "max_pixels": max_pixels,
            "max_batch_bytes": max_batch_bytes,
        }
        return self._apply(op, batch, kw)

    def _apply(self, op: str, batch: Any, kw: dict[str, Any]) -> pa.RecordBatch:
        """`op` over every row of `batch`: one call for one batch; a Table of several batches
        (or a ChunkedArray) batch by batch, in order, the next submitted before the previous
        is collected, and the results joined into one RecordBatch."""
        parts = _record_batches(batch)
        first = next(parts)
        second = next(parts, None)
        if second is None:
            return self._single(op, first, kw)
        return _joined(list(self._stream(op, itertools.chain([first, second], parts), kw)))

    def _stream(
        self, op: str, parts: Iterator[pa.RecordBatch], kw: dict[str, Any]
    ) -> Iterator[pa.RecordBatch]:
        offset = _non_negative("row_offset", kw.get("row_offset", 0))
        in_flight: Pending | None = None
        try:
            for rb in parts:
                args = {**kw, "row_offset": offset}
                offset += rb.num_rows
                if self.engine != "shared":
                    yield self._single(op, rb, args)
                    continue
                previous, in_flight = in_flight, self.submit(rb, op, **args)
                if previous is not None:
                    yield previous.result()
            if in_flight is not None:
                last, in_flight = in_flight, None
                yield last.result()
        finally:
            if in_flight is not None:
                in_flight.discard()

    def _single(self, op: str, rb: pa.RecordBatch, kw: dict[str, Any]) -> pa.RecordBatch:
        """`op` over one RecordBatch: through the engine, or inline (per-task)."""
        if self.engine == "shared":
            return self.submit(rb, op, **kw).result()
        opts: dict[str, Any] = {
            "batch_size": self._batch_size(kw.get("batch_size", 0)),
            "row_offset": _non_negative("row_offset", kw.get("row_offset", 0)),
            "max_pixels": _non_negative("max_pixels", kw.get("max_pixels", 0)),
        }
        # The per-call limits (docs/limits.md) travel as they came from `_limits`.
        for name in ("max_row_elements", "max_batch_bytes", "max_text_bytes"):
            if kw.get(name):
                opts[name] = _non_negative(name, kw[name])
        if op == "predict":
            if kw.get("columns"):
                opts["columns"] = _column_map(kw["columns"])
            fn = self._so.ts_predict
        else:
            opts["top_k"] = kw.get("top_k", 5) if op == "score" else 1
            if kw.get("input_column"):
                opts["input_column"] = kw["input_column"]
            fn = self._so.ts_score if op == "score" else self._so.ts_featurize
        return self._run(fn, rb, opts)

    def _run(self, fn, rb: pa.RecordBatch, opts: dict[str, Any]) -> pa.RecordBatch:
        handle = self._live()
        in_a, in_s = _native.ArrowArray(), _native.ArrowSchema()
        out_a, out_s = _native.ArrowArray(), _native.ArrowSchema()
        rb._export_to_c(ctypes.addressof(in_a), ctypes.addressof(in_s))
        err = ctypes.c_void_p()
        code = fn(
            handle,
            json.dumps(opts).encode(),
            ctypes.byref(in_a),
            ctypes.byref(in_s),
            ctypes.byref(out_a),
            ctypes.byref(out_s),
            ctypes.byref(err),
        )
        if code:
            _raise(self._so, code, err)
        return pa.RecordBatch._import_from_c(ctypes.addressof(out_a), ctypes.addressof(out_s))


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int, not {value!r}")
    return value


def _non_negative(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a non-negative int, not {value!r}")
    return value


def _limits(max_row_elements: Any, max_batch_bytes: Any, max_text_bytes: Any) -> dict[str, int]:
    """The per-call limits of docs/limits.md as batch options (each checked: an int >= 0)."""
    return {
        "max_row_elements": _non_negative("max_row_elements", max_row_elements),
        "max_batch_bytes": _non_negative("max_batch_bytes", max_batch_bytes),
        "max_text_bytes": _non_negative("max_text_bytes", max_text_bytes),
    }


def _column_map(columns: Mapping[str, Sequence[str] | str]) -> dict[str, list[str]]:
    """{input name: [column, ...]}; a single string is one column."""
    if not isinstance(columns, Mapping):
        raise ConfigError(f"columns must map input names to columns, not {columns!r}")
    out = {}
    for name, cols in columns.items():
        cols = [cols] if isinstance(cols, str) else list(cols)
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise ConfigError(f"columns[{name!r}]: expected a column name or a list of them")
        out[str(name)] = cols
    return out


def _spec_text(spec_or_model_path: str | os.PathLike) -> str:
    """The spec JSON of a spec file, or of the spec beside a model (`model.pt` -> `model.json`)."""
    path = os.fspath(spec_or_model_path)
    if not path.endswith(".json"):
        path = spec_path(path)
    if not os.path.isfile(path):
        # A spec shipped by name (`--files`, `ship_model`) in a worker or on the driver.
        path = _shipped(Path(path).name) or path
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ModelSpecError(f"cannot read the model spec {path}: {e.strerror or e}") from None


def describe(spec_or_model_path: str | os.PathLike) -> pa.Schema:
    """The schema `NativeModel.predict` returns for a spec, without loading the model.

    Takes the spec JSON's path or the model's (its spec beside it). One field per declared
    output, then `error` (Utf8); a `vector` output is List<Float64> with field metadata
    `torchspark.column: vector`. The schema metadata `torchspark.inputs` lists the inputs as
    JSON (`[{"name", "kind", "columns", "dtype", "shape"}]`). Raises ModelSpecError naming the
    field that is wrong."""
    so = _native.lib()
    out_s, err = _native.ArrowSchema(), ctypes.c_void_p()
    code = so.ts_describe(
        _spec_text(spec_or_model_path).encode(), ctypes.byref(out_s), ctypes.byref(err)
    )
    if code:
        _raise(so, code, err)
    return pa.Schema._import_from_c(ctypes.addressof(out_s))


# Batches of a Table are joined up to this size before a call (fewer, larger calls); a larger
# batch goes alone. The JVM's default bound on one call (spark.torchspark.maxBytesPerCall).
_JOIN_BYTES = 256 << 20
# Schema metadata of results that adds up over batches (the rest is kept from the first).
_SUMMED = (
    "torchspark.preprocess_ns",
    "torchspark.forward_ns",
    "torchspark.decode_ns",
    "torchspark.resize_ns",
    "torchspark.queue_ns",
    "torchspark.truncated_rows",
    "torchspark.batch_rows",
    "torchspark.batch_jobs",
)


def _record_batches(batch: Any) -> Iterator[pa.RecordBatch]:
    """The RecordBatches that hold every row of `batch`, in order (at least one): a Table's own
    batches, neighbours joined up to 256 MiB (never one combine over 2 GiB, which Arrow would
    leave in several chunks); a ChunkedArray's chunks as the column `content`; anything else
    through `as_record_batch`."""
    if isinstance(batch, pa.ChunkedArray):
        batch = pa.Table.from_arrays([batch], ["content"])
    elif isinstance(batch, Iterable) and not isinstance(batch, (pa.RecordBatch, pa.Table)):
        try:
            import numpy as np

            is_array = isinstance(batch, np.ndarray)
        except ImportError:  # pragma: no cover
            is_array = False
        if not is_array and not isinstance(batch, pa.Array):
            # pyarrow makes a ChunkedArray of binary values over 2 GiB.
            values = pa.array(list(batch), pa.binary())
            batch = pa.Table.from_arrays([values], ["content"])
    if not isinstance(batch, pa.Table):
        yield as_record_batch(batch)
        return
    parts = batch.to_batches()
    if not parts:
        yield pa.RecordBatch.from_pylist([], schema=batch.schema)
        return
    group: list[pa.RecordBatch] = []
    size = 0
    for rb in parts:
        if group and size + rb.nbytes > _JOIN_BYTES:
            yield _one_batch(group)
            group, size = [], 0
        group.append(rb)
        size += rb.nbytes
    yield _one_batch(group)


def _one_batch(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """Neighbouring batches of at most `_JOIN_BYTES` (or one larger batch) as one."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _joined(results: list[pa.RecordBatch]) -> pa.RecordBatch:
    """The results of a table's batches as one RecordBatch, their stage times summed."""
    meta: dict[bytes, bytes] = {}
    for rb in results:
        for k, v in (rb.schema.metadata or {}).items():
            if k.decode() in _SUMMED and k in meta:
                meta[k] = str(int(meta[k]) + int(v)).encode()
            else:
                meta.setdefault(k, v)
    table = pa.Table.from_batches([rb.replace_schema_metadata(None) for rb in results])
    joined = table.combine_chunks().to_batches()
    if len(joined) > 1:
        raise ConfigError(
            f"the results of these {table.num_rows} rows do not fit one RecordBatch "
            f"({table.nbytes} bytes, over Arrow's 2 GiB per column): pass table.to_batches() "
            "one at a time"
        )
    out = joined[0] if joined else results[0].replace_schema_metadata(None)
    return out.replace_schema_metadata(meta)


def as_record_batch(batch: Any) -> pa.RecordBatch:
    """A RecordBatch from a RecordBatch, a Table, an Array or list of bytes, or a float array
    (N,C,H,W). A Table whose columns do not fit one batch (a binary column over 2 GiB) raises
    ConfigError, never loses rows: `NativeModel.score`, `featurize` and `predict` take such a
    table whole, batch by batch."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        if not batch.num_rows:
            return pa.RecordBatch.from_pylist([], schema=batch.schema)
        parts = batch.to_batches()
        if len(parts) > 1 and batch.nbytes < 1 << 31:
            parts = batch.combine_chunks().to_batches()
        if len(parts) != 1:
            raise ConfigError(
                f"a table of {batch.num_rows} rows and {batch.nbytes} bytes does not fit one "
                "Arrow batch (a binary or string column holds at most 2 GiB): score, featurize "
                "and predict take it whole, batch by batch; submit takes one batch at a time "
                "(table.to_batches())"
            )
        return parts[0]
    if isinstance(batch, pa.ChunkedArray):
        return as_record_batch(pa.Table.from_arrays([batch], ["content"]))
    if isinstance(batch, pa.Array):
        return pa.RecordBatch.from_arrays([batch], ["content"])
    try:
        import numpy as np

        if isinstance(batch, np.ndarray):
            flat = np.ascontiguousarray(batch, dtype=np.float32).reshape(len(batch), -1)
            arr = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
            return pa.RecordBatch.from_arrays([arr], ["input"])
    except ImportError:  # pragma: no cover
        pass
    if isinstance(batch, Iterable):
        return as_record_batch(
            pa.Table.from_arrays([pa.array(list(batch), pa.binary())], ["content"])
        )
    raise ConfigError(f"cannot score a {type(batch).__name__}: pass a pyarrow.RecordBatch or bytes")


# ---- helpers for Spark's Python workers -----------------------------------------------------


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
    if is_remote(model_path):
        return ship_model(spark, model_path) if spark is not None else model_path
    check_on_driver(spark, model_path)
    return model_path


SCORE_SCHEMA = (
    "path string, prediction int, predicted_label string, probability array<float>, error string"
)


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
    (key, prediction, predicted_label, probability, error) out, in order.

    `model_path` is a local path, a shipped file's name, or a cluster-storage URI (shipped to
    the executors when this is called on the driver). `batch_size` 0: the model's auto size;
    `num_threads`, `engine`, `engine_timeout_ms`: as for NativeModel. A call takes at most
    `batch_size` rows and `spark.torchspark.maxBytesPerCall` bytes of content (256 MiB; a
    larger row goes alone). `handle_invalid`: `keep` (the default) keeps a bad row with its
    reason in `error`, `skip` drops it, `error` raises InputError. `fn.metrics()` on the driver
    gives the rows in, out, with errors and skipped (see RowCounts)."""
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    model_path = _for_workers(model_path)
    max_bytes = _max_bytes_per_call()
    counts = RowCounts()

    def run(rows: Iterator[Any]) -> Iterator[tuple]:
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
                for r, p, lab, prob, e in zip(
                    chunk, out["prediction"], out["predicted_label"], out["probability"], errors
                ):
                    if e is None or handle_invalid == "keep":
                        yield (r[key_col], p, lab, prob, e)
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

    `model_path` as for `score_partitions`; with the shared engine the next Arrow batch is read
    from Spark while the previous one runs its forward pass. `handle_invalid` and
    `fn.metrics()`: as for `score_partitions`."""
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    model_path = _for_workers(model_path)
    counts = RowCounts()

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
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
                        out.column("prediction"),
                        out.column("predicted_label"),
                        out.column("probability"),
                        out.column("error"),
                    ],
                    ["path", "prediction", "predicted_label", "probability", "error"],
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
    NativeModel. `max_pixels`, `max_row_elements`, `max_batch_bytes`, `max_text_bytes`: as for
    `NativeModel.predict` (docs/limits.md)."""
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    _non_negative("max_pixels", max_pixels)
    limits = _limits(max_row_elements, max_batch_bytes, max_text_bytes)
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
    `predict_arrow`."""
    _check_worker_options(handle_invalid, batch_size, engine, engine_timeout_ms)
    limits = _limits(0, max_batch_bytes, max_text_bytes)
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
    limits: Mapping[str, int] | None = None,
):
    """predict_arrow's `(fn, schema)`, the outputs named by `rename` (output -> column)."""
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
