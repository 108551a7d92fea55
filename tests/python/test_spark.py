"""The DataFrame API (py4j wrappers over the Scala transformers) and the Python-worker helpers,
on a real local[2] SparkSession, against PyTorch's numbers and against each other."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T

import torchspark
from conftest import FIXTURES, tol
from torchspark import ImageFeaturizer, ImageScorer, TextEmbedder, TorchModel


def _files(spark, fixtures, glob="*"):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .load(str(fixtures / "images"))
    )


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# The score columns of ImageScorer and of the SQL functions (plan of issue 26): Spark ML's names
# and types on every surface.
TOP_K = T.ArrayType(
    T.StructType(
        [
            T.StructField("index", T.IntegerType()),
            T.StructField("label", T.StringType()),
            T.StructField("probability", T.DoubleType()),
        ]
    )
)


def _types(schema: T.StructType, names) -> dict:
    """The columns' types, every field and element nullable (names and types are the contract;
    where a value cannot be null is not)."""
    return {n: _nullable(schema[n].dataType) for n in names}


def _nullable(t):
    """`t` with every field nullable: Spark's DDL strings and mapInArrow have no NOT NULL."""
    if isinstance(t, T.StructType):
        return T.StructType([T.StructField(f.name, _nullable(f.dataType)) for f in t.fields])
    if isinstance(t, T.ArrayType):
        return T.ArrayType(_nullable(t.elementType))
    return t


def test_dataframe_scores_like_pytorch(spark, fixtures, expected, model):
    labels = json.loads((fixtures / "resnet20.json").read_text())["labels"]
    out = ImageScorer(modelPath=model, inputCol="content", batchSize=8, topK=3).transform(
        _files(spark, fixtures)
    )
    assert _types(out.schema, ["prediction", "probability", "predicted_label", "top_k"]) == {
        "prediction": T.DoubleType(),
        "probability": VectorUDT(),
        "predicted_label": T.StringType(),
        "top_k": TOP_K,
    }
    rows = out.select("path", "prediction", "probability", "predicted_label", "top_k").collect()
    assert len(rows) == len(expected)
    for r in rows:
        n = _name(r.path)
        e = np.array(expected[n]["resnet20"]["probability"])
        assert np.abs(r.probability.toArray() - e).max() <= tol(n), n
        assert r.prediction == float(e.argmax())
        assert r.predicted_label == labels[int(e.argmax())], n
        assert [t["index"] for t in r.top_k] == list(np.argsort(-r.probability.toArray())[:3]), n
        assert [t["label"] for t in r.top_k] == [labels[t["index"]] for t in r.top_k], n
        assert [t["probability"] for t in r.top_k] == [
            r.probability[t["index"]] for t in r.top_k
        ], n


def test_image_scorer_keeps_the_old_column_names_only_at_default_params(spark, fixtures, model):
    # The Python wrapper's defaults reach the JVM (PySpark sends them): at the new defaults the
    # old columns are copies for one release; a param the user sets has no copy.
    df = _files(spark, fixtures, "digit_0*.png")
    at_defaults = ImageScorer(modelPath=model, inputCol="content").transform(df)
    names = at_defaults.columns
    assert {"predicted_label", "top_k", "predictedLabel", "topK"} <= set(names), names
    for r in at_defaults.collect():
        assert r.predictedLabel == r.predicted_label and r.topK == r.top_k
    set_label = ImageScorer(modelPath=model, inputCol="content", predictedLabelCol="name")
    names = set_label.transform(df).columns
    assert "name" in names and "topK" in names, names
    assert "predictedLabel" not in names and "predicted_label" not in names, names


