"""export_model, evaluate and the CIFAR-10 binary reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import torchspark
from torchspark import cifar
from torchspark.models import ResNet20


def test_cifar_reader_round_trips_the_binary_format(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    records = [
        np.concatenate([[lab], im.transpose(2, 0, 1).ravel()]) for im, lab in zip(images, labels)
    ]
    np.concatenate(records).astype(np.uint8).tofile(tmp_path / "data_batch_1.bin")
    np.concatenate(records[:2]).astype(np.uint8).tofile(tmp_path / "test_batch.bin")
    x, y = cifar.read_batch(tmp_path / "data_batch_1.bin")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    (xtr, ytr), (xte, yte) = cifar.load(tmp_path)
    assert xtr.shape == (5, 32, 32, 3) and xte.shape == (2, 32, 32, 3)
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="bad.bin"):
        cifar.read_batch(tmp_path / "bad.bin")


def test_export_model_freezes_and_native_matches_pytorch(tmp_path):
    torch.manual_seed(1)
    net = ResNet20(num_classes=3)
    spec = {"input": {"height": 32, "width": 32}, "labels": ["a", "b", "c"],
            "featurize": {"method": "features"}}  # fmt: skip
    spec_path = torchspark.export_model(net, tmp_path / "m.pt", spec)
    assert json.loads(spec_path.read_text()) == spec
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(2, 3, 32, 32)
    out = torchspark.NativeModel(tmp_path / "m.pt").score(x.numpy()).to_pydict()
    with torch.inference_mode():
        ref = torch.softmax(loaded(x), 1).numpy()
    np.testing.assert_allclose(np.array(out["probability"]), ref, atol=1e-5)
    assert net.training  # export leaves the caller's module as it was


def test_evaluate_aggregates_in_spark(spark):
    df = spark.createDataFrame(
        [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 1.0), (2.0, 2.0)], ["label", "prediction"]
    )
    ev = torchspark.evaluate(df, "label", "prediction")
    assert ev.accuracy == pytest.approx(0.8)
    np.testing.assert_array_equal(ev.confusion, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    assert ev.figure is not None and "accuracy 0.8000" in str(ev)
