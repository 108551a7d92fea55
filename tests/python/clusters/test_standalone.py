"""torchspark on a standalone cluster (a master and 2 workers of 1 core, on 127.0.0.1, started
once for this module; see spark_clusters.py). `pytest -m cluster` runs only the cluster tests.

a) spark-submit of the Scala example (its jar named, and by Maven coordinates with
--packages), c) a PySpark driver (ImageScorer twice, then rdd.mapPartitions), and an executor SIGKILLed mid-job. b), the Python twin
examples/score_images.py, runs on YARN (cluster deploy mode) and on the Spark 3.5 standalone
cluster (test_spark35_standalone.py), so not again here.
Every image comes out exactly once, with NativeModel's prediction (computed here, in one
process); the model is loaded once per executor on the first job and not again on the next.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from maven_dist import COORDINATES, MISSING, isolated_ivy, repo_url, resolved
from spark_clusters import (
    DRIVER,
    EXECUTORS,
    SCALA_EXAMPLE,
    Standalone,
    check_driver,
    check_rows,
    kill_an_executor_mid_job,
    model_loads,
    read_parquet,
    session_failed,
)

from torchspark import jar_path

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def standalone(request, tmp_path_factory):
    before = request.session.testsfailed
    c = None
    try:
        c = Standalone(tmp_path_factory.mktemp("standalone"))
        yield c
    finally:
        if c is not None:
            kept = c.close(failed=session_failed(request, before))
            if kept:
                print(f"standalone cluster logs kept in {kept}", file=sys.stderr)


# ---- standalone --------------------------------------------------------------------------------


def test_standalone_scala_example_writes_one_row_per_image(
    standalone, spark, cluster_images, model_files, oracle, tmp_path
):
    out = tmp_path / "scores.parquet"
    log = standalone.submit(
        ["--class", SCALA_EXAMPLE, jar_path(), cluster_images, "resnet20.pt", out],
        files=model_files,
    )
    cols, rows = read_parquet(spark, str(out))
    assert cols == ["path", "prediction", "label", "probability", "error"]
    check_rows(rows, oracle, "Scala example")
    assert model_loads(log) == EXECUTORS


def test_standalone_spark_submit_packages_from_the_dist_repository_scores_images(
    standalone, spark, cluster_images, model_files, oracle, tmp_path
):
    """`spark-submit --packages <coordinates> --repositories file://<dist/maven>`: no jar on the
    command line (`spark-internal`), the Scala example runs from the jar Ivy resolved, on the
    driver and on both executors."""
    if MISSING:
        pytest.skip(MISSING)
    out = tmp_path / "scores.parquet"
    app = ["--packages", COORDINATES, "--repositories", repo_url()]
    app += ["--class", SCALA_EXAMPLE, "spark-internal", cluster_images, "resnet20.pt", out]
    log = standalone.submit(app, conf=isolated_ivy(tmp_path / "ivy"), files=model_files)
    # From the dist repository, and nothing else (Spark and Scala are provided).
    assert resolved(log) == [(COORDINATES, "repo-1")], log[-4000:]
    cols, rows = read_parquet(spark, str(out))
    assert cols == ["path", "prediction", "label", "probability", "error"]
    check_rows(rows, oracle, "Scala example from --packages")
    assert model_loads(log) == EXECUTORS


def test_standalone_scala_example_scores_a_model_from_the_mlflow_registry(
    standalone, spark, cluster_images, model, oracle, tmp_path
):
    """`models:/cifar@champion` as the Scala example's model path, on two executor JVMs: the
    driver resolves the alias once through a real `mlflow server` (REST, no Python), the
    executors read that version's file (the server's local artifact root, through Hadoop's file
    system) into their node caches; one load per executor, every row as the file itself gives."""
    import mlflow
    from mlflow_server import mlflow_server

    store = tmp_path / "mlflow"
    store.mkdir()
    with mlflow_server(store, "--default-artifact-root", str(store / "artifacts")) as url:
        mlflow.set_tracking_uri(url)
        try:
            files = tmp_path / "model"
            files.mkdir()
            for f in (model, model.replace(".pt", ".json")):
                (files / Path(f).name).write_bytes(Path(f).read_bytes())
            with mlflow.start_run() as run:
                mlflow.log_artifacts(str(files), "model")
            client = mlflow.MlflowClient()
            client.create_registered_model("cifar")
            v = client.create_model_version(
                "cifar", f"runs:/{run.info.run_id}/model", run.info.run_id
            )
            client.set_registered_model_alias("cifar", "champion", v.version)
            out = tmp_path / "scores.parquet"
            log = standalone.submit(
                [
                    "--class",
                    SCALA_EXAMPLE,
                    jar_path(),
                    cluster_images,
                    "models:/cifar@champion",
                    out,
                ],
                conf={"spark.torchspark.mlflow.trackingUri": url},
            )
        finally:
            mlflow.set_tracking_uri(None)
    # The example prints the transform's metrics: the version its job read.
    assert "model=models:/cifar@champion -> cifar version 1" in log, log[-4000:]
    cols, rows = read_parquet(spark, str(out))
    assert cols == ["path", "prediction", "label", "probability", "error"]
    check_rows(rows, oracle, "Scala example from models:/cifar@champion")
    assert model_loads(log) == EXECUTORS


# 40 s: make bench runs it; in make test the YARN client-mode test checks the same rule (the
# PySpark driver's model loads once per executor) on the cluster manager of the mission.
@pytest.mark.slow
def test_standalone_pyspark_driver_loads_the_model_once_per_executor(
    standalone, cluster_images, model_files, oracle, tmp_path
):
    out = tmp_path / "result.json"
    standalone.submit([DRIVER, "scenario", cluster_images, "resnet20.pt", out], files=model_files)
    check_driver(json.loads(out.read_text()), oracle)


def test_standalone_executor_killed_mid_job_loses_and_repeats_no_row(
    standalone, cluster_images, model_files, oracle, tmp_path
):
    out = tmp_path / "result.json"
    result = kill_an_executor_mid_job(
        standalone, cluster_images, "resnet20.pt", out, files=model_files
    )
    check_rows(result["rows"], oracle, f"after SIGKILL of executor {result['killed']}")