def test_bf16_opt_in_scores_like_pytorch_bf16(spark, fixtures, expected, model):
    params = str(fixtures / "resnet20_params.pt")  # the same weights, exported unfrozen
    out = ImageScorer(modelPath=params, inputCol="content", precision="bf16").transform(
        _files(spark, fixtures, "*.png")
    )
    worst16 = worst32 = 0.0
    for r in out.select("path", "probability").collect():
        e = expected[_name(r.path)]["resnet20"]
        p = r.probability.toArray()
        worst16 = max(worst16, np.abs(p - np.array(e["probability_bf16"])).max())
        worst32 = max(worst32, np.abs(p - np.array(e["probability"])).max())
    assert worst16 <= 6e-2  # bf16 rounding: see the Rust test of the same bound
    assert worst32 > 1e-5  # it did not run in fp32
    frozen = ImageScorer(modelPath=model, inputCol="content", precision="bf16")
    with pytest.raises(Exception, match=r"freeze=False"):
        frozen.transform(_files(spark, fixtures, "*.png")).collect()


def test_dataframe_featurizes_like_pytorch(spark, fixtures, expected, model):
    out = ImageFeaturizer(modelPath=model, inputCol="content").transform(
        _files(spark, fixtures, "*.png")
    )
    for r in out.select("path", "features").collect():
        n = _name(r.path)
        e = np.array(expected[n]["resnet20"]["features"])
        assert np.abs(r.features.toArray() - e).max() <= 1e-5 * max(1.0, np.abs(e).max())


def test_all_three_paths_agree_exactly(spark, fixtures, model):
    df = _files(spark, fixtures).repartition(3)
    jvm = {
        r.path: r
        for r in ImageScorer(modelPath=model, inputCol="content")
        .transform(df)
        .select("path", "prediction", "probability", "predicted_label", "top_k")
        .collect()
    }
    score_schema = spark.createDataFrame([], torchspark.SCORE_SCHEMA).schema
    rdd = (
        df.select("path", "content")
        .rdd.mapPartitions(torchspark.score_partitions(model))
        .toDF(torchspark.SCORE_SCHEMA)
    )
    arrow = df.select("path", "content").mapInArrow(
        torchspark.score_arrow(model), torchspark.SCORE_SCHEMA
    )
    for out in (rdd, arrow):
        assert out.schema == score_schema
        rows = out.collect()
        assert len(rows) == len(jvm)
        for r in rows:
            want = jvm[r.path]
            assert r.prediction == want.prediction and r.predicted_label == want.predicted_label
            # float32 values: the JVM widens them to double, Python keeps float32.
            np.testing.assert_array_equal(
                np.float32(r.probability), np.float32(want["probability"])
            )
            # top_k's probabilities: float32 widened to double on every path, so equal.
            assert r.top_k == want.top_k and r.error is None


def test_score_schema_is_the_score_presets_schema(spark, model):
    # SCORE_SCHEMA is describe(spec, "score") in Spark's types (top_k's probability a double,
    # as ImageScorer's), after the key column `path`, `error` last.
    from torchspark.workers import _spark_score_column, spark_type

    want = spark.createDataFrame([], torchspark.SCORE_SCHEMA).schema
    from torchspark.workers import _SCORE_ORDER

    # In SCORE_SCHEMA's order: the first four columns where they were before top_k came.
    described = sorted(
        torchspark.describe(model, "score"), key=lambda f: _SCORE_ORDER.get(f.name, 99)
    )
    assert [f.name for f in described] == [
        "prediction",
        "predicted_label",
        "probability",
        "top_k",
        "error",
    ]
    fields = [T.StructField("path", T.StringType())] + [
        T.StructField(f.name, spark_type(_spark_score_column(f.name, pa.nulls(0, f.type)).type))
        for f in described
    ]
    assert _nullable(T.StructType(fields)) == want
    # And the batches score_arrow yields carry exactly these types.
    png = (FIXTURES / "images" / "digit_00_label0.png").read_bytes()
    batch = pa.record_batch({"path": ["a"], "content": [png]})
    (got,) = torchspark.score_arrow(model)(iter([batch]))
    assert (
        _nullable(T.StructType([T.StructField(f.name, spark_type(f.type)) for f in got.schema]))
        == want
    )


