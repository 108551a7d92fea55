"""Spark session helpers: the embedded local default, and the jar for a cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def jar_path() -> str:
    """The torchspark jar (with the .so inside), for `--jars` / `spark.jars`."""
    for c in [
        *sorted((_PKG / "jars").glob("torchspark-*.jar")),
        _PKG.parent.parent / "jvm-shim" / "target" / "torchspark-0.1.0.jar",
    ]:
        if c.is_file():
            return str(c)
    raise FileNotFoundError("torchspark jar not found: run `make setup`")


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
    return b.getOrCreate()


def register_udfs(spark, name: str, model_path: str, device: str = "cpu") -> None:
    """SQL UDFs `name(content)` and `name_features(content)` (see TorchSpark.register)."""
    jvm = spark.sparkContext._jvm
    jvm.dev.torchspark.TorchSpark.register(spark._jsparkSession, name, model_path, device, 1)
