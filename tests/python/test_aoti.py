"""AOTInductor packages (`.pt2`) in every entry point: NativeModel (C ABI), the transformers
(JVM, JNI) and the SQL UDFs, against PyTorch running the same package
(`torch._inductor.aoti_load_package`, in tests/fixtures/make_fixtures.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import torchspark
from conftest import tol
from torchspark import ImageFeaturizer, ImageScorer, NativeModel
from torchspark.models import ResNet20


def _images(fixtures, expected):
    names = sorted(expected)
    return names, [(fixtures / "images" / n).read_bytes() for n in names]


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_native_model_runs_a_package_like_pytorch(fixtures, expected):
    names, blobs = _images(fixtures, expected)
    m = NativeModel(str(fixtures / "resnet20_aoti.pt2"))
    out = m.score(blobs, batch_size=7).to_pydict()
    feats = m.featurize(blobs, batch_size=7).to_pydict()
    for i, n in enumerate(names):
        e = expected[n]["resnet20_aoti"]
        assert out["error"][i] is None
        assert np.abs(np.array(out["probability"][i]) - e["probability"]).max() <= tol(n), n
        scale = max(1.0, np.abs(e["features"]).max())
        assert np.abs(np.array(feats["features"][i]) - e["features"]).max() <= tol(n) * scale


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_reduced_precision_packages_run_as_compiled(fixtures, expected, kind):
    names, blobs = _images(fixtures, expected)
    m = NativeModel(str(fixtures / f"tuple_net_{kind}.pt2"))
    out = m.score(blobs).to_pydict()
    feats = m.featurize(blobs).to_pydict()  # the package's `embed` model
    for i, n in enumerate(names):
        e = expected[n][f"tuple_net_{kind}"]
        assert np.abs(np.array(out["probability"][i]) - e["probability"]).max() <= tol(n), n
        assert np.abs(np.array(feats["features"][i]) - e["features"]).max() <= tol(n), n
    spec = json.loads((fixtures / f"tuple_net_{kind}.json").read_text())
    assert spec["precision"] == kind
    # And the compiled precision stays close to the fp32 network (TorchScript, in PyTorch): a
    # package that misreads its input (say, compiled for another memory layout) fails here.
    for i, n in enumerate(names):
        fp32 = np.array(expected[n]["tuple_net"]["probability"])
        assert np.abs(np.array(out["probability"][i]) - fp32).max() <= 5e-3, n


def test_bad_packages_raise_naming_the_file(fixtures, tmp_path):
    with pytest.raises(torchspark.ModelLoadError, match=r"tuple_net_cuda\.pt2.*cuda"):
        NativeModel(str(fixtures / "tuple_net_cuda.pt2"))
    broken = tmp_path / "broken.pt2"
    data = (fixtures / "tuple_net_aoti.pt2").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    shutil.copyfile(fixtures / "tuple_net_aoti.json", tmp_path / "broken.json")
    for _ in range(2):
        with pytest.raises(torchspark.ModelLoadError, match=r"broken\.pt2"):
            NativeModel(str(broken))


def test_export_model_checks_its_options_before_compiling(tmp_path):
    spec = {"input": {"height": 32, "width": 32}}
    with pytest.raises(ValueError, match="sample"):
        torchspark.export_model(
            ResNet20(), tmp_path / "m.pt2", spec, format="aoti", precision="int8"
        )
    with pytest.raises(ValueError, match='format="aoti"'):
        torchspark.export_model(ResNet20(), tmp_path / "m.pt", spec, precision="bf16")
    with pytest.raises(ValueError, match="format"):
        torchspark.export_model(ResNet20(), tmp_path / "m.pt", spec, format="onnx")


def _files(spark, fixtures, glob="*"):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .load(str(fixtures / "images"))
    )


def test_transformers_score_and_featurize_packages(spark, fixtures, expected):
    pt2 = str(fixtures / "resnet20_aoti.pt2")
    out = ImageScorer(modelPath=pt2, inputCol="content", batchSize=7).transform(
        _files(spark, fixtures)
    )
    rows = out.select("path", "prediction", "probability").collect()
    assert len(rows) == len(expected)
    for r in rows:
        n = _name(r.path)
        e = np.array(expected[n]["resnet20_aoti"]["probability"])
        assert np.abs(r.probability.toArray() - e).max() <= tol(n), n
    tuple_pt2 = str(fixtures / "tuple_net_aoti.pt2")  # featurize {"method": "embed"}
    feats = ImageFeaturizer(modelPath=tuple_pt2, inputCol="content").transform(
        _files(spark, fixtures, "*.png")
    )
    for r in feats.select("path", "features").collect():
        e = np.array(expected[_name(r.path)]["tuple_net_aoti"]["features"])
        assert np.abs(r.features.toArray() - e).max() <= 1e-5


def test_sql_udfs_run_a_package(spark, fixtures, expected):
    torchspark.register_udfs(spark, "classify_pt2", str(fixtures / "resnet20_aoti.pt2"))
    _files(spark, fixtures, "digit_1*.png").createOrReplaceTempView("imgs_pt2")
    rows = spark.sql(
        "SELECT path, classify_pt2(content) AS s, classify_pt2_features(content) AS f FROM imgs_pt2"
    ).collect()
    assert len(rows) == 10
    for r in rows:
        e = expected[_name(r.path)]["resnet20_aoti"]
        assert r.s.prediction == int(np.argmax(e["probability"])) and r.s.error is None
        assert np.abs(np.array(r.f) - e["features"]).max() <= 1e-5 * max(
            1.0, np.abs(e["features"]).max()
        )


def test_torch_runs_the_fixture_package_like_the_module(fixtures):
    # export_model(format="aoti") wrote it; the oracle here is eager PyTorch on the same weights.
    pt = torch.jit.load(str(fixtures / "resnet20.pt"))
    pkg = torch._inductor.aoti_load_package(str(fixtures / "resnet20_aoti.pt2"))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits, feats = pkg(x)
        assert (logits - pt(x)).abs().max() <= 1e-4
        assert (feats - pt.features(x)).abs().max() <= 1e-4
