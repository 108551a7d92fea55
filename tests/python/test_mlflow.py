"""MLflow model URIs on every surface, against a REAL MLflow tracking server (`mlflow server`,
SQLite backend store, local artifact root) started here on 127.0.0.1 at a free port and stopped
by pid. Two registered versions of the CIFAR ResNet-20 fixture: v1 as made, v2 the same weights
with its labels reversed, so which version scored a row shows in `predicted_label`."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import mlflow  # noqa: E402  (pinned in requirements.txt: a missing one fails, never skips)
import pytest
from mlflow_server import free_port as _free_port  # noqa: E402  (tests/python)
from mlflow_server import mlflow_server as _mlflow_server  # noqa: E402

import torchspark  # noqa: E402
from torchspark import ImageScorer, NativeModel  # noqa: E402
from torchspark import mlflow as ts_mlflow  # noqa: E402
from torchspark.errors import ConfigError, ModelLoadError  # noqa: E402

NAME = "cifar_resnet20"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose artifact root is a local folder (runs' artifact URIs are its paths)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    with _mlflow_server(tmp, "--default-artifact-root", str(tmp / "artifacts")) as url:
        old = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = url
        mlflow.set_tracking_uri(url)
        yield url
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def _log(folder: Path, files: dict[str, Path | str]) -> str:
    """A run whose artifact folder `model` holds `files` (name -> source file or text)."""
    folder.mkdir()
    for name, src in files.items():
        if isinstance(src, Path):
            shutil.copy(src, folder / name)
        else:
            (folder / name).write_text(src)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model")
    return run.info.run_id


@pytest.fixture(scope="module")
def registry(server, fixtures, tmp_path_factory):
    """v1 (labels as made) and v2 (labels reversed) of NAME, @champion -> v1; returns the runs."""
    tmp = tmp_path_factory.mktemp("runs")
    spec = json.loads((fixtures / "resnet20.json").read_text())
    reversed_spec = dict(spec, labels=spec["labels"][::-1])
    pt = fixtures / "resnet20.pt"
    run1 = _log(tmp / "v1", {"resnet20.pt": pt, "resnet20.json": json.dumps(spec)})
    run2 = _log(tmp / "v2", {"resnet20.pt": pt, "resnet20.json": json.dumps(reversed_spec)})
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for run in (run1, run2):
        client.create_model_version(NAME, f"runs:/{run}/model", run_id=run)
    client.set_registered_model_alias(NAME, "champion", "1")
    empty = _log(tmp / "empty", {"README.txt": "no model here"})
    return {"run1": run1, "run2": run2, "empty": empty, "labels": spec["labels"]}


def _images(spark, fixtures):
    return spark.read.format("binaryFile").load(str(fixtures / "images" / "digit_0*.png"))


def test_native_model_scores_the_version_an_alias_names(registry, fixtures):
    m = NativeModel(f"models:/{NAME}@champion")
    assert (m.resolved.name, m.resolved.version, m.resolved.run_id) == (
        NAME, "1", registry["run1"])  # fmt: skip
    files = sorted((fixtures / "images").glob("digit_0*.png"))
    contents = [f.read_bytes() for f in files]
    direct = NativeModel(str(fixtures / "resnet20.pt"))
    got = m.score(contents).to_pydict()
    want = direct.score(contents).to_pydict()
    assert got["predicted_label"] == want["predicted_label"]
    assert got["probability"] == want["probability"]
    v2 = NativeModel(f"models:/{NAME}/2")
    labels = registry["labels"]
    assert v2.score(contents).to_pydict()["predicted_label"] == [
        labels[::-1][labels.index(x)] for x in want["predicted_label"]
    ]


def test_moved_alias_does_not_change_a_transform_already_made(spark, registry, fixtures):
    client = mlflow.MlflowClient()
    labels = registry["labels"]
    scorer = ImageScorer(modelPath=f"models:/{NAME}@champion", inputCol="content")
    out = scorer.transform(_images(spark, fixtures))  # resolved here: version 1
    assert scorer.resolved.version == "1"
    assert scorer.getModelPath() == f"models:/{NAME}@champion"  # the URI stays the param
    client.set_registered_model_alias(NAME, "champion", "2")
    try:
        rows = out.select("prediction", "predicted_label").collect()
        assert rows and all(labels[int(r.prediction)] == r.predicted_label for r in rows)
        moved = scorer.transform(_images(spark, fixtures)).select(
            "prediction", "predicted_label").collect()  # fmt: skip
        assert scorer.resolved.version == "2"
        assert all(labels[::-1][int(r.prediction)] == r.predicted_label for r in moved)
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def test_sql_function_scores_a_runs_uri(spark, registry, fixtures):
    torchspark.register_udfs(spark, "mlflow_cifar", f"runs:/{registry['run2']}/model")
    _images(spark, fixtures).createOrReplaceTempView("mlflow_imgs")
    rows = spark.sql(
        "SELECT mlflow_cifar(content).prediction AS p, mlflow_cifar(content).predicted_label AS l "
        "FROM mlflow_imgs"
    ).collect()
    labels = registry["labels"][::-1]
    assert rows and all(labels[int(r.p)] == r.l for r in rows)


@pytest.mark.parametrize(
    ("uri", "found"),
    [
        ("models:/no_such_model@champion", "has no registered model named 'no_such_model'"),
        (f"models:/{NAME}@nope", "has no alias 'nope' (its aliases: @champion -> 1)"),
        (f"models:/{NAME}/9", "has no version 9 (its versions: 1, 2)"),
        ("runs:/0123456789abcdef/model", "has no run '0123456789abcdef'"),
    ],
)
def test_unknown_name_alias_version_or_run_names_uri_server_and_what_exists(
    registry, server, uri, found
):
    with pytest.raises(ConfigError) as e:
        ts_mlflow.resolve(uri)
    assert uri in str(e.value) and server in str(e.value) and found in str(e.value), e.value


def test_artifacts_without_a_model_name_what_they_hold(registry):
    uri = f"runs:/{registry['empty']}/model"
    with pytest.raises(
        ModelLoadError,
        match=r"no \.pt, \.pt2 or TorchScript \.pth \(mlflow\.pytorch\) model file; found: model/README\.txt",
    ):
        NativeModel(uri)


def test_unreachable_server_is_named_quickly(registry, server, monkeypatch):
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    try:
        start = time.monotonic()
        with pytest.raises(ConfigError, match=f"tracking server {url} is unreachable"):
            ImageScorer(modelPath=f"models:/{NAME}@champion").transform(None)
        assert time.monotonic() - start < 15
    finally:
        mlflow.set_tracking_uri(server)


def _contents(fixtures) -> list[bytes]:
    return [f.read_bytes() for f in sorted((fixtures / "images").glob("digit_0*.png"))]


def test_log_model_writes_a_pyfunc_that_scores_like_native_model(registry, fixtures):
    import pandas as pd

    with mlflow.start_run():
        info = ts_mlflow.log_model(
            str(fixtures / "resnet20.pt"), "model", registered_model_name="ts_logged"
        )
    contents = _contents(fixtures)
    want = NativeModel(str(fixtures / "resnet20.pt")).score(contents).to_pydict()
    got = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"content": contents}))
    assert list(got["predicted_label"]) == want["predicted_label"]
    assert [list(p) for p in got["probability"]] == want["probability"]
    assert info.model_uri.startswith("models:/m-")
    for uri in (info.model_uri, "models:/ts_logged/1"):
        m = NativeModel(uri)
        assert m.score(contents).to_pydict()["probability"] == want["probability"], uri
    assert NativeModel("models:/ts_logged/1").resolved.version == "1"


def test_mlflow_pytorch_torchscript_loads_with_its_spec_beside_it(registry, fixtures, tmp_path):
    import torch

    scripted = torch.jit.load(str(fixtures / "resnet20.pt"))
    # MLflow 3 defaults to pt2; a ScriptModule needs "pickle" (saved as TorchScript, data/model.pth)
    mlflow.pytorch.save_model(scripted, str(tmp_path / "pt"), serialization_format="pickle")
    shutil.copy(fixtures / "resnet20.json", tmp_path / "pt" / "data" / "model.json")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "pt"), "pt")
    m = NativeModel(f"runs:/{run.info.run_id}/pt")
    assert m.model_path.endswith("data/model.pth")
    contents = _contents(fixtures)
    want = NativeModel(str(fixtures / "resnet20.pt")).score(contents).to_pydict()
    assert m.score(contents).to_pydict()["probability"] == want["probability"]


def test_mlflow_pytorch_eager_pickle_is_refused_naming_its_files(registry, tmp_path):
    import torch

    mlflow.pytorch.save_model(
        torch.nn.Linear(2, 2), str(tmp_path / "eager"), serialization_format="pickle"
    )
    (tmp_path / "eager" / "data" / "model.json").write_text("{}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "eager"), "eager")
    uri = f"runs:/{run.info.run_id}/eager"
    with pytest.raises(ModelLoadError, match=r"TorchScript \.pth .*found: .*data/model\.pth"):
        NativeModel(uri)


def test_python_worker_function_scores_the_version_resolved_on_the_driver(
    spark, registry, fixtures
):
    client = mlflow.MlflowClient()
    labels = registry["labels"]
    fn = torchspark.score_arrow(f"models:/{NAME}@champion", batch_size=4)  # version 1
    client.set_registered_model_alias(NAME, "champion", "2")
    try:
        rows = _images(spark, fixtures).mapInArrow(fn, torchspark.SCORE_SCHEMA).collect()
        assert rows and all(labels[int(r.prediction)] == r.predicted_label for r in rows)
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


# ---- the JVM alone (issue 28 item 1): MlflowResolver, no Python on the path ---------------------
# The Scala transformers and TorchSpark.register are called through py4j with the URI itself as
# modelPath: Python resolves nothing here (the Python wrappers would resolve first).


@pytest.fixture
def jvm_server(spark, server):
    """The session's `spark.torchspark.mlflow.trackingUri` set to the test server."""
    spark.conf.set("spark.torchspark.mlflow.trackingUri", server)
    yield server
    spark.conf.unset("spark.torchspark.mlflow.trackingUri")