def test_param_lists_mirror_scala(spark):
    from py4j.java_collections import JavaArray

    # The jar's own classes and defaults (a fresh Java object: the wrapper sends its params and
    # defaults only when it transforms), and PySpark sends the Python defaults to the JVM: they
    # must be the JVM's, or a default differs by the API it was set from.
    for cls in (ImageScorer, ImageFeaturizer, TorchModel, TextEmbedder):
        py = cls()
        java = py._new_java_obj(f"dev.torchspark.{cls.__name__}", "mirror")
        java_params = {p.name(): p for p in java.params()}
        assert sorted(p.name for p in py.params) == sorted(java_params), cls.__name__
        for p in py.params:
            jp = java_params[p.name]
            assert py.hasDefault(p) == java.hasDefault(jp), (cls.__name__, p.name)
            if py.hasDefault(p):
                value = java.getOrDefault(jp)
                value = list(value) if isinstance(value, JavaArray) else value
                assert py.getOrDefault(p) == value, (cls.__name__, p.name)


def test_python_pipeline_save_load(spark, fixtures, model, tmp_path):
    df = _files(spark, fixtures, "digit_*.png").withColumn(
        "label", F.regexp_extract("path", r"label(\d)", 1).cast("double")
    )
    pipe = Pipeline(
        stages=[
            ImageFeaturizer(modelPath=model, inputCol="content"),
            LogisticRegression(maxIter=30),
        ]
    )
    fitted = pipe.fit(df)
    fitted.write().overwrite().save(str(tmp_path / "p"))
    back = PipelineModel.load(str(tmp_path / "p"))
    assert isinstance(back.stages[0], ImageFeaturizer)
    # Saved with its model (embedModel's default): loaded pointing at the stage's copy.
    assert back.stages[0].getModelPath().startswith(str(tmp_path / "p" / "stages"))
    assert back.stages[0].getModelPath().endswith("/model/resnet20.pt")
    a = [r.prediction for r in fitted.transform(df).select("prediction").collect()]
    b = [r.prediction for r in back.transform(df).select("prediction").collect()]
    assert a == b and len(a) == 24
    scorer = ImageScorer(modelPath=model, inputCol="content", topK=2)
    scorer.write().overwrite().save(str(tmp_path / "s"))
    assert ImageScorer.load(str(tmp_path / "s")).getTopK() == 2


def _dev_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k.split(".")[0] == "dev"}


def test_saved_pipeline_loads_beside_a_users_dev_package(spark, fixtures, model, tmp_path):
    # A user's own package named `dev` is the one `import dev` gives, before and after PySpark
    # looked up dev.torchspark.ImageFeaturizer to load the saved stage.
    user = tmp_path / "user"
    (user / "dev").mkdir(parents=True)
    (user / "dev" / "__init__.py").write_text('OWNER = "user"\n')
    (user / "dev" / "mine.py").write_text("VALUE = 7\n")
    saved = _dev_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(user))
    try:
        import dev.mine

        stage = ImageFeaturizer(modelPath=model, inputCol="content", batchSize=4)
        PipelineModel(stages=[stage]).write().overwrite().save(str(tmp_path / "p"))
        back = PipelineModel.load(str(tmp_path / "p")).stages[0]
        assert isinstance(back, ImageFeaturizer) and back.getBatchSize() == 4
        assert sys.modules["dev"] is dev and dev.OWNER == "user" and dev.mine.VALUE == 7
        assert sys.modules["dev.torchspark"].ImageFeaturizer is ImageFeaturizer
    finally:
        sys.path.remove(str(user))
        for name in _dev_modules():
            del sys.modules[name]
        sys.modules.update(saved)
    df = _files(spark, fixtures, "digit_0*.png")
    # Equal within float32 rounding: the rows may meet other rows in a forward pass.
    a = np.array([r.features for r in stage.transform(df).orderBy("path").collect()])
    b = np.array([r.features for r in back.transform(df).orderBy("path").collect()])
    assert len(a) > 0 and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _bad_dir(fixtures, tmp_path):
    for p in sorted((fixtures / "images").glob("digit_0*.png"))[:4]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return str(tmp_path)


