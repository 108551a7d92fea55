"""The Python-worker path: score Arrow batches in this process with the native library.

`NativeModel` is what `rdd.mapPartitions` and `DataFrame.mapInArrow` functions use inside
Spark's Python workers. Batches cross into Rust through the Arrow C Data Interface (no pickling,
no copy of the image bytes); the model is loaded once per process and shared by every handle, and
loaded again when its model or spec file changes.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any, Self

import pyarrow as pa

from torchspark import _native
from torchspark.cluster import check_on_driver, is_remote, resolve_local, ship_model
from torchspark.errors import BY_CODE, ConfigError, TorchSparkError


def _default_threads() -> int:
    # Spark sets OMP_NUM_THREADS = spark.task.cpus in Python workers.
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def _raise(so: ctypes.CDLL, code: int, err: ctypes.c_void_p) -> None:
    raise BY_CODE.get(code, TorchSparkError)(_native.take_error(so, err))


def _raise_open(so: ctypes.CDLL, code: int, err: ctypes.c_void_p) -> None:
    # Opening depends on the node (its files, GPU, libtorch): say which node, as the JVM does.
    raise BY_CODE.get(code, TorchSparkError)(
        f"{_native.take_error(so, err)} (on host {socket.gethostname()})"
    )


class NativeModel:
    """A TorchScript `.pt` or AOTInductor `.pt2` model (with its spec JSON beside it), scored
    natively.

    >>> m = NativeModel("model.pt")                     # doctest: +SKIP
    >>> m.score([open("cat.png", "rb").read()])          # doctest: +SKIP
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        num_threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        self.model_path = resolve_local(os.fspath(model_path))
        self.device = device
        self.num_threads = num_threads or _default_threads()
        self.precision = precision
        self._so = _native.lib()
        config = json.dumps(
            {
                "model_path": self.model_path,
                "device": device,
                "num_threads": self.num_threads,
                "precision": precision,
            }
        )
        handle, err = ctypes.c_uint64(0), ctypes.c_void_p()
        code = self._so.ts_open(config.encode(), ctypes.byref(handle), ctypes.byref(err))
        if code:
            _raise_open(self._so, code, err)
        self._handle = handle.value

    def close(self) -> None:
        """Releases this handle; the model stays loaded for the process (until its file changes)."""
        if getattr(self, "_handle", 0):
            self._so.ts_close(self._handle)
            self._handle = 0

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def load_count() -> int:
        """Models loaded from disk by this process."""
        return int(_native.lib().ts_load_count())

    def score(
        self,
        batch: Any,
        top_k: int = 5,
        batch_size: int = 64,
        input_column: str | None = None,
        max_pixels: int = 0,
    ) -> pa.RecordBatch:
        """prediction, probability, predicted_label, top_k, error: one row per input row.

        `max_pixels` (width x height) lowers the spec's `preprocess.max_pixels` for this call
        (0: the spec's); larger images are row errors, found from their headers."""
        return self._call(self._so.ts_score, batch, top_k, batch_size, input_column, max_pixels)

    def featurize(
        self,
        batch: Any,
        batch_size: int = 64,
        input_column: str | None = None,
        max_pixels: int = 0,
    ) -> pa.RecordBatch:
        """features (list<float32>) and error: one row per input row (`max_pixels`: as score)."""
        return self._call(self._so.ts_featurize, batch, 1, batch_size, input_column, max_pixels)

    def _call(self, fn, batch, top_k, batch_size, input_column, max_pixels=0) -> pa.RecordBatch:
        if not self._handle:
            raise ConfigError("this NativeModel is closed")
        if not isinstance(max_pixels, int) or max_pixels < 0:
            raise ConfigError(f"max_pixels must be a non-negative int, not {max_pixels!r}")
        rb = as_record_batch(batch)
        opts = {"top_k": top_k, "batch_size": batch_size, "max_pixels": max_pixels}
        if input_column:
            opts["input_column"] = input_column
        in_a, in_s = _native.ArrowArray(), _native.ArrowSchema()
        out_a, out_s = _native.ArrowArray(), _native.ArrowSchema()
        rb._export_to_c(ctypes.addressof(in_a), ctypes.addressof(in_s))
        err = ctypes.c_void_p()
        code = fn(
            self._handle,
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


def as_record_batch(batch: Any) -> pa.RecordBatch:
    """A RecordBatch from a RecordBatch, a Table, a list of bytes, or a float array (N,C,H,W)."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        return (
            batch.combine_chunks().to_batches()[0]
            if batch.num_rows
            else pa.RecordBatch.from_pylist([])
        )
    try:
        import numpy as np

        if isinstance(batch, np.ndarray):
            flat = np.ascontiguousarray(batch, dtype=np.float32).reshape(len(batch), -1)
            arr = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
            return pa.RecordBatch.from_arrays([arr], ["input"])
    except ImportError:  # pragma: no cover
        pass
    if isinstance(batch, Iterable):
        return pa.RecordBatch.from_arrays([pa.array(list(batch), pa.binary())], ["content"])
    raise ConfigError(f"cannot score a {type(batch).__name__}: pass a pyarrow.RecordBatch or bytes")


# ---- helpers for Spark's Python workers -----------------------------------------------------


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


def score_partitions(
    model_path: str,
    content_col: str = "content",
    key_col: str = "path",
    batch_size: int = 64,
    device: str = "cpu",
):
    """A function for `rdd.mapPartitions`: Rows with `key_col` and `content_col` in, tuples
    (key, prediction, predicted_label, probability, error) out, in order.

    `model_path` is a local path, a shipped file's name, or a cluster-storage URI (shipped to
    the executors when this is called on the driver)."""
    model_path = _for_workers(model_path)

    def run(rows: Iterator[Any]) -> Iterator[tuple]:
        model = NativeModel(model_path, device=device)
        chunk: list[Any] = []

        def flush() -> Iterator[tuple]:
            out = model.score([r[content_col] for r in chunk], batch_size=batch_size).to_pydict()
            for r, p, lab, prob, e in zip(
                chunk, out["prediction"], out["predicted_label"], out["probability"], out["error"]
            ):
                yield (r[key_col], p, lab, prob, e)

        for row in rows:
            chunk.append(row)
            if len(chunk) == batch_size:
                yield from flush()
                chunk = []
        if chunk:
            yield from flush()

    return run


def score_arrow(
    model_path: str,
    content_col: str = "content",
    key_col: str = "path",
    batch_size: int = 64,
    device: str = "cpu",
):
    """A function for `df.mapInArrow(f, SCORE_SCHEMA)`: Arrow batches straight to native code.

    `model_path` as for `score_partitions`."""
    model_path = _for_workers(model_path)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = NativeModel(model_path, device=device)
        for b in batches:
            out = model.score(b, batch_size=batch_size, input_column=content_col)
            yield pa.RecordBatch.from_arrays(
                [
                    b.column(key_col),
                    out.column("prediction"),
                    out.column("predicted_label"),
                    out.column("probability"),
                    out.column("error"),
                ],
                ["path", "prediction", "predicted_label", "probability", "error"],
            )

    return run