def _jvm_scorer(spark, uri: str):
    return spark._jvm.dev.torchspark.ImageScorer().setModelPath(uri).setInputCol("content")


def _jvm_rows(spark, jdf):
    from pyspark.sql import DataFrame

    return DataFrame(jdf, spark).select("path", "prediction", "predicted_label").collect()


def test_jvm_scorer_keeps_the_version_its_alias_named_at_transform(
    spark, jvm_server, registry, fixtures
):
    client = mlflow.MlflowClient()
    labels = registry["labels"]
    images = _images(spark, fixtures).repartition(3)  # several tasks, one resolution
    scorer = _jvm_scorer(spark, f"models:/{NAME}@champion")
    out = scorer.transform(images._jdf)  # version 1
    client.set_registered_model_alias(NAME, "champion", "2")
    try:
        rows = _jvm_rows(spark, out)
        # The metrics name the version the job read, not the one the alias names now.
        assert scorer.metrics().javaValues()["modelVersion"] == 1
        assert f"model=models:/{NAME}@champion -> {NAME} version 1" in scorer.metrics().toString()
        assert len(rows) == len(list((fixtures / "images").glob("digit_0*.png")))
        assert all(labels[int(r.prediction)] == r.predicted_label for r in rows)
        moved = _jvm_rows(spark, _jvm_scorer(spark, f"models:/{NAME}@champion").transform(
            images._jdf))  # fmt: skip
        assert all(labels[::-1][int(r.prediction)] == r.predicted_label for r in moved)
        assert sorted((r.path, r.prediction) for r in moved) == sorted(
            (r.path, r.prediction) for r in rows)  # fmt: skip
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def test_jvm_scorer_scores_a_version_number_as_the_model_file_does(
    spark, jvm_server, registry, fixtures
):
    images = _images(spark, fixtures)
    direct = _jvm_rows(spark, _jvm_scorer(spark, str(fixtures / "resnet20.pt")).transform(
        images._jdf))  # fmt: skip
    v1 = _jvm_rows(spark, _jvm_scorer(spark, f"models:/{NAME}/1").transform(images._jdf))
    v2 = _jvm_rows(spark, _jvm_scorer(spark, f"models:/{NAME}/2").transform(images._jdf))
    assert sorted(direct) == sorted(v1)
    labels = registry["labels"]
    assert sorted((r.path, r.prediction, labels[::-1][int(r.prediction)]) for r in direct) == sorted(
        (r.path, r.prediction, r.predicted_label) for r in v2)  # fmt: skip


