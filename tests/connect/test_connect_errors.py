"""Spark Connect clients get torchspark's classes for what the server's driver checks in
`transform`: the missing model, the missing spec, a GPU the server does not have."""

from __future__ import annotations

import shutil

import pytest

from torchspark import DeviceError, ImageScorer, ModelLoadError, ModelSpecError


def test_driver_checks_over_connect_raise_torchsparks_classes(spark, fixtures, model, tmp_path):
    df = spark.read.format("binaryFile").load(str(fixtures / "images"))
    with pytest.raises(ModelLoadError, match="model file /no/such/m.pt not found on host"):
        ImageScorer(modelPath="/no/such/m.pt", inputCol="content").transform(df)
    shutil.copy(model, tmp_path / "m.pt")
    with pytest.raises(ModelSpecError, match=f"model spec {tmp_path}/m.json: cannot read"):
        ImageScorer(modelPath=str(tmp_path / "m.pt"), inputCol="content").transform(df)
    with pytest.raises(DeviceError, match="`cuda:0`: libtorch sees no CUDA device"):
        ImageScorer(modelPath=model, inputCol="content", device="cuda:0").transform(df)
