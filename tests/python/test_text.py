"""Text on every Python-facing surface, against the Python `tokenizers` package (token ids,
exact) and sentence-transformers (all-MiniLM-L6-v2 embeddings, <= 1e-5): NativeModel.predict,
the PySpark TextEmbedder in a Pipeline, embed_arrow in mapInArrow and the SQL function; null
and non-UTF-8 rows named in `error`. One Spark session (conftest's), about 40 texts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import types as T

import torchspark
from conftest import FIXTURES, ROOT
from torchspark import NativeModel, TextEmbedder, embed_arrow

# A null row's reason, as every surface reports it: the row, the text input and its column.
NULL_ROW = r"row \d+: input `input_ids` \(column `?{col}`?\): null"


def _ensure_text():
    out = FIXTURES / "text"
    if not (out / "text_expected.json").exists():
        python = os.environ.get("TORCHSPARK_FIXTURE_PYTHON", sys.executable)
        subprocess.run(
            [python, str(ROOT / "tests/fixtures/make_text_fixtures.py"), str(out)], check=True
        )
    return out


@pytest.fixture(scope="module")
def text():
    """The folder with minilm.pt / ids.pt, their specs, the tokenizer and text_expected.json."""
    return _ensure_text()


@pytest.fixture(scope="module")
def reference(text) -> dict:
    """texts, ids (Python tokenizers), truncated, embeddings (sentence-transformers)."""
    return json.loads((text / "text_expected.json").read_text())


@pytest.fixture(scope="module")
def minilm(text) -> str:
    return str(text / "minilm.pt")


@pytest.fixture(scope="module")
def sentences(spark, reference):
    """id, text, label (even id: 1.0): the reference texts that fit in max_length (the long ones
    cost most of a forward pass; NativeModel's and embed_arrow's tests run them all)."""
    rows = [
        (i, t, float(i % 2 == 0))
        for i, (t, cut) in enumerate(zip(reference["texts"], reference["truncated"]))
        if not cut
    ]
    return spark.createDataFrame(rows, "id int, text string, label double").cache()


def _close(actual, expected, atol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = np.abs(actual - expected).max()
    assert diff <= atol, f"max difference {diff} (tolerance {atol})"


def _vec(v):
    """An ML Vector or an array as numpy."""
    return np.asarray(v.toArray() if hasattr(v, "toArray") else v, np.float64)


def test_native_model_token_ids_equal_python_tokenizers(text, reference):
    texts = reference["texts"]
    m = NativeModel(text / "ids.pt")
    # Strings and their UTF-8 bytes read the same; one bad byte sequence is that row's error.
    for col in (pa.array(texts, pa.string()), pa.array([t.encode() for t in texts], pa.binary())):
        out = m.predict(pa.table({"text": col}), batch_size=8)
        assert out.column("error").null_count == len(texts)
        ids = [[i for i in row if i != -1] for row in out.column("ids").to_pylist()]
        for k, (got, want) in enumerate(zip(ids, reference["ids"])):
            assert got == want, f"text {k} {texts[k][:40]!r}"
        truncated = out.schema.metadata[b"torchspark.truncated_rows"]
        assert int(truncated) == sum(reference["truncated"]) > 0
    bad = pa.table({"text": pa.array([b"ok", b"caf\xc3", None], pa.binary())})
    err = m.predict(bad, row_offset=10).column("error").to_pylist()
    assert err[0] is None
    assert re.search(r"row 11: input `input_ids` \(column `?text`?\): not UTF-8", err[1]), err[1]
    assert re.search(NULL_ROW.format(col="text").replace(r"\d+", "12"), err[2]), err[2]


def test_native_model_embeddings_match_sentence_transformers(minilm, reference):
    m = NativeModel(minilm)
    out = m.predict(pa.table({"text": reference["texts"]}), batch_size=8)
    assert out.schema.names == ["embedding", "error"]
    assert out.column("error").null_count == len(reference["texts"])
    got = np.array(out.column("embedding").to_pylist())
    _close(got, reference["embeddings"])
    assert got.shape[1] == 384


def test_text_embedder_in_a_pipeline_with_logistic_regression(
    spark, minilm, reference, sentences, tmp_path
):
    embedder = TextEmbedder(modelPath=minilm, outputCol="features", batchSize=16)
    assert (embedder.getInputCol(), embedder.getBatchSize()) == ("text", 16)
    fitted = Pipeline(stages=[embedder, LogisticRegression(maxIter=10)]).fit(sentences)
    out = fitted.transform(sentences)
    assert isinstance(out.schema["features"].dataType, VectorUDT)
    rows = sorted(out.select("id", "features", "prediction").collect())
    assert len(rows) == len(reference["texts"]) - sum(reference["truncated"])
    _close([_vec(r.features) for r in rows], [reference["embeddings"][r.id] for r in rows])
    # Saved and loaded in a PipelineModel: Spark finds the Python class from the Java one.
    PipelineModel(stages=[fitted.stages[0]]).write().overwrite().save(str(tmp_path / "p"))
    back = PipelineModel.load(str(tmp_path / "p")).stages[0]
    assert isinstance(back, TextEmbedder) and back.uid == embedder.uid
    # The saved stage carries its model (docs/saved-pipelines.md): the copy in its own folder.
    copy = Path(back.getModelPath())
    assert copy.name == Path(minilm).name and copy.parent.name == "model"
    assert copy.is_relative_to(tmp_path / "p" / "stages")
    assert (back.getOutputCol(), back.getBatchSize()) == ("features", 16)
    again = sorted(back.transform(sentences.filter("id < 4")).select("id", "features").collect())
    # Other rows in the batch, other padding: the same values to float rounding.
    _close([_vec(r.features) for r in again], [_vec(r.features) for r in rows[:4]], atol=1e-6)


def test_text_embedder_keeps_a_null_row_with_its_reason(spark, minilm, reference):
    df = spark.createDataFrame([(0, reference["texts"][0]), (1, None)], "id int, review string")
    out = TextEmbedder(modelPath=minilm, inputCol="review", handleInvalid="keep").transform(df)
    rows = sorted(out.select("id", "embedding", "error").collect())
    _close(_vec(rows[0].embedding), reference["embeddings"][0])
    assert rows[0].error is None and rows[1].embedding is None
    assert re.search(NULL_ROW.format(col="review"), rows[1].error), rows[1].error


def test_embed_arrow_in_map_in_arrow(spark, minilm, reference):
    texts = reference["texts"]
    df = spark.createDataFrame(
        [(i, t) for i, t in enumerate(texts)] + [(len(texts), None)], "id int, sentence string"
    ).coalesce(1)  # one Python worker loads the model, not two
    fn, schema = embed_arrow(
        minilm,
        input_col="sentence",
        output_col="vec",
        keep=["id"],
        input_schema=df.schema,
        batch_size=16,
        handle_invalid="keep",
    )
    assert schema == T.StructType(
        [
            T.StructField("id", T.IntegerType()),
            T.StructField("vec", T.ArrayType(T.DoubleType())),
            T.StructField("error", T.StringType()),
        ]
    )
    rows = sorted(df.mapInArrow(fn, schema).collect())
    assert [r.id for r in rows] == list(range(len(texts) + 1))
    _close([r.vec for r in rows[:-1]], reference["embeddings"])
    assert all(r.error is None for r in rows[:-1]) and rows[-1].vec is None
    assert re.search(NULL_ROW.format(col="sentence"), rows[-1].error), rows[-1].error
    with pytest.raises(torchspark.ConfigError, match="one `text` input"):
        embed_arrow(FIXTURES / "general" / "diabetes_mlp.pt")


def test_sql_embed_text_returns_embedding_and_names_a_null_row(spark, minilm, reference):
    torchspark.register_udfs(spark, "embed_text", minilm)
    texts = reference["texts"][:4]
    spark.createDataFrame(
        [(i, t) for i, t in enumerate(texts)] + [(4, None)], "id int, text string"
    ).createOrReplaceTempView("reviews")
    rows = spark.sql("SELECT id, embed_text(text) AS s FROM reviews ORDER BY id").collect()
    _close([_vec(r.s.embedding) for r in rows[:4]], reference["embeddings"][:4])
    assert all(r.s.error is None for r in rows[:4]) and rows[4].s.embedding is None
    assert re.search(r"row \d+.*null", rows[4].s.error), rows[4].s.error


def test_ship_model_ships_and_checks_the_tokenizer(spark, text, tmp_path):
    from pyspark import SparkFiles

    # Copies under names of their own: SparkFiles keeps one file per name for the session.
    (tmp_path / "ids_shipped.pt").write_bytes((text / "ids.pt").read_bytes())
    spec = json.loads((text / "ids.json").read_text())
    spec["inputs"][0]["tokenizer"] = "ids_shipped.tokenizer.json"
    (tmp_path / "ids_shipped.json").write_text(json.dumps(spec))
    (tmp_path / "ids_shipped.tokenizer.json").write_bytes(
        (text / "minilm.tokenizer.json").read_bytes()
    )
    assert torchspark.ship_model(spark, str(tmp_path / "ids_shipped.pt")) == "ids_shipped.pt"
    assert os.path.isfile(SparkFiles.get("ids_shipped.tokenizer.json"))
    # The shipped files stay as shipped: a later task of this session fetches them and Spark
    # refuses a source whose bytes changed. The failure cases use copies in their own folder.
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("ids_shipped.pt", "ids_shipped.tokenizer.json"):
        (bad / name).write_bytes((tmp_path / name).read_bytes())
    # The pin is checked on the driver before any job, naming the file.
    spec["inputs"][0]["tokenizer_sha256"] = "0" * 64
    (bad / "ids_shipped.json").write_text(json.dumps(spec))
    with pytest.raises(torchspark.ModelSpecError, match=r"ids_shipped\.tokenizer\.json.*sha256"):
        torchspark.predict_arrow(bad / "ids_shipped.pt")
    # A tokenizer missing beside the spec: refused before anything is shipped (names of its own).
    (bad / "ids_notok.pt").write_bytes((tmp_path / "ids_shipped.pt").read_bytes())
    spec["inputs"][0]["tokenizer"] = "ids_notok.tokenizer.json"
    del spec["inputs"][0]["tokenizer_sha256"]
    (bad / "ids_notok.json").write_text(json.dumps(spec))
    with pytest.raises(torchspark.ModelLoadError, match=r"tokenizer .*ids_notok\.tokenizer"):
        torchspark.ship_model(spark, str(bad / "ids_notok.pt"))