def test_jvm_register_scores_the_version_the_alias_named_at_registration(
    spark, jvm_server, registry, fixtures
):
    client = mlflow.MlflowClient()
    labels = registry["labels"]
    spark._jvm.dev.torchspark.TorchSpark.register(
        spark._jsparkSession, "jvm_mlflow_cifar", f"models:/{NAME}@champion", "cpu", 1
    )
    _images(spark, fixtures).createOrReplaceTempView("jvm_mlflow_imgs")
    client.set_registered_model_alias(NAME, "champion", "2")
    try:
        rows = spark.sql(
            "SELECT jvm_mlflow_cifar(content).prediction AS p, "
            "jvm_mlflow_cifar(content).predicted_label AS l FROM jvm_mlflow_imgs"
        ).collect()
        assert rows and all(labels[int(r.p)] == r.l for r in rows)
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def test_jvm_scores_a_runs_uri_and_a_logged_model(spark, jvm_server, registry, fixtures):
    with mlflow.start_run():
        info = ts_mlflow.log_model(str(fixtures / "resnet20.pt"), "model")  # no registry version
    resolve = spark._jvm.dev.torchspark.TorchSpark.resolveMlflow
    logged = resolve(spark._jsparkSession, info.model_uri)
    assert logged.version().isEmpty() and logged.modelPath().endswith("resnet20.pt")
    run2 = resolve(spark._jsparkSession, f"runs:/{registry['run2']}/model")
    assert run2.runId().get() == registry["run2"]
    labels = registry["labels"]
    for uri, want in ((info.model_uri, labels), (f"runs:/{registry['run2']}/model", labels[::-1])):
        rows = _jvm_rows(spark, _jvm_scorer(spark, uri).transform(_images(spark, fixtures)._jdf))
        assert rows and all(want[int(r.prediction)] == r.predicted_label for r in rows), uri


