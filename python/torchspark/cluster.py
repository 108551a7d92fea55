"""Cluster helpers: reading many small image files, and models kept in cluster storage.

`read_images` gives binaryFile rows in a few partitions per task slot (Spark's default packs
small files one partition per 4 MB, i.e. thousands of tiny tasks). `ship_model` makes a model
(with its spec and, for a text model, its tokenizer) that lives at a Hadoop FileSystem URI
(`hdfs://`, `abfs://`, `s3a://`, ...) reachable by name from Spark's Python workers, which have
no Hadoop client: Spark fetches it once per executor (`SparkContext.addFile`). The JVM
transformers read such URIs themselves.
"""

from __future__ import annotations

import json
import os
import re
import socket

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_remote(path: str) -> bool:
    """A URI with a scheme other than file: (hdfs://, abfs://, s3a://, ...)."""
    return bool(_REMOTE.match(path)) and not path.startswith("file:")


def spec_path(model_path: str) -> str:
    """The spec beside a model: `model.pt` -> `model.json`."""
    head, tail = model_path.rsplit("/", 1) if "/" in model_path else ("", model_path)
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}.json" if head else f"{stem}.json"


def task_slots(spark) -> int:
    """Task slots of the application: its cores over spark.task.cpus."""
    conf = spark.conf
    cpus = int(conf.get("spark.task.cpus", "1") or 1)
    asked = int(conf.get("spark.executor.instances", "0") or 0) * int(
        conf.get("spark.executor.cores", "1") or 1
    )
    try:
        cores = spark.sparkContext.defaultParallelism
    except Exception:  # noqa: BLE001  (Spark Connect raises its own error for sparkContext)
        cores = int(conf.get("spark.default.parallelism", "0") or 0) or 2
    return max(1, max(cores, asked) // cpus)


def image_partitions(files: int, slots: int, per_slot: int) -> int:
    """`per_slot` partitions per task slot, never more than one per file."""
    return max(1, min(files, slots * per_slot))


def read_images(spark, path: str, pattern: str = "*", partitions_per_slot: int = 3):
    """Image files under `path` as binaryFile rows (path, modificationTime, length, content).

    Searches `path` recursively (it may itself hold globs) and keeps file names that match
    `pattern` (e.g. ``"*.png"``); the rows come in a few partitions per task slot, so that each
    task makes full model batches and a failed task costs little to retry.
    """
    if partitions_per_slot < 1:
        raise ValueError("partitions_per_slot must be >= 1")
    df = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", pattern)
        .load(path)
    )
    n = image_partitions(len(df.inputFiles()), task_slots(spark), partitions_per_slot)
    # Coalescing merges file splits without a shuffle; asking for more partitions is a no-op.
    return df.coalesce(n)


def ship_model(spark, uri: str) -> str:
    """Makes the model at `uri` (its spec beside it, and the tokenizer file a text model's spec
    names) available to every executor.

    `uri` is a cluster-storage URI or a file on the driver (a path or `file:` URI). Both files
    go through `SparkContext.addFile` (Spark copies them once per executor) and the file's name
    is returned: `NativeModel(name)` finds it on the workers through `SparkFiles`.
    """
    from torchspark.errors import ModelLoadError

    sc = spark.sparkContext if hasattr(spark, "sparkContext") else spark
    jvm = sc._jvm
    # Checked here, on the driver, so that a missing model fails before any job starts.
    for what, u in (("model", uri), ("model spec (it sits beside the model)", spec_path(uri))):
        p = jvm.org.apache.hadoop.fs.Path(u)
        try:
            exists = p.getFileSystem(sc._jsc.hadoopConfiguration()).exists(p)
        except Exception as e:  # noqa: BLE001  (py4j's error: unreachable storage, bad scheme)
            raise ModelLoadError(f"cannot reach {what} {u}: {_java_message(e)}") from None
        if not exists:
            raise ModelLoadError(f"{what} {u} not found")
    for u in (uri, spec_path(uri)):
        sc.addFile(u)
    # A text model's tokenizer is a file named by its spec, in the spec's folder: it ships too,
    # and lands beside the shipped spec, where the native loader looks for it. The spec is read
    # from the driver's copy that addFile just fetched.
    spec_name = spec_path(uri).rsplit("/", 1)[-1]
    shipped_spec = _shipped(spec_name)
    if shipped_spec:
        folder = spec_path(uri).rsplit("/", 1)[0] if "/" in spec_path(uri) else "."
        for _, name, _ in tokenizer_files(_read_json(shipped_spec)):
            u = f"{folder}/{name}"
            p = jvm.org.apache.hadoop.fs.Path(u)
            what = f"tokenizer {u} (named by the spec {spec_path(uri)})"
            try:
                exists = p.getFileSystem(sc._jsc.hadoopConfiguration()).exists(p)
            except Exception as e:  # noqa: BLE001  (as above)
                raise ModelLoadError(f"cannot reach {what}: {_java_message(e)}") from None
            if not exists:
                raise ModelLoadError(f"{what} not found: it must sit beside the model")
            sc.addFile(u)
    return uri.rstrip("/").rsplit("/", 1)[-1]


