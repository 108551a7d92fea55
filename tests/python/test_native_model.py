"""The Python-worker path: NativeModel through the C ABI, against PyTorch's outputs."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

import torchspark
from conftest import tol
from torchspark import NativeModel


def _images(fixtures, expected):
    names = sorted(expected)
    return names, [(fixtures / "images" / n).read_bytes() for n in names]


def test_scores_like_pytorch(fixtures, expected, model):
    names, blobs = _images(fixtures, expected)
    out = NativeModel(model).score(blobs, top_k=3).to_pydict()
    for i, n in enumerate(names):
        assert out["error"][i] is None
        p = np.array(out["probability"][i])
        e = np.array(expected[n]["resnet20"]["probability"])
        assert np.abs(p - e).max() <= tol(n), n
        assert out["prediction"][i] == int(e.argmax())
        assert [t["index"] for t in out["top_k"][i]][0] == out["prediction"][i]


def test_batches_carry_stage_times(fixtures, expected, model):
    _, blobs = _images(fixtures, expected)
    meta = NativeModel(model).score(blobs).schema.metadata
    pre, fwd = (int(meta[k]) for k in (b"torchspark.preprocess_ns", b"torchspark.forward_ns"))
    assert pre > 0 and fwd > 0


def test_featurizes_like_pytorch(fixtures, expected, model):
    names, blobs = _images(fixtures, expected)
    feats = NativeModel(model).featurize(pa.RecordBatch.from_pydict({"content": blobs}))
    for i, n in enumerate(names):
        e = np.array(expected[n]["resnet20"]["features"])
        f = np.array(feats.column("features")[i].as_py())
        assert np.abs(f - e).max() <= tol(n) * max(1.0, np.abs(e).max()), n


def test_float_input_from_numpy(expected, model):
    names = sorted(expected)[:4]
    x = np.stack([np.array(expected[n]["resnet20"]["input"], np.float32) for n in names])
    out = NativeModel(model).score(x.reshape(4, 3, 32, 32)).to_pydict()
    for i, n in enumerate(names):
        e = np.array(expected[n]["resnet20"]["probability"])
        assert np.abs(np.array(out["probability"][i]) - e).max() <= 1e-5


def test_bad_rows_are_named_and_others_scored(fixtures, model):
    good = (fixtures / "images" / "digit_00_label0.png").read_bytes()
    out = NativeModel(model).score([good, b"", good[:40], None, b"garbage"]).to_pydict()
    assert out["error"][0] is None and out["prediction"][0] is not None
    assert out["error"][1].startswith("row 1: empty")
    assert out["error"][2].startswith("row 2: truncated PNG")
    assert out["error"][3].startswith("row 3: input is null")
    assert out["error"][4].startswith("row 4: not a PNG")
    assert out["prediction"][1:] == [None] * 4


def test_missing_model_raises_with_path():
    with pytest.raises(torchspark.ModelLoadError, match="/no/such/model.pt"):
        NativeModel("/no/such/model.pt")


def test_bad_spec_raises_spec_error(tmp_path, model):
    shutil.copy(model, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text('{"input": {"height": 32, "width": 32}, "lables": []}')
    with pytest.raises(torchspark.ModelSpecError, match="lables"):
        NativeModel(tmp_path / "m.pt")


def test_wrong_column_type_is_an_input_error(model):
    with pytest.raises(torchspark.InputError, match="Int64"):
        NativeModel(model).score(pa.RecordBatch.from_pydict({"x": [1, 2]}))


def test_native_panic_becomes_a_python_exception():
    import ctypes

    from torchspark import _native

    so = _native.lib()
    err = ctypes.c_void_p()
    assert so.ts_panic_for_test(ctypes.byref(err)) == 7
    assert "injected panic" in _native.take_error(so, err)


def test_model_is_loaded_once_per_process(model):
    a, b = NativeModel(model), NativeModel(model)
    before = NativeModel.load_count()
    a.score([b""]), b.score([b""])
    assert NativeModel.load_count() == before
