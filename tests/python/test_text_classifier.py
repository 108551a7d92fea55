"""TextClassifier (issue 30): a BERT (WordPiece) sequence classifier exported from a `transformers`
folder, single-label (softmax) and multi-label (sigmoid), against Hugging Face's
text-classification pipeline (`top_k=None`, `function_to_apply` by `problem_type`) and PyTorch's
logits, on texts with CJK, emoji, accents, "" and over-long input: logits and probabilities
within 1e-5, labels exact, identical at batch sizes 1, 7 and 64. Surfaces: NativeModel.predict
and the Scala transformer through PySpark (Spark 4.1), in a Pipeline, with
MulticlassClassificationEvaluator. Fixtures: tests/fixtures/make_textcls_fixtures.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator

import torchspark
from conftest import FIXTURES, ROOT
from torchspark import NativeModel, TextClassifier

MODELS = ("single", "multi")


@pytest.fixture(scope="module")
def cls():
    out = FIXTURES / "text" / "cls"
    if not (out / "cls_expected.json").exists():
        if not (FIXTURES / "text" / "text_expected.json").exists():
            script, dest = "make_text_fixtures.py", FIXTURES / "text"
        else:
            script, dest = "make_textcls_fixtures.py", out
        python = os.environ.get("TORCHSPARK_FIXTURE_PYTHON", sys.executable)
        subprocess.run([python, str(ROOT / "tests/fixtures" / script), str(dest)], check=True)
    return out


@pytest.fixture(scope="module")
def expected(cls) -> dict:
    return json.loads((cls / "cls_expected.json").read_text(encoding="utf-8"))


def _oracle(expected: dict, name: str):
    """(logits [n, K], probabilities [n, K] from the pipeline, in label order, labels [n])."""
    e = expected[name]
    logits = np.asarray(e["logits"], np.float64)
    probs = np.asarray([[row[x] for x in e["labels"]] for row in e["pipeline"]], np.float64)
    labels = [max(row, key=row.get) for row in e["pipeline"]]
    return logits, probs, labels


def _close(actual, want, atol=1e-5):
    actual, want = np.asarray(actual, np.float64), np.asarray(want, np.float64)
    assert actual.shape == want.shape, (actual.shape, want.shape)
    diff = np.abs(actual - want).max()
    assert diff <= atol, f"max difference {diff} (tolerance {atol})"


def test_export_writes_labels_and_the_activation_of_problem_type(cls, expected):
    for name, act in (("single", "softmax"), ("multi", "sigmoid")):
        spec = json.loads((cls / f"{name}.json").read_text())
        outs = {o["name"]: o for o in spec["outputs"]}
        assert list(outs) == ["prediction", "probability", "predicted_label", "top_k", "logits"]
        assert outs["predicted_label"]["labels"] == expected[name]["labels"]
        assert outs["probability"]["post"] == [{"op": act}] == outs["top_k"]["post"]
        assert "post" not in outs["logits"]
        assert (cls / spec["inputs"][0]["tokenizer"]).is_file()


@pytest.mark.parametrize("name", MODELS)
def test_native_model_matches_the_pipeline_at_batch_sizes_1_7_64(cls, expected, name):
    logits, probs, labels = _oracle(expected, name)
    table = pa.table({"text": expected["texts"]})
    model = NativeModel(str(cls / f"{name}.pt"))
    k = len(expected[name]["labels"])
    results = {}
    for bs in (1, 7, 64):
        out = model.predict(table, batch_size=bs, top_k=k).to_pydict()
        assert out["error"] == [None] * len(logits)
        _close(out["logits"], logits)
        _close(out["probability"], probs)
        assert out["predicted_label"] == labels
        assert out["prediction"] == [float(expected[name]["labels"].index(x)) for x in labels]
        for row, want in zip(out["top_k"], expected[name]["pipeline"]):
            assert [d["label"] for d in row] == sorted(want, key=want.get, reverse=True)
            _close([d["probability"] for d in row], sorted(want.values(), reverse=True))
        results[bs] = out
    # Batch invariance: the same classes and order; values within 1e-5 (not bit-identical:
    # another padded length is another GEMM shape, whose float sums round differently).
    for bs in (7, 64):
        for col in ("prediction", "predicted_label"):
            assert results[bs][col] == results[1][col]
        assert [[d["index"] for d in r] for r in results[bs]["top_k"]] == [
            [d["index"] for d in r] for r in results[1]["top_k"]
        ]
        _close(results[bs]["logits"], results[1]["logits"])


def test_over_long_texts_are_truncated_like_the_pipeline_and_counted(cls, expected):
    cut = sum(expected["single"]["truncated"])
    assert expected["single"]["truncated"][-1] and cut >= 2
    out = NativeModel(str(cls / "single.pt")).predict(pa.table({"text": expected["texts"]}))
    assert out.schema.metadata[b"torchspark.truncated_rows"] == str(cut).encode()


@pytest.mark.parametrize("name", MODELS)
def test_text_classifier_in_spark_matches_the_pipeline_at_batch_sizes_1_7_64(
    spark, cls, expected, name
):
    logits, probs, labels = _oracle(expected, name)
    rows = [(i, t) for i, t in enumerate(expected["texts"])]
    df = spark.createDataFrame(rows, "id int, text string").repartition(3)
    seen = {}
    for bs in (1, 7, 64):
        clf = TextClassifier(modelPath=str(cls / f"{name}.pt"), batchSize=bs, topK=2)
        out = sorted(clf.transform(df).collect(), key=lambda r: r.id)
        assert [r.predicted_label for r in out] == labels
        _close([r.probability.toArray() for r in out], probs)
        assert [r.prediction for r in out] == [float(np.argmax(p)) for p in logits]
        assert all(len(r.top_k) == 2 and r.top_k[0].label == r.predicted_label for r in out)
        assert "logits" not in clf.transform(df).columns
        seen[bs] = out
    for bs in (7, 64):
        assert [(r.prediction, r.predicted_label) for r in seen[bs]] == [
            (r.prediction, r.predicted_label) for r in seen[1]
        ]
        assert [[t["index"] for t in r.top_k] for r in seen[bs]] == [
            [t["index"] for t in r.top_k] for r in seen[1]
        ]


def test_text_classifier_in_a_saved_pipeline_with_the_evaluator(spark, cls, expected, tmp_path):
    _, _, labels = _oracle(expected, "single")
    names = expected["single"]["labels"]
    rows = [(t, float(names.index(x))) for t, x in zip(expected["texts"], labels)]
    df = spark.createDataFrame(rows, "text string, label double")
    clf = TextClassifier(
        modelPath=str(cls / "single.pt"), inputCol="text", topK=0, predictedLabelCol="name"
    )
    model = Pipeline(stages=[clf]).fit(df)
    model.write().overwrite().save(str(tmp_path / "p"))
    out = PipelineModel.load(str(tmp_path / "p")).transform(df)
    assert "top_k" not in out.columns and "name" in out.columns
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    assert acc == 1.0


def test_text_classifier_refuses_an_embedding_spec_naming_what_it_declares(spark, cls):
    df = spark.createDataFrame([("a",)], "text string")
    minilm = cls.parent / "minilm.pt"
    with pytest.raises(Exception, match=r"TextClassifier needs exactly one input of kind text"):
        TextClassifier(modelPath=str(minilm)).transform(df)


def test_export_refuses_a_folder_that_is_not_a_sequence_classifier(cls, tmp_path):
    with pytest.raises(ValueError, match=r"modules.json: a sentence-transformers folder"):
        torchspark.export_text_model(
            cls.parent / "src", tmp_path / "x.pt", task="text-classification"
        )
    folder = tmp_path / "base"
    folder.mkdir()
    for f in (cls / "single").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: architectures \['BertModel'\]"):
        torchspark.export_text_model(folder, tmp_path / "y.pt", task="text-classification")
    config["architectures"] = ["BertForSequenceClassification"]
    config["problem_type"] = "regression"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"problem_type 'regression' is not supported"):
        torchspark.export_text_model(folder, tmp_path / "z.pt", task="text-classification")


def test_text_classifier_keeps_a_null_row_with_its_reason(spark, cls):
    df = spark.createDataFrame([(0, "fine"), (1, None)], "id int, text string")
    clf = TextClassifier(modelPath=str(cls / "multi.pt"), handleInvalid="keep")
    out = sorted(clf.transform(df).collect(), key=lambda r: r.id)
    assert out[0].error is None and out[0].predicted_label is not None
    assert out[1].predicted_label is None and out[1].probability is None
    assert re.search(r"row \d+: input `input_ids` \(column `?text`?\): null", out[1].error)