def tokenizer_files(spec: dict) -> list[tuple[str, str, str | None]]:
    """(input name, tokenizer file name, sha256 pin or None) of each `text` input of a spec
    (spec version 2; the file is named relative to the spec's folder, docs/text.md)."""
    out = []
    inputs = spec.get("inputs") if isinstance(spec, dict) else None
    for decl in inputs if isinstance(inputs, list) else []:
        if isinstance(decl, dict) and decl.get("kind") == "text" and decl.get("tokenizer"):
            pin = decl.get("tokenizer_sha256")
            out.append((str(decl.get("name")), str(decl["tokenizer"]), pin and str(pin)))
    return out


def check_tokenizers(spec_file: str, spec: dict) -> None:
    """Each tokenizer file the spec names exists beside it (or was shipped by name) and matches
    its `tokenizer_sha256` pin. Raises ModelLoadError (missing) / ModelSpecError (pin) naming
    the file and the input; the native loader checks the same when the model loads."""
    import hashlib

    from torchspark.errors import ModelLoadError, ModelSpecError

    folder = os.path.dirname(spec_file)
    for name, file, pin in tokenizer_files(spec):
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            path = _shipped(os.path.basename(file)) or path
        if not os.path.isfile(path):
            raise ModelLoadError(
                f"tokenizer {path} (input `{name}` of the spec {spec_file}) not found on host "
                f"{socket.gethostname()}: it must sit beside the model (ship_model ships it)"
            )
        if pin:
            with open(path, "rb") as f:
                actual = hashlib.sha256(f.read()).hexdigest()
            if actual != pin.lower():
                raise ModelSpecError(
                    f"tokenizer {path} (input `{name}` of the spec {spec_file}): sha256 "
                    f"{actual} does not match the spec's tokenizer_sha256 {pin}"
                )


def resolve_local(model_path: str) -> str:
    """A model path usable in this process: the path itself, or a file shipped by name
    (`--files`, `SparkContext.addFile`, `ship_model`) found through SparkFiles.

    Raises ModelLoadError naming the path and the host when neither exists (with or without
    a SparkContext), or for a cluster-storage URI (Python workers have no Hadoop client)."""
    from torchspark.errors import ModelLoadError

    if is_remote(model_path):
        raise ModelLoadError(
            f"{model_path}: the Python-worker path reads local files only; on the driver, "
            "torchspark.ship_model(spark, uri) ships it to the executors (or use ImageScorer, "
            "which reads cluster storage itself)"
        )
    path = model_path.removeprefix("file:")
    path = path.removeprefix("//")
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    shipped = _shipped(name)
    if shipped:
        return shipped
    what = "is not a file" if os.path.exists(path) else "not found"
    raise ModelLoadError(
        f"model file {model_path} {what} on host {socket.gethostname()} (nor shipped as "
        f"{name} with --files, SparkContext.addFile or torchspark.ship_model)"
    )


def _shipped(name: str) -> str:
    """The SparkFiles copy of `name` in this process, or "" (no Spark, no SparkFiles root)."""
    if not name:
        return ""
    try:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(name)
    # SparkFiles asserts (a bare AssertionError) when this process has no SparkContext.
    except Exception:  # noqa: BLE001
        return ""
    return shipped if os.path.isfile(shipped) else ""


def check_on_driver(spark, model_path: str) -> None:
    """Checks on the driver, before any job, what it can know of a local model for the
    Python-worker path: the file (required in local mode, where the driver's files are the
    workers'; elsewhere checked when the driver has a copy) and its spec, which must be a JSON
    object with an `input` object or an `inputs` list. The full validation runs where the model
    loads.

    Raises ModelLoadError / ModelSpecError naming the path."""
    from torchspark.errors import ModelLoadError

    if spark is None or is_remote(model_path):
        return
    try:
        master = str(spark.sparkContext.master)  # as the JVM's isLocal: not local-cluster[...]
        local_mode = master == "local" or master.startswith("local[")
    except Exception:  # noqa: BLE001  (Spark Connect: the files are the server's)
        return
    try:
        local = resolve_local(model_path)
    except ModelLoadError:
        if local_mode:
            raise
        return  # a path that only the executors have
    spec_file = spec_path(local)
    check_tokenizers(spec_file, check_spec_file(spec_file))


def _read_json(path: str):
    from torchspark.errors import ModelSpecError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ModelSpecError(f"model spec {path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ModelSpecError(f"model spec {path}: not JSON: {e}") from None


def check_spec_file(path: str) -> dict:
    """The spec at `path` exists, is readable and is a JSON object with an `input` object (an
    image spec) or an `inputs` list (version 2); returns it."""
    from torchspark.errors import ModelSpecError

    spec = _read_json(path)
    if not isinstance(spec, dict) or not (
        isinstance(spec.get("input"), dict) or isinstance(spec.get("inputs"), list)
    ):
        raise ModelSpecError(
            f"model spec {path}: must be a JSON object with an `input` object or an `inputs` list"
        )
    return spec


def _java_message(e: Exception) -> str:
    java = getattr(e, "java_exception", None)
    return str(java.toString()) if java is not None else str(e).splitlines()[0]
