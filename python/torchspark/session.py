"""Spark session helpers: `configure(builder)` for any session (local or cluster), the embedded
local default, and the jar for a cluster."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import sys
from pathlib import Path

from torchspark.errors import ConfigError, TorchSparkError, install_py4j_handler

_PKG = Path(__file__).resolve().parent


# Spark line (major.minor) -> the Scala binary version its jar is built with.
SPARK_LINES = {"3.5": "2.12", "4.1": "2.13"}
# The Maven group of the jars' coordinates (dev.torchspark:torchspark-spark4.1_2.13:VERSION).
MAVEN_GROUP = "dev.torchspark"
# A torchspark jar's file name or artifact id: its Spark line, Scala version and (file) version.
_JAR = re.compile(r"torchspark-spark(\d+\.\d+)_(\d+\.\d+)(?:-(.+)\.jar)?")


def _line(spark_version: str) -> str:
    return ".".join(spark_version.split(".")[:2])


def _lines_text() -> str:
    return " and ".join(f"Spark {k} (Scala {v})" for k, v in SPARK_LINES.items())


def _pyspark_version() -> str:
    try:
        import pyspark
    except ImportError:
        raise ConfigError(
            "pyspark is not installed for "
            + sys.executable
            + ": pip install 'torchspark[spark]' (pyspark 4.1) or 'pyspark==3.5.*', "
            "or pass spark_version"
        ) from None
    return pyspark.__version__


def artifact(spark_version: str | None = None) -> str:
    """The jar's artifact id for the installed pyspark's Spark line (or `spark_version`'s), e.g.
    torchspark-spark4.1_2.13; ConfigError for a line torchspark does not build."""
    version = spark_version or _pyspark_version()
    line = _line(version)
    if line not in SPARK_LINES:
        found = (
            f"Spark {version}"
            if spark_version
            else f"pyspark {version} (installed for {sys.executable})"
        )
        raise ConfigError(
            f"{found} has no torchspark jar: torchspark builds for {_lines_text()}; install "
            "the pyspark of the line your cluster runs (pip install 'pyspark==4.1.*' or "
            "'pyspark==3.5.*'); a Spark of another line needs a torchspark built for it "
            "(docs/spark-versions.md)"
        )
    return f"torchspark-spark{line}_{SPARK_LINES[line]}"


def coordinates(spark_version: str | None = None) -> str:
    """The Maven coordinates of the jar for the installed pyspark's Spark line (or
    `spark_version`'s), for `spark.jars.packages` / `spark-submit --packages`:
    dev.torchspark:torchspark-spark4.1_2.13:VERSION."""
    from torchspark import __version__

    return f"{MAVEN_GROUP}:{artifact(spark_version)}:{__version__}"


def jar_path(spark_version: str | None = None) -> str:
    """The torchspark jar (with the .so inside) for `--jars` / `spark.jars`: the one built for the
    installed pyspark's Spark line (or `spark_version`'s), e.g. torchspark-spark3.5_2.12-0.1.0.jar.

    ConfigError for a Spark line torchspark does not build; FileNotFoundError when the package
    lacks the jar.
    """
    from torchspark import __version__

    spark_version = spark_version or _pyspark_version()
    stem = artifact(spark_version) + "-"
    dirs = [_PKG / "jars", _PKG.parent.parent / "jvm-shim" / "target"]
    for d in dirs:
        exact = d / f"{stem}{__version__}.jar"
        if exact.is_file():
            return str(exact)
    for d in dirs:
        for c in sorted(d.glob(f"{stem}*.jar")):
            return str(c)
    raise FileNotFoundError(
        f"{stem}{__version__}.jar (for Spark {spark_version}) not found in "
        + ", ".join(map(str, dirs))
        + ": run `make setup`"
    )


def bundled_jars() -> dict[str, str]:
    """The jars this installation carries (the package's jars/), by Spark line."""
    out = {}
    for p in sorted((_PKG / "jars").glob("torchspark-spark*.jar")):
        m = _JAR.fullmatch(p.name)
        if m:
            out[m.group(1)] = str(p)
    return out


def _entries(value: str | None) -> list[str]:
    return [e.strip() for e in (value or "").split(",") if e.strip()]


def _identity(entry: str) -> tuple[str, str, str | None] | None:
    """(Spark line, Scala version, version) of a torchspark jar path/URI or coordinates in
    spark.jars / spark.jars.packages, else None (the version is None when the name lacks it)."""
    parts = entry.split(":")
    if len(parts) >= 3 and parts[0] == MAVEN_GROUP:  # group:artifact:version[:classifier]
        m = _JAR.fullmatch(parts[1])
        return (m.group(1), m.group(2), parts[2]) if m else ("?", "?", parts[2])
    m = _JAR.fullmatch(entry.rsplit("/", 1)[-1])
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _submit_args_entries() -> list[tuple[str, str]]:
    """torchspark entries of PYSPARK_SUBMIT_ARGS (--jars, --packages, --conf spark.jars=...)."""
    try:
        args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    except ValueError:
        return []
    out = []
    for flag, value in itertools.pairwise(args):
        if flag in ("--jars", "--packages"):
            out += [(f"PYSPARK_SUBMIT_ARGS {flag}", e) for e in _entries(value)]
        elif flag == "--conf" and value.split("=", 1)[0] in ("spark.jars", "spark.jars.packages"):
            key, _, v = value.partition("=")
            out += [(f"PYSPARK_SUBMIT_ARGS --conf {key}", e) for e in _entries(v)]
    return out


def _check_entries(found: list[tuple[str, str]], want: tuple[str, str, str], ours: str) -> bool:
    """Whether `found` (where, entry) already holds torchspark's jar for `want` (line, Scala,
    version); ConfigError when it holds another line's or version's."""
    present = False
    for where, entry in found:
        ident = _identity(entry)
        if ident is None:
            continue
        if ident[:2] == want[:2] and ident[2] in (None, want[2]):
            present = True
            continue
        line, scala, version = ident
        raise ConfigError(
            f"{where} already holds {entry}, a torchspark jar for Spark {line} (Scala {scala})"
            f"{f' version {version}' if version else ''}; this session needs {ours} (Spark "
            f"{want[0]}, Scala {want[1]}, torchspark {want[2]}): two torchspark jars cannot "
            "share a classpath; remove that entry, or use the jar of your Spark line"
        )
    return present


def _running_context():
    """This process's running (classic) SparkContext, or None."""
    try:
        from pyspark import SparkContext
    except ImportError:
        return None
    return SparkContext._active_spark_context


def configure(builder, *, spark_version: str | None = None, packages: bool = False):
    """Adds torchspark to a `SparkSession.builder` (local or a cluster's master: standalone,
    YARN, Kubernetes) and returns it, as Delta's `configure_spark_with_delta_pip` does::

        spark = torchspark.configure(SparkSession.builder.master("yarn")).getOrCreate()

    It sets:
    - `spark.jars`: this package's jar for the installed pyspark's Spark line (or
      `spark_version`'s), appended to what the builder already has; Spark ships it to the
      executors. With `packages=True`, `spark.jars.packages` gets the Maven coordinates instead
      (`dev.torchspark:torchspark-spark4.1_2.13:VERSION`, `...-spark3.5_2.12:...`), which Spark
      resolves from Maven Central or `spark.jars.repositories`.
    - `TORCHSPARK_PYTHON` (if unset) in this process's environment: the driver JVM that
      `getOrCreate()` launches asks this interpreter where its torch (libtorch) is.
    Nothing else: executors need torchspark, torch and a Python of their own (docs/cluster.md);
    `local_session` adds what local mode wants. Calling it twice adds the jar once.

    Raises ConfigError (naming what was found and the fix) when: the Spark line has no
    torchspark jar (e.g. pyspark 3.4 or 4.0); this installation lacks its line's jar; the builder
    (or PYSPARK_SUBMIT_ARGS) already holds a torchspark jar or coordinates of another line or
    version; a SparkContext already runs in this process without the torchspark jar (spark.jars
    is read only when a SparkContext starts), or with another one; the builder is a Spark Connect
    client of a remote server (the jar belongs on the server: start it with `--jars`).
    """
    from torchspark import __version__

    version = spark_version or _pyspark_version()
    name = artifact(version)  # ConfigError for a line with no jar
    line, scala = _line(version), SPARK_LINES[_line(version)]
    options = getattr(builder, "_options", None)
    options = options if isinstance(options, dict) else {}
    remote = options.get("spark.remote") or os.environ.get("SPARK_REMOTE")
    if remote and not str(remote).startswith("local"):
        raise ConfigError(
            f"this builder is a Spark Connect client of {remote}: the torchspark jar belongs on "
            f"the server; start it with --jars <the {name} jar, torchspark.jar_path()> or "
            f"--packages {coordinates(version)}, then connect"
        )
    if packages:
        key, entry = "spark.jars.packages", coordinates(version)
        want = (line, scala, __version__)
    else:
        key = "spark.jars"
        try:
            entry = jar_path(version)
        except FileNotFoundError:
            bundled = bundled_jars()
            raise ConfigError(
                f"this torchspark installation ({_PKG}) lacks {name}-{__version__}.jar for "
                + (f"Spark {version}" if spark_version else f"pyspark {version}")
                + (f" (its jars: {', '.join(sorted(bundled))})" if bundled else " (no jars)")
                + ": reinstall the wheel (pip install --force-reinstall torchspark), run "
                "`make setup` in a checkout, or use configure(builder, packages=True)"
            ) from None
        want = _identity(entry) or (line, scala, __version__)
    found = [
        (f"the builder's {k}", e)
        for k in ("spark.jars", "spark.jars.packages")
        for e in _entries(options.get(k))
    ] + _submit_args_entries()
    present = _check_entries(found, want, entry)
    sc = _running_context()
    if sc is not None and sc._jsc is not None:
        conf = sc.getConf()
        running = [
            (f"the running SparkContext's {k}", e)
            for k in ("spark.jars", "spark.jars.packages")
            for e in _entries(conf.get(k, ""))
        ]
        if not _check_entries(running, want, entry):
            from py4j.java_gateway import JavaPackage

            if isinstance(sc._jvm.dev.torchspark.SparkLineCheck, JavaPackage):
                raise ConfigError(
                    "a SparkContext already runs in this process without the torchspark jar "
                    f"(spark.jars={conf.get('spark.jars', '')!r}), and spark.jars is read only "
                    "when a SparkContext starts: call torchspark.configure(builder) before the "
                    "first getOrCreate(), or stop that session first (spark.stop()); where the "
                    f"platform starts Spark (Livy, Databricks), add it to the session's "
                    f"configuration: {key}={entry}"
                )
            check_jar_line(sc._jvm)  # the jar came another way (extraClassPath, a platform)
        return builder
    if not present:
        builder = builder.config(key, ",".join([*_entries(options.get(key)), entry]))
    # The driver JVM (launched by getOrCreate from this process) finds libtorch through it.
    os.environ.setdefault("TORCHSPARK_PYTHON", sys.executable)
    return builder


def check_jar_line(jvm) -> None:
    """Runs the jar's Spark-line check (plain Java) before any of its Scala classes loads: a jar
    built for the other Scala version fails to load them, with a NoClassDefFoundError that names
    a Scala class and not the jar."""
    from py4j.java_gateway import JavaPackage
    from py4j.protocol import Py4JJavaError

    check = jvm.dev.torchspark.SparkLineCheck
    if isinstance(check, JavaPackage):
        raise TorchSparkError(
            f"the torchspark jar is not on the classpath: set spark.jars={jar_path()}"
        )
    try:
        check.check()
    except Py4JJavaError as e:
        raise ConfigError(str(e.java_exception.getMessage())) from None


def local_session(master: str = "local[*]", app_name: str = "torchspark", **conf):
    """A SparkSession with the torchspark jar and this interpreter for the Python workers.

    `configure(builder)` adds the jar; local mode also gets this interpreter for the Python
    workers (PYSPARK_PYTHON), Arrow for toPandas/createDataFrame, and a small cost of opening a
    file (many small image files give a few large tasks). Extra Spark settings go in `conf`,
    e.g. `local_session("local[2]", **{"spark.ui.enabled": "false"})`; they win over these.
    """
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    b = (
        configure(SparkSession.builder.master(master).appName(app_name))
        # Local mode only: executors run on this machine, so their Python workers can be this
        # interpreter (a cluster's executors have their own; docs/cluster.md).
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Image collections are many small files: Spark's default cost of opening a file
        # (4 MB) would cut 10,000 PNGs into ~300 tiny tasks; 8 KB gives a few large ones.
        .config("spark.sql.files.openCostInBytes", "8192")
    )
    for k, v in conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    # torchspark's JVM exceptions (driver checks, failed tasks) as its Python classes.
    install_py4j_handler()
    return spark


def register_udfs(
    spark, name: str, model_path: str, device: str = "cpu", engine: str | None = None
) -> None:
    """Registers SQL functions for the model at `model_path` (TorchSpark.register, in the JVM).

    An image spec (version 1): `name(content)` -> the `score` preset's struct<prediction double
    (the class index), probability array<float>, predicted_label string, top_k
    array<struct<index int, label string, probability double>> (the best 5), label (the old
    name of predicted_label, kept for one release), error string>, e.g.
    `classify_image(content).predicted_label`; and `name_features(content)` (array<double>, the
    `featurize` preset). A version-2 spec (tensor or text models): `name(c1, ..., cN)`,
    one argument per input that reads columns, in the spec's order, returning
    struct<outputs..., error>; e.g. a text model: `embed_text(text).embedding` (an ML vector).
    A row that fails gives null outputs and `error` naming the row and the reason.
    `engine` ("shared" | "per-task"; None: the JVM's default) picks how the executors run the
    model (docs/engine.md); ConfigError when the jar's TorchSpark.register takes no engine.
    """
    if model_path.startswith(("models:/", "runs:/")):
        # Resolved once, here: the functions score this version until registered again.
        from torchspark import mlflow as ts_mlflow

        model_path = ts_mlflow.resolve(model_path).model_path
    jvm = spark.sparkContext._jvm
    check_jar_line(jvm)
    install_py4j_handler()
    if engine is None:
        jvm.dev.torchspark.TorchSpark.register(spark._jsparkSession, name, model_path, device, 1)
        return
    from torchspark.native_model import ENGINES

    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    # Asked of the class rather than read from py4j's error text: an older jar lacks the overload.
    cls = jvm.py4j.reflection.ReflectionUtil.classForName("dev.torchspark.TorchSpark")
    if not any(
        m.getName() == "register" and len(m.getParameterTypes()) == 6 for m in cls.getMethods()
    ):
        raise ConfigError(
            "this torchspark jar's TorchSpark.register takes no engine (an older jar): "
            "rebuild it (make native jar) or call register_udfs without engine"
        )
    jvm.dev.torchspark.TorchSpark.register(
        spark._jsparkSession, name, model_path, device, 1, engine
    )