@pytest.mark.parametrize(
    ("uri", "found"),
    [
        ("models:/no_such_model@champion", "has no registered model named 'no_such_model'"),
        (f"models:/{NAME}@nope", "has no alias 'nope' (its aliases: @champion -> 1)"),
        (f"models:/{NAME}/9", "has no version 9 (its versions: 1, 2)"),
        ("runs:/0123456789abcdef/model", "has no run '0123456789abcdef'"),
        ("models:/m-0123456789abcdef", "has no logged model 'm-0123456789abcdef'"),
    ],
)
def test_jvm_unknown_name_alias_version_or_run_names_uri_server_and_what_exists(
    spark, jvm_server, registry, fixtures, uri, found
):
    with pytest.raises(ConfigError) as e:
        _jvm_scorer(spark, uri).transform(_images(spark, fixtures)._jdf)
    assert uri in str(e.value) and jvm_server in str(e.value) and found in str(e.value), e.value


def test_jvm_artifacts_without_a_model_name_what_they_hold(spark, jvm_server, registry):
    uri = f"runs:/{registry['empty']}/model"
    with pytest.raises(
        ModelLoadError, match=r"\.pth \(mlflow\.pytorch\) model file; found: README"
    ):
        spark._jvm.dev.torchspark.TorchSpark.resolveMlflow(spark._jsparkSession, uri)


def test_jvm_unreachable_server_is_named_within_10_s(spark, registry, fixtures):
    url = f"http://127.0.0.1:{_free_port()}"
    spark.conf.set("spark.torchspark.mlflow.trackingUri", url)
    try:
        start = time.monotonic()
        with pytest.raises(ConfigError, match=f"tracking server {url} is unreachable"):
            _jvm_scorer(spark, f"models:/{NAME}@champion").transform(_images(spark, fixtures)._jdf)
        assert time.monotonic() - start < 10
    finally:
        spark.conf.unset("spark.torchspark.mlflow.trackingUri")


