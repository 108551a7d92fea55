"""Cluster-facing helpers on a real local[2] session: the image reader's partitioning, models
in cluster storage (the real Hadoop client against a closed port; HDFS itself is covered by the
cluster tests), the node check and the doctor."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import torchspark
from conftest import ROOT
from torchspark import ImageScorer
from torchspark.cluster import image_partitions, resolve_local, spec_path
from torchspark.errors import ModelLoadError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_read_images_finds_nested_files_by_glob_in_few_partitions(spark, fixtures, tmp_path):
    images = sorted((fixtures / "images").iterdir())
    pngs = [p for p in images if p.suffix == ".png"]
    for i, p in enumerate(images):  # a nested layout, as image collections have
        d = tmp_path / f"class{i % 3}" / "sub"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / p.name)
    every = torchspark.read_images(spark, str(tmp_path))
    assert every.count() == len(images)
    only_png = torchspark.read_images(spark, str(tmp_path), pattern="*.png")
    paths = [r.path for r in only_png.select("path").collect()]
    assert len(paths) == len(pngs) == len(set(paths))
    # Spark's default open cost, and splits small enough that every file is its own partition,
    # as 10,000 files are with the defaults; local[2] has 2 slots x 3 per slot.
    spark.conf.set("spark.sql.files.openCostInBytes", str(4 << 20))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(4 << 20))
    try:
        natural = spark.read.format("binaryFile").load(str(tmp_path / "class0" / "sub"))
        assert natural.rdd.getNumPartitions() == len(list((tmp_path / "class0" / "sub").iterdir()))
        n = torchspark.read_images(spark, str(tmp_path)).rdd.getNumPartitions()
    finally:
        spark.conf.set("spark.sql.files.openCostInBytes", "8192")
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert n == min(len(images), 6)


def test_image_partitions_rule():
    assert image_partitions(10_000, slots=2, per_slot=3) == 6
    assert image_partitions(4, slots=8, per_slot=3) == 4
    assert image_partitions(0, slots=8, per_slot=3) == 1


def test_scala_reader_agrees_with_python(spark, fixtures):
    jdf = spark.sparkContext._jvm.dev.torchspark.TorchSpark.readImages(
        spark._jsparkSession, str(fixtures / "images"), "*.png", 3
    )
    py = torchspark.read_images(spark, str(fixtures / "images"), pattern="*.png")
    assert jdf.count() == py.count()
    assert jdf.rdd().getNumPartitions() == py.rdd.getNumPartitions()


def test_spec_path_sits_beside_the_model():
    assert spec_path("hdfs://nn:8020/models/resnet20.pt") == "hdfs://nn:8020/models/resnet20.json"
    assert spec_path("abfs://c@a.dfs.core.windows.net/m.v2.pt2") == (
        "abfs://c@a.dfs.core.windows.net/m.v2.json"
    )


def test_unreachable_storage_is_reported_on_the_driver_naming_the_uri(spark, fixtures):
    uri = f"hdfs://127.0.0.1:{_closed_port()}/models/resnet20.pt"
    spark.sparkContext._jsc.hadoopConfiguration().set("ipc.client.connect.max.retries", "0")
    images = torchspark.read_images(spark, str(fixtures / "images"))
    scorer = ImageScorer(modelPath=uri, inputCol="content")
    # The JVM's ModelLoadException, raised as torchspark's Python class.
    with pytest.raises(ModelLoadError, match=f"cannot reach model {uri}"):
        scorer.transform(images)
    with pytest.raises(ModelLoadError, match=f"cannot reach model {uri}"):
        torchspark.ship_model(spark, uri)


def test_missing_model_uri_fails_before_the_job_naming_it(spark, tmp_path):
    # file:// through ship_model: the Hadoop client's own "not found", raised on the driver.
    uri = f"file://{tmp_path}/nowhere/resnet20.pt"
    with pytest.raises(ModelLoadError, match=f"model {uri} not found"):
        torchspark.ship_model(spark, uri)


def test_python_workers_refuse_cluster_uris_with_advice():
    with pytest.raises(ModelLoadError, match="ship_model"):
        resolve_local("hdfs://nn:8020/m.pt")
    with pytest.raises(ModelLoadError, match="ship_model"):
        torchspark.NativeModel("s3a://bucket/m.pt")


def test_ship_model_reaches_python_workers_by_name(spark, fixtures, expected, tmp_path):
    # A URI with a scheme goes through SparkContext.addFile, as hdfs:// does on a cluster.
    store = tmp_path / "store"
    store.mkdir()
    for f in ("resnet20.pt", "resnet20.json"):
        shutil.copy(fixtures / f, store / f)
    name = torchspark.ship_model(spark, f"file://{store}/resnet20.pt")
    assert name == "resnet20.pt"
    rows = (
        spark.read.format("binaryFile")
        .load(str(fixtures / "images"))
        .select("path", "content")
        .rdd.mapPartitions(torchspark.score_partitions(name))
        .collect()
    )
    assert len(rows) == len(expected)
    # SCORE_SCHEMA's tuples: path, prediction, ..., error (the last).
    assert all(r[-1] is None or "row" in r[-1] for r in rows)
    want = {k: int(np.argmax(v["resnet20"]["probability"])) for k, v in expected.items()}
    got = {r[0].rsplit("/", 1)[-1]: r[1] for r in rows if r[-1] is None}
    assert got and all(got[k] == want[k] for k in got)


def test_node_check_reports_a_ready_node():
    p = subprocess.run(
        [sys.executable, "-m", "torchspark.node", "check", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT / "python",
    )
    report = json.loads(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    names = {c["name"]: c for c in report["checks"]}
    assert {"cpu", "bf16", "glibc", "torch", "library", "score"} <= set(names)
    assert "torchspark needs 2." in names["glibc"]["detail"]
    assert names["score"]["ok"]


def test_node_check_fails_loudly_without_torch(tmp_path):
    # A node Python with pyarrow and numpy but no torch: exit 1, naming what is missing.
    venv = tmp_path / "node"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "numpy", "pyarrow"], check=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "python"), "HOME": str(tmp_path)}
    p = subprocess.run(
        [py, "-m", "torchspark.node", "check"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "[FAIL] torch     torch not installed (needs 2.13.0)" in p.stdout
    assert socket.gethostname() in p.stdout
    assert "NOT ready" in p.stdout


def test_doctor_checks_the_executor_jvm_and_python_workers(spark, capsys):
    rows = torchspark.doctor(spark)
    sides = {r["side"] for r in rows}
    assert sides == {"jvm", "python"}
    for r in rows:
        assert r["ok"], r
        assert r["host"] == socket.gethostname()
    jvm = [r for r in rows if r["side"] == "jvm"]
    assert len(jvm) == 1 and jvm[0]["executor"] == "driver"  # local mode: one executor
    assert "tiny model" in jvm[0]["status"]
    out = capsys.readouterr().out
    assert "host" in out and "libtorch" in out
