"""Saved pipelines carry their model (docs/saved-pipelines.md), from Python: a
Pipeline(ImageFeaturizer, LogisticRegression) saved with embedModel (the default) loads and
scores the same with the original model file gone; embedModel=False saves by reference; a copy
that fails its checksum is refused at load on the driver, naming the stage, file and digests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.sql import functions as F

from torchspark import ImageFeaturizer
from torchspark.errors import ModelLoadError


def _digits(spark, fixtures):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "digit_*.png")
        .load(str(fixtures / "images"))
        .withColumn("label", F.regexp_extract("path", r"label(\d)", 1).cast("double"))
        .coalesce(1)
    )


def _own_model(fixtures, where: Path) -> Path:
    """ResNet-20 and its spec in a folder of their own: the original that the test deletes."""
    where.mkdir()
    for name in ("resnet20.pt", "resnet20.json"):
        shutil.copy(fixtures / name, where / name)
    return where / "resnet20.pt"


def _fit_and_save(df, model: str, to: str, embed: bool = True):
    fitted = Pipeline(
        stages=[
            ImageFeaturizer(modelPath=model, inputCol="content", outputCol="f", embedModel=embed),
            LogisticRegression(maxIter=5, featuresCol="f"),
        ]
    ).fit(df)
    fitted.write().overwrite().save(to)
    return _rows(fitted.transform(df))


def _rows(df):
    return [tuple(r) for r in df.select("path", "prediction").orderBy("path").collect()]


def _stage_dir(pipeline: Path) -> Path:
    return next(p for p in (pipeline / "stages").iterdir() if "ImageFeaturizer" in p.name)


def test_saved_pipeline_scores_the_same_with_the_original_model_file_gone(
    spark, fixtures, tmp_path
):
    df = _digits(spark, fixtures)
    model = _own_model(fixtures, tmp_path / "src")
    before = _fit_and_save(df, str(model), str(tmp_path / "p"))
    shutil.rmtree(model.parent)
    back = PipelineModel.load(str(tmp_path / "p"))
    stage = back.stages[0]
    assert isinstance(stage, ImageFeaturizer) and stage.getEmbedModel()
    assert stage.getModelPath() == str(_stage_dir(tmp_path / "p") / "model" / "resnet20.pt")
    after = _rows(back.transform(df))
    assert len(after) == 24 and after == before
    manifest = json.loads((_stage_dir(tmp_path / "p") / "model" / "manifest.json").read_text())
    want = hashlib.sha256((fixtures / "resnet20.pt").read_bytes()).hexdigest()
    assert manifest["files"][0] == {
        "name": "resnet20.pt",
        "bytes": (fixtures / "resnet20.pt").stat().st_size,
        "sha256": want,
    }


def test_embed_model_false_saves_by_reference(spark, fixtures, tmp_path):
    df = _digits(spark, fixtures)
    model = _own_model(fixtures, tmp_path / "src")
    _fit_and_save(df, str(model), str(tmp_path / "p"), embed=False)
    assert not (_stage_dir(tmp_path / "p") / "model").exists()
    stage = PipelineModel.load(str(tmp_path / "p")).stages[0]
    assert stage.getModelPath() == str(model) and not stage.getEmbedModel()


def test_rejects_a_saved_model_copy_that_fails_its_checksum(spark, fixtures, tmp_path):
    df = _digits(spark, fixtures)
    _fit_and_save(df, str(_own_model(fixtures, tmp_path / "src")), str(tmp_path / "p"))
    copy = _stage_dir(tmp_path / "p") / "model" / "resnet20.pt"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as e:
        PipelineModel.load(str(tmp_path / "p"))
    msg = str(e.value)
    assert "fails its checksum" in msg and _stage_dir(tmp_path / "p").name in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg
    assert hashlib.sha256((fixtures / "resnet20.pt").read_bytes()).hexdigest() in msg