def test_bad_input_error_mode_names_the_row(spark, fixtures, model, tmp_path):
    df = spark.read.format("binaryFile").load(_bad_dir(fixtures, tmp_path))
    with pytest.raises(
        Exception,
        match=r"row \d+: input `image` \(column content\): (invalid|truncated) PNG.*zz_bad",
    ):
        ImageScorer(modelPath=model, inputCol="content").transform(df).collect()


def test_bad_input_keep_and_skip(spark, fixtures, model, tmp_path):
    df = spark.read.format("binaryFile").load(_bad_dir(fixtures, tmp_path))
    kept = ImageScorer(modelPath=model, inputCol="content", handleInvalid="keep").transform(df)
    rows = kept.select("path", "prediction", "error").collect()
    assert len(rows) == 5
    bad = [r for r in rows if r.error is not None]
    assert len(bad) == 1 and bad[0].prediction is None and "zz_bad" in bad[0].path
    skip = ImageScorer(modelPath=model, inputCol="content", handleInvalid="skip")
    assert skip.transform(df).count() == 4
    m = skip.metrics()
    assert m["rowsSkipped"] == 1 and m["rowsWithErrors"] == 1 and m["imagesScored"] == 4
    assert m["forwardTimeMs"] >= 0 and m["nativeTimeMs"] + 2 >= m["forwardTimeMs"]
    assert set(m) >= {
        "readTimeMs",
        "bridgeTimeMs",
        "preprocessTimeMs",
        "modelLoads",
        "decodeTimeMs",
    }
    assert m["resizeTimeMs"] == 0  # 32x32 PNGs, a spec without resize


def test_sql_udfs(spark, fixtures, expected, model):
    torchspark.register_udfs(spark, "classify_image", model)
    _files(spark, fixtures, "digit_1*.png").createOrReplaceTempView("imgs")
    out = spark.sql("SELECT path, classify_image(content) AS s FROM imgs")
    s = out.schema["s"].dataType
    assert s.names == ["prediction", "probability", "predicted_label", "top_k", "label", "error"]
    assert _types(s, s.names) == {
        "prediction": T.DoubleType(),
        "probability": T.ArrayType(T.FloatType()),
        "predicted_label": T.StringType(),
        "top_k": TOP_K,
        "label": T.StringType(),  # predicted_label's old name, for one release
        "error": T.StringType(),
    }
    rows = out.collect()
    assert len(rows) == 10
    labels = json.loads((fixtures / "resnet20.json").read_text())["labels"]
    for r in rows:
        e = np.array(expected[_name(r.path)]["resnet20"]["probability"])
        assert r.s.prediction == float(e.argmax()) and r.s.error is None
        assert r.s.predicted_label == r.s.label == labels[int(e.argmax())]
        assert [t["index"] for t in r.s.top_k] == list(np.argsort(-e)[:5])


def test_spark_submit_example_writes_one_row_per_image(spark, fixtures, model, tmp_path):
    out = tmp_path / "scores.parquet"
    submit = Path(sys.executable).parent / "spark-submit"  # this venv's pyspark
    cmd = [
        str(submit), "--master", "local[2]", "--class", "dev.torchspark.examples.ScoreImages",
        "--files", f"{model},{model[:-3]}.json", torchspark.jar_path(),
        str(fixtures / "images"), "resnet20.pt", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    df = spark.read.parquet(str(out))
    assert df.count() == len(list((fixtures / "images").iterdir()))
    assert set(df.columns) >= {"path", "prediction", "label", "probability"}
    assert df.filter("error IS NOT NULL").count() == 0
