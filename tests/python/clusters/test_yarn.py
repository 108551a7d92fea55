"""torchspark on YARN + HDFS, the HDInsight shape: MiniDFSCluster (1 datanode) and
MiniYARNCluster (1 NodeManager) in one harness JVM (tests/cluster, `make cluster-harness`),
started once for this module on 127.0.0.1. Images and model are on hdfs:// (`modelPath=hdfs://...`, no --files); spark-submit runs
in cluster deploy mode (scenarios a, b) and client mode (c, and an executor container
SIGKILLed mid-job). Same checks as the standalone tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from spark_clusters import (
    DRIVER,
    EXAMPLE,
    EXECUTORS,
    SCALA_EXAMPLE,
    Yarn,
    app_id,
    check_driver,
    check_rows,
    kill_an_executor_mid_job,
    model_loads,
    read_parquet,
    session_failed,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def yarn(request, tmp_path_factory, cluster_images, model_files):
    before = request.session.testsfailed
    c = None
    try:
        c = Yarn(
            tmp_path_factory.mktemp("yarn"),
            put={
                "/data/images": cluster_images,
                **{f"/models/{Path(f).name}": Path(f) for f in model_files},
            },
        )
        yield c
    finally:
        if c is not None:
            kept = c.close(failed=session_failed(request, before))
            if kept:
                print(f"YARN cluster logs kept in {kept}", file=sys.stderr)


# ---- YARN + HDFS -------------------------------------------------------------------------------


# 47 s: make bench runs it; in make test the standalone Scala example and the YARN Python
# cluster-mode example cover its two halves (the Scala job; cluster mode reading HDFS).
@pytest.mark.slow
def test_yarn_cluster_mode_scala_example_reads_and_writes_hdfs(yarn, spark, oracle):
    from torchspark import jar_path

    out = f"{yarn.fs}/out/scala.parquet"
    log = yarn.submit(
        ["--class", SCALA_EXAMPLE, jar_path(), f"{yarn.fs}/data/images", yarn.model, out],
        deploy_mode="cluster",
    )
    cols, rows = read_parquet(spark, out)
    assert cols == ["path", "prediction", "label", "probability", "error"]
    assert all(str(p).startswith("hdfs://") for p, _, _ in rows)
    check_rows(rows, oracle, "Scala example on YARN")
    assert model_loads(yarn.driver_stdout(app_id(log))) == EXECUTORS


def test_yarn_cluster_mode_python_example_reads_and_writes_hdfs(yarn, spark, oracle):
    out = f"{yarn.fs}/out/python.parquet"
    log = yarn.submit(
        [EXAMPLE, f"{yarn.fs}/data/images", yarn.model, out],
        deploy_mode="cluster",
    )
    cols, rows = read_parquet(spark, out)
    assert cols == ["path", "prediction", "label", "probability", "error"]
    check_rows(rows, oracle, "Python example on YARN")
    assert model_loads(yarn.driver_stdout(app_id(log))) == EXECUTORS


def test_yarn_client_mode_pyspark_driver_loads_the_model_once_per_executor(yarn, oracle, tmp_path):
    out = tmp_path / "result.json"
    yarn.submit(
        [DRIVER, "scenario", f"{yarn.fs}/data/images", yarn.model, out],
        deploy_mode="client",
    )
    check_driver(json.loads(out.read_text()), oracle)


# 67 s: make bench runs it (the standalone kill in make test covers the same fault class).
@pytest.mark.slow
def test_yarn_executor_killed_mid_job_loses_and_repeats_no_row(yarn, oracle, tmp_path):
    # YARN reports the killed container; Spark reruns its tasks and asks YARN for a new one.
    result = kill_an_executor_mid_job(
        yarn, f"{yarn.fs}/data/images", yarn.model, tmp_path / "result.json"
    )
    check_rows(result["rows"], oracle, f"after SIGKILL of YARN executor {result['killed']}")


def test_a_pipeline_saved_on_hdfs_scores_with_the_original_model_gone(
    yarn, spark, fixtures, tmp_path
):
    # Saved from a local session into HDFS with its model (embedModel's default); the original
    # deleted, it loads from HDFS pointing at the hdfs:// copy, fetched through the node cache.
    import shutil

    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.sql import functions as F

    from torchspark import ImageFeaturizer

    src = tmp_path / "src"
    src.mkdir()
    for name in ("resnet20.pt", "resnet20.json"):
        shutil.copy(fixtures / name, src / name)
    df = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "digit_*.png")
        .load(str(fixtures / "images"))
        .withColumn("label", F.regexp_extract("path", r"label(\d)", 1).cast("double"))
        .coalesce(1)
    )
    fitted = Pipeline(
        stages=[
            ImageFeaturizer(modelPath=str(src / "resnet20.pt"), inputCol="content", outputCol="f"),
            LogisticRegression(maxIter=5, featuresCol="f"),
        ]
    ).fit(df)
    saved = f"{yarn.fs}/saved/pipeline"
    fitted.write().overwrite().save(saved)
    before = fitted.transform(df).select("path", "prediction").orderBy("path").collect()
    shutil.rmtree(src)
    back = PipelineModel.load(saved)
    path = back.stages[0].getModelPath()
    assert path.startswith(f"{yarn.fs}/saved/pipeline/stages/") and path.endswith(
        "/model/resnet20.pt"
    )
    after = back.transform(df).select("path", "prediction").orderBy("path").collect()
    assert len(after) == 24 and after == before