# ---- saved stages of an MLflow model (issue 28 item 2) -------------------------------------------


def test_a_stage_of_an_alias_saves_the_version_it_names_and_scores_it_when_the_alias_moves(
    spark, registry, fixtures, tmp_path
):
    """Saved from Python (the JVM resolves: the session is told the tracking server), loaded and
    scored with the alias moved and no server."""
    client = mlflow.MlflowClient()
    labels = registry["labels"]
    spark.conf.unset("spark.torchspark.mlflow.trackingUri")
    out = str(tmp_path / "stage")
    ImageScorer(modelPath=f"models:/{NAME}@champion", inputCol="content").write().save(out)
    manifest = json.loads((tmp_path / "stage" / "model" / "manifest.json").read_text())
    assert manifest["source"] == f"models:/{NAME}@champion"
    assert manifest["mlflow"]["version"] == "1" and manifest["mlflow"]["name"] == NAME
    assert manifest["mlflow"]["run_id"] == registry["run1"]
    assert [f["name"] for f in manifest["files"]] == ["resnet20.pt", "resnet20.json"]
    client.set_registered_model_alias(NAME, "champion", "2")
    spark.conf.set("spark.torchspark.mlflow.trackingUri", f"http://127.0.0.1:{_free_port()}")
    try:
        loaded = ImageScorer.load(out)
        assert loaded.getModelPath() == str(tmp_path / "stage" / "model" / "resnet20.pt")
        rows = loaded.transform(_images(spark, fixtures)).collect()
        assert rows and all(labels[int(r.prediction)] == r.predicted_label for r in rows)
        # Saved again over its own directory: the copy and its MLflow record survive.
        loaded.write().overwrite().save(out)
        again = json.loads((tmp_path / "stage" / "model" / "manifest.json").read_text())
        assert again["mlflow"]["version"] == "1" and again["files"] == manifest["files"]
        rows = ImageScorer.load(out).transform(_images(spark, fixtures)).collect()
        assert rows and all(labels[int(r.prediction)] == r.predicted_label for r in rows)
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")
        spark.conf.unset("spark.torchspark.mlflow.trackingUri")


def test_jvm_reads_mlflow_artifacts_through_the_servers_proxy(
    spark, server, registry, fixtures, tmp_path
):
    """A server with `--artifacts-destination`: artifact URIs are `mlflow-artifacts:/...`, which
    the JVM downloads through the server (a models:/ version, and a runs:/ URI of the file)."""
    labels = registry["labels"]
    with _mlflow_server(tmp_path, "--artifacts-destination", str(tmp_path / "store")) as url:
        mlflow.set_tracking_uri(url)
        try:
            run = _log(tmp_path / "v", {"resnet20.pt": fixtures / "resnet20.pt",
                                        "resnet20.json": fixtures / "resnet20.json"})  # fmt: skip
            client = mlflow.MlflowClient(url)
            client.create_registered_model("proxied")
            client.create_model_version("proxied", f"runs:/{run}/model", run_id=run)
        finally:
            mlflow.set_tracking_uri(server)
        spark.conf.set("spark.torchspark.mlflow.trackingUri", url)
        try:
            resolve = spark._jvm.dev.torchspark.TorchSpark.resolveMlflow
            for uri in ("models:/proxied/1", f"runs:/{run}/model/resnet20.pt"):
                r = resolve(spark._jsparkSession, uri)
                assert r.storageUri().startswith("mlflow-artifacts:"), r.describe()
                assert "/mlflow-" in r.modelPath() and r.modelPath().endswith("resnet20.pt")
                rows = _jvm_rows(
                    spark, _jvm_scorer(spark, uri).transform(_images(spark, fixtures)._jdf)
                )
                assert rows and all(labels[int(x.prediction)] == x.predicted_label for x in rows)
        finally:
            spark.conf.unset("spark.torchspark.mlflow.trackingUri")
