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
import logging
import os
import re
import socket

# The spec-file rules live in spec_files (mlflow.py needs them without this module); kept
# importable from here, their first home.
from torchspark.spec_files import (  # noqa: F401
    spec_path,
    tokenizer_files,
    tokenizer_name_problem,
)

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_remote(path: str) -> bool:
    """A URI with a scheme other than file: (hdfs://, abfs://, s3a://, ...)."""
    return bool(_REMOTE.match(path)) and not path.startswith("file:")


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


# Schemes whose files no copy can be checked against (no reliable length or version; the JVM's
# node cache refuses them too, ModelSource.scala).
UNVERIFIABLE_SCHEMES = ("http", "https", "ftp")


def check_scheme(uri: str) -> None:
    """Refuses a model URI read over http(s) or ftp, naming it and what to do instead."""
    from torchspark.errors import ModelLoadError

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in UNVERIFIABLE_SCHEMES:
        raise ModelLoadError(
            f"model {uri}: torchspark does not read models over {scheme}:// (a copy could not "
            "be checked against it: such servers give no reliable length or version); copy the "
            "model and its spec into cluster storage (hdfs://, s3a://, abfs://, gs://) or onto "
            "every node, and pass that path"
        )


def ship_model(spark, uri: str) -> str:
    """Makes the model at `uri` (its spec beside it, and the tokenizer file a text model's spec
    names) available to every executor.

    `uri` is a cluster-storage URI or a file on the driver (a path or `file:` URI). Everything is
    checked on the driver before anything is shipped: the model and its spec exist, the spec is
    JSON whose tokenizer names are plain file names beside it, and those files exist. Then each
    goes through `SparkContext.addFile` (Spark copies them once per executor) and the model's
    name is returned: `NativeModel(name)` finds it on the workers through `SparkFiles`.
    `http(s)://` and `ftp://` URIs are refused (see `check_scheme`).
    """
    from torchspark.errors import ModelLoadError, ModelSpecError

    if uri.startswith(("models:/", "runs:/")):  # resolved once here, then shipped as a file
        from torchspark import mlflow as ts_mlflow

        uri = ts_mlflow.resolve(uri).model_path
    check_scheme(uri)
    sc = spark.sparkContext if hasattr(spark, "sparkContext") else spark
    jvm = sc._jvm
    conf = sc._jsc.hadoopConfiguration()

    def file_system(what: str, u: str, missing: str = ""):
        """`u`'s file system and Path, after checking it exists (`what` names it in errors)."""
        p = jvm.org.apache.hadoop.fs.Path(u)
        try:
            fs = p.getFileSystem(conf)
            exists = fs.exists(p)
        except Exception as e:  # noqa: BLE001  (py4j's error: unreachable storage, bad scheme)
            raise ModelLoadError(f"cannot reach {what}: {_java_message(e)}") from None
        if not exists:
            raise ModelLoadError(f"{what} not found{missing}")
        return fs, p

    spec_uri = spec_path(uri)
    file_system(f"model {uri}", uri)
    fs, p = file_system(f"model spec (it sits beside the model) {spec_uri}", spec_uri)
    # The spec is read from the source and its tokenizer names checked before anything ships:
    # a name like `../x.json` would otherwise ship another file to every executor.
    try:
        stream = fs.open(p)
        try:
            text = bytes(stream.readAllBytes())
        finally:
            stream.close()
    except Exception as e:  # noqa: BLE001  (as above)
        raise ModelLoadError(f"cannot read model spec {spec_uri}: {_java_message(e)}") from None
    try:
        spec = json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ModelSpecError(f"model spec {spec_uri}: not JSON: {e}") from None
    folder = spec_uri.rsplit("/", 1)[0] if "/" in spec_uri else "."
    tokenizers = []
    for _, name, _ in tokenizer_files(spec, spec_uri):
        u = f"{folder}/{name}"
        what = f"tokenizer {u} (named by the spec {spec_uri})"
        file_system(what, u, ": it must sit beside the model")
        tokenizers.append(u)
    for u in (uri, spec_uri, *tokenizers):
        sc.addFile(u)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    logging.getLogger("torchspark.model").info(
        "shipped model %s with its spec%s to every executor as %s (SparkContext.addFile)",
        uri,
        f" and {len(tokenizers)} tokenizer files" if tokenizers else "",
        name,
    )
    return name


def check_tokenizers(spec_file: str, spec: dict) -> None:
    """Each tokenizer file the spec names exists beside it (or was shipped by name) and matches
    its `tokenizer_sha256` pin. Raises ModelLoadError (missing) / ModelSpecError (pin) naming
    the file and the input; the native loader checks the same when the model loads."""
    import hashlib

    from torchspark.errors import ModelLoadError, ModelSpecError

    folder = os.path.dirname(spec_file)
    for name, file, pin in tokenizer_files(spec, spec_file):
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

    check_scheme(model_path)
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
