"""Spark session helpers: the embedded local default, and the jar for a cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from torchspark.errors import ConfigError, TorchSparkError, install_py4j_handler

_PKG = Path(__file__).resolve().parent


# Spark line (major.minor) -> the Scala binary version its jar is built with.
SPARK_LINES = {"3.5": "2.12", "4.1": "2.13"}


def jar_path(spark_version: str | None = None) -> str:
    """The torchspark jar (with the .so inside) for `--jars` / `spark.jars`: the one built for the
    installed pyspark's Spark line (or `spark_version`'s), e.g. torchspark-spark3.5_2.12-0.1.0.jar.
    """
    from torchspark import __version__

    if spark_version is None:
        import pyspark

        spark_version = pyspark.__version__
    line = ".".join(spark_version.split(".")[:2])
    if line not in SPARK_LINES:
        lines = " and ".join(f"Spark {k} (Scala {v})" for k, v in SPARK_LINES.items())
        raise ConfigError(
            f"Spark {spark_version} has no torchspark jar: torchspark builds for {lines}"
        )
    stem = f"torchspark-spark{line}_{SPARK_LINES[line]}-"
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

    Extra Spark settings go in `conf`, e.g. `local_session("local[2]", **{"spark.ui.enabled": "false"})`.
    """
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # The JVM's native loader asks this interpreter where torch (libtorch) lives.
    os.environ.setdefault("TORCHSPARK_PYTHON", sys.executable)
    b = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", jar_path())
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
