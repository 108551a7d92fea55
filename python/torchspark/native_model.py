"""The in-process model API: a model scored in this process with the native library.

`NativeModel` (score, featurize, predict, submit), `Pending` (a submitted batch), `describe` (a
spec's output schema, no model loaded) and `as_record_batch`. Batches cross into Rust through the
Arrow C Data Interface (no pickling, no copy of the image bytes); the model is loaded once per
process and shared by every handle, and loaded again when its model or spec file changes. Every
call goes through the native submit/collect pair: `engine="per-task"` runs the forward pass
inline inside submit. The Spark Python-worker functions built on it live in
`torchspark.workers`.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from torchspark import _native
from torchspark.cluster import _shipped, resolve_local, spec_path
from torchspark.errors import BY_CODE, ConfigError, ModelSpecError, TorchSparkError

if TYPE_CHECKING:  # annotations only (never evaluated): typing.Self needs Python 3.11
    from typing_extensions import Self

# `engine`: "shared" queues every batch to the model's one engine in this process (its forward
# pass overlaps the caller reading the next batch); "per-task" runs it inline (docs/engine.md).
ENGINES = ("shared", "per-task")
# The presets (named selections of a spec's outputs, docs/internals.md) and ts_submit's op code
# for each (torchspark_core::Op::from_code; `embed` has none of its own: the options name it).
PRESETS = ("score", "featurize", "predict", "embed")
_OPS = {"score": 0, "featurize": 1, "predict": 2, "embed": 2}
# ts_collect blocks in slices this long, so that Python handles signals (a killed task) between.
_COLLECT_SLICE_MS = 100
# Task ids of this process's handles: the engine drops a handle's queued work by its id.
_tasks = itertools.count(1)


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
        model_path = os.fspath(model_path)
        self.resolved = None  # what an MLflow URI resolved to (torchspark.mlflow.Resolved)
        if model_path.startswith(("models:/", "runs:/")):
            from torchspark import mlflow as ts_mlflow

            self.resolved = ts_mlflow.resolve(model_path)
            model_path = self.resolved.model_path
        self.model_path = resolve_local(model_path)
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
        before, t0 = self._so.ts_load_count(), time.monotonic()
        code = self._so.ts_open(config.encode(), ctypes.byref(handle), ctypes.byref(err))
        if code:
            _raise_open(self._so, code, err)
        self._handle = handle.value
        _log_open(self, config, self._so.ts_load_count() > before, time.monotonic() - t0)

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
        outputs: Sequence[str] | str | None = None,
        top_k: int = 5,
        batch_size: int = 0,
        input_column: str | None = None,
        columns: Mapping[str, Sequence[str] | str] | None = None,
        row_offset: int = 0,
        max_pixels: int = 0,
        max_row_elements: int = 0,
        max_batch_bytes: int = 0,
        max_text_bytes: int = 0,
        sort_by_length: bool = True,
    ) -> Pending:
        """Prepares `batch` on this thread (read, decode, tokenize) and queues its forward
        passes; `Pending.result()` returns what `score`, `featurize` or `predict` return.

        `op` is a preset, a named selection of the spec's outputs (`describe(spec, op)` gives
        its schema): `score`, `featurize`, `predict` (every output the spec declares; a
        version-1 spec's raw `output`) or `embed` (a text spec's one vector output).
        `outputs` names the outputs to compute instead, in that order (they must come from one
        method: one call is one forward pass); `top_k` sizes a `top_k` output. Raises at once
        what concerns the whole batch (a missing column, a bad option, a preset the spec cannot
        give). `batch` is one batch: a Table whose columns do not fit one (over 2 GiB in a
        binary column) raises ConfigError; `score`, `featurize` and `predict` take it whole.
        `input_column` names a version-1 spec's image column (else the batch's only column);
        `columns`, the `max_*` limits and `sort_by_length`: as for `predict`."""
        if op not in _OPS:
            raise ConfigError(f"op must be one of {', '.join(PRESETS)}, not {op!r}")
        opts: dict[str, Any] = {
            "batch_size": self._batch_size(batch_size),
            "max_pixels": _non_negative("max_pixels", max_pixels),
            **_limits(max_row_elements, max_batch_bytes, max_text_bytes),
            "top_k": _non_negative("top_k", top_k),
            # Every call numbers its row errors from row_offset (a table's later batches go on
            # counting).
            "row_offset": _non_negative("row_offset", row_offset),
        }
        if outputs is None:
            opts["preset"] = op
        else:
            # By name, instead of the preset (docs/internals.md: the call protocol).
            opts["outputs"] = _output_names(outputs)
        if columns:
            opts["columns"] = _column_map(columns)
        if input_column:
            opts["input_column"] = input_column
        if not _flag("sort_by_length", sort_by_length):
            opts["sort_by_length"] = False
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
        """The `score` preset of a classifier (a version-1 image spec): one row per input row,
        the columns `describe(spec, "score")` gives:

        - `prediction` (float64): the class index, the argmax of `probability`;
        - `probability` (list<float32>, one value per class): the model's output, softmaxed
          when the spec says `"output": "logits"`;
        - `predicted_label` (utf8): the spec's `labels` at `prediction` (null without labels);
        - `top_k` (list<struct<index int32, label utf8, probability float32>>): the `top_k`
          best classes, best first (a `top_k` past the class count gives every class);
        - `error` (utf8): null, or why the row has no outputs (``row N: input `image`
          (column C): <reason>``); a bad row never fails the batch.

        `batch`: a RecordBatch, a Table, a ChunkedArray or Array of encoded images, a list of
        bytes, or a float array (N,C,H,W). A Table (or ChunkedArray) is scored batch by batch,
        every row of every chunk, without combining it past 256 MiB (so a table over 2 GiB
        works); the results come back as one RecordBatch. `input_column`: the image column
        (default: the batch's only column). `max_pixels` (width x height) lowers the spec's
        `preprocess.max_pixels` for this call (0: the spec's); larger images are row errors,
        found from their headers. `batch_size` 0: `auto_batch_size()`. `max_batch_bytes`
        lowers the bytes of one forward pass's input (0: the engine's 256 MiB;
        docs/limits.md)."""
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
        """The `featurize` preset: `features` (list<float32>, the spec's `featurize` output,
        flattened: its method's or forward's `output_index` element) and `error`, one row per
        input row (`batch`, `input_column`, `max_pixels`, `max_batch_bytes`: as score)."""
        return self._call(
            "featurize", batch, 5, batch_size, input_column, max_pixels, max_batch_bytes
        )

    def predict(
        self,
        batch: pa.RecordBatch | pa.Table,
        *,
        outputs: Sequence[str] | str | None = None,
        columns: Mapping[str, Sequence[str] | str] | None = None,
        batch_size: int = 0,
        row_offset: int = 0,
        top_k: int = 5,
        max_pixels: int = 0,
        max_row_elements: int = 0,
        max_batch_bytes: int = 0,
        max_text_bytes: int = 0,
        sort_by_length: bool = True,
    ) -> pa.RecordBatch:
        """Runs any model through its spec's `inputs` and `outputs` (spec version 2, or a
        version-1 image spec): one column per declared output, in order, then `error` (the
        `predict` preset; a version-1 spec's one output is `output`, its class vector as
        list<float64>).

        `outputs` names the outputs to compute instead, in that order (e.g. a version-1 spec's
        `["prediction", "top_k"]`); they must come from one method (else ConfigError naming
        both). `top_k` sizes a `top_k` output (capped at the class count).

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
        pass's input bytes, padding included): passes are cut before it.

        `sort_by_length` (default True): the rows of a call with a `text` input (else its first
        padded tensor input) run longest first, so that each forward pass pads little; results
        and errors still come back in input order. False runs them in the order given."""
        kw = {
            "outputs": outputs,
            "columns": columns,
            "sort_by_length": sort_by_length,
            "batch_size": batch_size,
            "row_offset": row_offset,
            "top_k": top_k,
            "max_pixels": max_pixels,
            **_limits(max_row_elements, max_batch_bytes, max_text_bytes),
        }
        return self._apply("predict", batch, kw)

    def output_schema(self, preset: str = "predict") -> pa.Schema:
        """The schema a call with `preset` returns (`describe` of this model's spec):
        `predict`'s by default."""
        return describe(self.model_path, preset)

    def _call(
        self, op, batch, top_k, batch_size, input_column, max_pixels=0, max_batch_bytes=0
    ) -> pa.RecordBatch:
        kw = {
            "top_k": top_k,
            "batch_size": batch_size,
            "input_column": input_column,
            "max_pixels": _non_negative("max_pixels", max_pixels),
            "max_batch_bytes": _non_negative("max_batch_bytes", max_batch_bytes),
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
                    # Inline: submit runs the pass; nothing is computed ahead of the caller.
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
        """`op` over one RecordBatch: submitted and collected (per-task: run inside submit)."""
        return self.submit(rb, op, **kw).result()


# Lifecycle events (docs/logging.md): loads and reloads per process, the engine's
# configuration once per configuration; nothing per batch.
_log_model = logging.getLogger("torchspark.model")
_log_engine = logging.getLogger("torchspark.engine")
_seen_models: dict[str, str] = {}
_logged_engines: set[str] = set()
_log_lock = threading.Lock()


def _identity(path: str) -> str:
    """What the native registry compares (docs/model-cache.md): length, times, inode."""
    try:
        st = os.stat(path)
    except OSError:
        return "unreadable"
    return f"{st.st_size} bytes, mtime_ns {st.st_mtime_ns}, ctime_ns {st.st_ctime_ns}, inode {st.st_ino}"


def _log_open(model: NativeModel, config: str, loaded: bool, seconds: float) -> None:
    path = model.model_path
    now = f"{_identity(path)}; spec {_identity(spec_path(path))}"
    with _log_lock:
        before = _seen_models.get(path)
        _seen_models[path] = now
        new_engine = config not in _logged_engines
        _logged_engines.add(config)
    host = socket.gethostname()
    version = f" ({model.resolved.describe()})" if model.resolved is not None else ""
    size = os.path.getsize(path) if os.path.isfile(path) else -1
    if before is None and loaded:
        _log_model.info(
            "loaded model %s%s (%d bytes) in %.2f s on host %s", path, version, size, seconds, host
        )
    elif before is None:
        _log_model.info(
            "opened model %s%s (%d bytes; already loaded in this process)", path, version, size
        )
    elif before != now or loaded:
        _log_model.info(
            "reloaded model %s in %.2f s on host %s: it changed on disk (was %s; now %s)",
            path,
            seconds,
            host,
            before,
            now,
        )
    else:
        _log_model.debug(
            "model %s: already loaded in this process (open took %.2f s)", path, seconds
        )
    if new_engine:
        _log_engine.info(
            "engine for %s on host %s: config %s; engine %s",
            path,
            host,
            config,
            json.dumps(model.engine_stats()),
        )


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int, not {value!r}")
    return value


def _non_negative(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a non-negative int, not {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, not {value!r}")
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


def _output_names(outputs: Sequence[str] | str) -> list[str]:
    """The `outputs` batch option: output names, in the caller's order (a single string is one
    name); the native side checks that the spec has them."""
    names = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(names, Sequence) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"outputs must be output names (a list of strings), not {outputs!r}")
    return list(names)


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


def describe(spec_or_model_path: str | os.PathLike, preset: str = "predict") -> pa.Schema:
    """The schema a call with `preset` returns for a spec, without loading the model.

    Takes the spec JSON's path or the model's (its spec beside it). `preset` (a named selection
    of the spec's outputs, docs/internals.md): `predict` (the default: every declared output;
    a version-1 spec's `output`, list<float64>), `score` (a version-1 spec's `prediction`
    float64, `probability` list<float32>, `predicted_label` utf8, `top_k`
    list<struct<index int32, label utf8, probability float32>>), `featurize` (`features`
    list<float32>) or `embed` (a text spec's one `vector` output). One field per selected
    output, then `error` (utf8); a `vector` output has the field metadata
    `torchspark.column: vector`. The schema metadata `torchspark.inputs` lists the inputs as
    JSON (`[{"name", "kind", "columns", "dtype", "shape"}]`). Raises ModelSpecError naming the
    field that is wrong, or the preset the spec cannot give (e.g. `score` of a version-2
    spec), and ConfigError for a preset that does not exist."""
    so = _native.lib()
    out_s, err = _native.ArrowSchema(), ctypes.c_void_p()
    code = so.ts_describe_preset(
        _spec_text(spec_or_model_path).encode(),
        preset.encode(),
        ctypes.byref(out_s),
        ctypes.byref(err),
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
