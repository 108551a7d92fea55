"""Spark Connect 4.1 clients: ImageScorer/ImageFeaturizer, a Pipeline with save/load, and
mapInArrow, each checked against NativeModel in this process; TorchModel's regression against
PyTorch; TextEmbedder against sentence-transformers; metrics() and a server without the jar fail with errors that say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import torchspark
from torchspark import ImageFeaturizer, ImageScorer, NativeModel, TextEmbedder, TorchModel


def _files(spark, fixtures, glob="*"):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .load(str(fixtures / "images"))
    )


def _native(fixtures, model, glob="*"):
    """NativeModel's scores and features, by file name."""
    files = sorted((fixtures / "images").glob(glob))
    blobs = [f.read_bytes() for f in files]
    m = NativeModel(model)
    s, f = m.score(blobs).to_pydict(), m.featurize(blobs).to_pydict()
    return {
        p.name: (s["prediction"][i], np.array(s["probability"][i]), np.array(f["features"][i]))
        for i, p in enumerate(files)
    }


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_transformers_over_connect_match_native_model(spark, fixtures, model):
    native = _native(fixtures, model)
    df = _files(spark, fixtures)
    scored = ImageScorer(modelPath=model, inputCol="content", batchSize=8).transform(df)
    rows = scored.select("path", "prediction", "probability").collect()
    assert len(rows) == len(native)
    for r in rows:
        pred, prob, _ = native[_name(r.path)]
        assert r.prediction == float(pred)
        np.testing.assert_array_equal(np.float32(r.probability.toArray()), np.float32(prob))
    feats = ImageFeaturizer(modelPath=model, inputCol="content").transform(df)
    for r in feats.select("path", "features").collect():
        f = native[_name(r.path)][2]
        np.testing.assert_array_equal(np.float32(r.features.toArray()), np.float32(f))


def test_pipeline_fits_saves_and_loads_over_connect(spark, fixtures, model, tmp_path):
    df = _files(spark, fixtures, "digit_*.png").withColumn(
        "label", F.regexp_extract("path", r"label(\d)", 1).cast("double")
    )
    fitted = Pipeline(
        stages=[ImageFeaturizer(modelPath=model, inputCol="content"), LogisticRegression()]
    ).fit(df)
    before = fitted.transform(df).select("path", "features", "prediction").collect()
    native = _native(fixtures, model, "digit_*.png")
    assert len(before) == len(native) == 24
    for r in before:  # the estimator trained on NativeModel's features
        np.testing.assert_array_equal(
            np.float32(r.features.toArray()), np.float32(native[_name(r.path)][2])
        )
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    back = PipelineModel.load(str(tmp_path / "pipeline"))
    assert isinstance(back.stages[0], ImageFeaturizer)
    # The saved stage carries its model (docs/saved-pipelines.md): the loaded one reads the copy.
    loaded_path = back.stages[0].getModelPath()
    assert loaded_path.startswith(str(tmp_path / "pipeline" / "stages")), loaded_path
    assert loaded_path.endswith("/model/resnet20.pt"), loaded_path
    after = back.transform(df).select("path", "prediction").collect()
    assert sorted((r.path, r.prediction) for r in after) == sorted(
        (r.path, r.prediction) for r in before
    )
    scorer = ImageScorer(modelPath=model, inputCol="content", topK=2)
    scorer.write().overwrite().save(str(tmp_path / "scorer"))
    loaded = ImageScorer.load(str(tmp_path / "scorer"))
    assert loaded.getTopK() == 2 and loaded.uid == scorer.uid
    top = loaded.transform(_files(spark, fixtures, "digit_1*.png")).select("top_k").first()
    assert len(top.top_k) == 2


def test_map_in_arrow_over_connect_matches_native_model(spark, fixtures, model):
    native = _native(fixtures, model)
    out = (
        _files(spark, fixtures)
        .select("path", "content")
        .mapInArrow(torchspark.score_arrow(model), torchspark.SCORE_SCHEMA)
        .collect()
    )
    assert len(out) == len(native)
    for r in out:
        pred, prob, _ = native[_name(r[0])]
        assert r[1] == pred
        np.testing.assert_array_equal(np.float32(r[3]), np.float32(prob))


def test_torch_model_regression_over_connect(spark, general, diabetes):
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.feature import VectorAssembler

    names = diabetes["feature_names"]
    rows = [
        (i, float(y), *map(float, x)) for i, (x, y) in enumerate(zip(diabetes["X"], diabetes["y"]))
    ]
    schema = "id int, y double, " + ", ".join(f"`{n}` double" for n in names)
    df = VectorAssembler(inputCols=names, outputCol="features").transform(
        spark.createDataFrame(rows, schema)
    )
    out = TorchModel(modelPath=str(general / "diabetes_mlp.pt")).transform(df)
    got = sorted((r.id, r.prediction) for r in out.select("id", "prediction").collect())
    np.testing.assert_allclose([p for _, p in got], diabetes["pred"], rtol=0, atol=1e-5)
    rmse = RegressionEvaluator(labelCol="y", predictionCol="prediction").evaluate(out)
    assert rmse == pytest.approx(diabetes["rmse"], abs=1e-4)


def test_sql_function_from_server_configuration_over_connect(spark, diabetes):
    # spark.torchspark.functions.diabetes on the server: the client only writes SQL.
    rows = [(i, [float(v) for v in x]) for i, x in enumerate(diabetes["X"])]
    spark.createDataFrame(rows, "id int, x array<double>").createOrReplaceTempView("patients")
    out = spark.sql("SELECT id, diabetes(x).prediction AS p FROM patients ORDER BY id").collect()
    np.testing.assert_allclose([r.p for r in out], diabetes["pred"], rtol=0, atol=1e-5)
    # Over a relation Spark does not fold into a local table, the batched plan runs it.
    plan = spark.sql("EXPLAIN SELECT diabetes(array(id * 1.0D)) FROM range(3)").collect()[0][0]
    assert "TorchEval" in plan, plan


def test_text_embedder_over_connect_matches_sentence_transformers(spark):
    # Made by tests/fixtures/make_text_fixtures.py (`make test` makes them first).
    text = Path(__file__).resolve().parents[2] / "tests/fixtures/out/text"
    ref = json.loads((text / "text_expected.json").read_text())
    df = spark.createDataFrame(list(enumerate(ref["texts"])), "id int, text string")
    out = TextEmbedder(modelPath=str(text / "minilm.pt"), batchSize=16).transform(df)
    got = [r.embedding.toArray() for r in sorted(out.select("id", "embedding").collect())]
    np.testing.assert_allclose(got, ref["embeddings"], rtol=0, atol=1e-5)


def test_metrics_over_connect_say_they_are_unavailable(spark, fixtures, model):
    scorer = ImageScorer(modelPath=model, inputCol="content")
    scorer.transform(_files(spark, fixtures, "digit_1*.png")).count()
    with pytest.raises(torchspark.TorchSparkError, match="unavailable over Spark Connect"):
        scorer.metrics()


def test_server_without_the_jar_says_to_start_it_with_jars(servers, fixtures, model):
    other = SparkSession.builder.remote(servers[1]).create()
    try:
        with pytest.raises(torchspark.TorchSparkError, match=r"start it with --jars .*\.jar"):
            ImageScorer(modelPath=model, inputCol="content").transform(_files(other, fixtures))
    finally:
        other.stop()
