"""The DataFrame API (py4j wrappers over the Scala transformers) and the Python-worker helpers,
on a real local[2] SparkSession, against PyTorch's numbers and against each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.sql import functions as F

import torchspark
from conftest import tol
from torchspark import ImageFeaturizer, ImageScorer, TorchModel


def _files(spark, fixtures, glob="*"):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .load(str(fixtures / "images"))
    )


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_dataframe_scores_like_pytorch(spark, fixtures, expected, model):
    out = ImageScorer(modelPath=model, inputCol="content", batchSize=8).transform(
        _files(spark, fixtures)
    )
    rows = out.select("path", "prediction", "probability", "predictedLabel").collect()
    assert len(rows) == len(expected)
    for r in rows:
        n = _name(r.path)
        e = np.array(expected[n]["resnet20"]["probability"])
        assert np.abs(r.probability.toArray() - e).max() <= tol(n), n
        assert r.prediction == float(e.argmax())


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
        r.path: (int(r.prediction), list(r.probability.toArray()))
        for r in ImageScorer(modelPath=model, inputCol="content")
        .transform(df)
        .select("path", "prediction", "probability")
        .collect()
    }
    rdd = df.select("path", "content").rdd.mapPartitions(torchspark.score_partitions(model))
    arrow = df.select("path", "content").mapInArrow(
        torchspark.score_arrow(model), torchspark.SCORE_SCHEMA
    )
    for rows in (rdd.collect(), arrow.collect()):
        assert len(rows) == len(jvm)
        for r in rows:
            pred, prob = jvm[r[0]]
            assert r[1] == pred
            # float32 values: the JVM widens them to double, Python keeps float32.
            np.testing.assert_array_equal(np.float32(r[3]), np.float32(prob))


def test_param_lists_mirror_scala(spark):
    from py4j.java_collections import JavaArray

    for cls in (ImageScorer, ImageFeaturizer, TorchModel):
        py = cls()
        java = py._java_obj
        java_params = {p.name(): p for p in java.params()}
        assert sorted(p.name for p in py.params) == sorted(java_params), cls.__name__
        for p in py.params:
            if py.hasDefault(p):
                value = java.getOrDefault(java_params[p.name])
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
    assert back.stages[0].getModelPath() == model
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
    with pytest.raises(Exception, match=r"row \d+: (invalid|truncated) PNG.*zz_bad"):
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
    rows = spark.sql("SELECT path, classify_image(content) AS s FROM imgs").collect()
    assert len(rows) == 10
    for r in rows:
        e = np.array(expected[_name(r.path)]["resnet20"]["probability"])
        assert r.s.prediction == int(e.argmax()) and r.s.error is None


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
