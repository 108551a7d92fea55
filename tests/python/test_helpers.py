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


class TwoWays(torch.nn.Module):
    """A version-2 model of four inputs (an image, a vector, a padded sequence and its mask)
    with a second method, `embed`; both return a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.lin = torch.nn.Linear(8, 3)

    def _features(self, image, meta, seq, mask):
        pooled = (seq * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        return torch.cat([self.conv(image).mean((2, 3)), meta[:, :3], pooled], 1)

    def forward(self, image, meta, seq, mask):
        f = self._features(image, meta, seq, mask)
        return self.lin(f), f

    @torch.jit.export
    def embed(self, image, meta, seq, mask):
        f = self._features(image, meta, seq, mask) * 2
        return f, f.sum(1)

    def plain(self, image, meta, seq, mask):  # not @torch.jit.export: not scripted
        return self.forward(image, meta, seq, mask)


TWO_WAYS_INPUTS = [
    {"name": "image", "kind": "image", "column": "image", "shape": [3, 8, 8]},
    {"name": "meta", "shape": [5]},
    {"name": "seq", "shape": [-1], "ragged": "pad"},
    {"name": "mask", "kind": "mask", "of": "seq", "dtype": "float32"},
]


def two_ways_rows(n: int = 5, seed: int = 0):
    """(a pyarrow Table of `n` rows for TwoWays' spec, the padded tensors PyTorch gets)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    image = rng.random((n, 3, 8, 8), dtype=np.float32)
    meta = rng.random((n, 5), dtype=np.float32)
    seqs = [rng.random(int(k), dtype=np.float32) for k in rng.integers(2, 9, n)]
    table = pa.table(
        {
            "image": [r.ravel().tolist() for r in image],
            "meta": meta.tolist(),
            "seq": [s.tolist() for s in seqs],
        }
    )
    longest = max(len(s) for s in seqs)
    seq, mask = torch.zeros(n, longest), torch.zeros(n, longest)
    for i, s in enumerate(seqs):
        seq[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = 1
    return table, (torch.from_numpy(image), torch.from_numpy(meta), seq, mask)


def two_ways_spec(method: str | None, where: str) -> dict:
    """TwoWays' spec: output `out` (element 0 of forward's tuple, or of `method`'s)."""
    out = {"name": "out", "from": 0, "column": "array", "shape": [3 if method is None else 8]}
    spec = {"spec_version": 2, "inputs": TWO_WAYS_INPUTS, "outputs": [out]}
    if method is not None and where == "spec":
        spec["method"] = method
    elif method is not None:
        out["method"] = method
    return spec


def test_export_keeps_every_method_a_version_2_spec_names(tmp_path):
    torch.manual_seed(2)
    net = TwoWays().eval()
    table, args = two_ways_rows()
    with torch.no_grad():
        want = {"forward": net(*args)[0].numpy(), "embed": net.embed(*args)[0].numpy()}
    # The case: an output's `method` (default freeze, which keeps only `forward`
    # unless told otherwise); the file keeps `embed`, equal to the module's.
    torchspark.export_model(net, tmp_path / "out.pt", two_ways_spec("embed", "output"))
    loaded = torch.jit.load(str(tmp_path / "out.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(loaded.embed(*args)[0].numpy(), want["embed"], atol=1e-6)
    # ... and the native side runs that output from `embed`: PyTorch's values.
    out = torchspark.NativeModel(tmp_path / "out.pt").predict(table, batch_size=2).to_pydict()
    assert out["error"] == [None] * table.num_rows
    np.testing.assert_allclose(np.array(out["out"]), want["embed"], atol=1e-5)
    # The spec's own `method`: run natively, PyTorch's values.
    for method in (None, "embed"):
        path = tmp_path / f"{method}.pt"
        torchspark.export_model(net, path, two_ways_spec(method, "spec"))
        out = torchspark.NativeModel(path).predict(table, batch_size=2).to_pydict()
        assert out["error"] == [None] * table.num_rows
        np.testing.assert_allclose(np.array(out["out"]), want[method or "forward"], atol=1e-5)


def test_export_refuses_a_method_it_cannot_keep(tmp_path):
    net = TwoWays()
    for method, why in [
        ("plain", r"`plain` \(outputs\[0\]\.method \(out\)\).*@torch\.jit\.export"),
        ("missing", r"`missing` \(outputs\[0\]\.method \(out\)\), which TwoWays does not have"),
    ]:
        with pytest.raises(ValueError, match=why):
            torchspark.export_model(net, tmp_path / "m.pt", two_ways_spec(method, "output"))
        assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.json").exists()
    spec = {"input": {"height": 32, "width": 32}, "featurize": {"method": "nope"}}
    with pytest.raises(ValueError, match=r"`nope` \(featurize\.method\)"):
        torchspark.export_model(ResNet20(), tmp_path / "r.pt", spec)
