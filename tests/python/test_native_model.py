"""The Python-worker path: NativeModel through the C ABI, against PyTorch's outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

import torchspark
from conftest import tol
from torchspark import NativeModel, describe


def _images(fixtures, expected):
    names = sorted(expected)
    return names, [(fixtures / "images" / n).read_bytes() for n in names]


# The score result's names and types (plan of issue 26: one set on every surface).
TOP_K = pa.list_(
    pa.struct(
        [
            pa.field("index", pa.int32(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("probability", pa.float32(), nullable=False),
        ]
    )
)
SCORE_TYPES = {
    "prediction": pa.float64(),
    "probability": pa.list_(pa.float32()),
    "predicted_label": pa.string(),
    "top_k": TOP_K,
    "error": pa.string(),
}


def test_scores_like_pytorch(fixtures, expected, model):
    names, blobs = _images(fixtures, expected)
    labels = json.loads((fixtures / "resnet20.json").read_text())["labels"]
    out = NativeModel(model).score(blobs, top_k=3)
    assert {f.name: f.type for f in out.schema} == SCORE_TYPES
    assert out.schema.names == list(SCORE_TYPES)
    out = out.to_pydict()
    for i, n in enumerate(names):
        assert out["error"][i] is None
        p = np.array(out["probability"][i])
        e = np.array(expected[n]["resnet20"]["probability"])
        assert np.abs(p - e).max() <= tol(n), n
        best = int(e.argmax())
        assert isinstance(out["prediction"][i], float) and out["prediction"][i] == best, n
        assert out["predicted_label"][i] == labels[best], n
        top = out["top_k"][i]
        assert [t["index"] for t in top] == list(np.argsort(-p, kind="stable")[:3]), n
        assert [t["label"] for t in top] == [labels[t["index"]] for t in top], n
        np.testing.assert_array_equal([t["probability"] for t in top], p[[t["index"] for t in top]])


def test_describe_gives_each_presets_schema(model, general):
    # A version-1 spec: the score result's names and types, features, the raw output.
    score = describe(model, "score")
    assert {f.name: f.type for f in score} == SCORE_TYPES and score.names == list(SCORE_TYPES)
    assert describe(model, "featurize").names == ["features", "error"]
    assert describe(model, "featurize").field("features").type == pa.list_(pa.float32())
    assert describe(model).names == describe(model, "predict").names == ["output", "error"]
    assert describe(model).field("output").type == pa.list_(pa.float64())
    with pytest.raises(torchspark.ModelSpecError, match="no `embed` preset"):
        describe(model, "embed")
    # A version-2 spec has no score preset; a preset that does not exist is a ConfigError.
    mlp = general / "diabetes_mlp.pt"
    with pytest.raises(torchspark.ModelSpecError, match="spec_version 2.*TorchModel"):
        describe(mlp, "score")
    with pytest.raises(torchspark.ConfigError, match="`classify` is not one of score"):
        describe(model, "classify")
    assert NativeModel(model).output_schema("score") == score


def test_submit_runs_each_preset_as_describe_says(fixtures, expected, model):
    _, blobs = _images(fixtures, expected)
    m = NativeModel(model)
    for preset in ("score", "featurize", "predict"):
        got = m.submit(blobs[:5], preset, top_k=2).result()
        assert got.schema.remove_metadata() == describe(model, preset).remove_metadata(), preset
        assert got.column("error").null_count == 5, preset
    with pytest.raises(torchspark.ConfigError, match="op must be one of score, featurize"):
        m.submit(blobs[:1], "classify")


def test_predict_computes_the_outputs_named_in_their_order(fixtures, expected, model):
    _, blobs = _images(fixtures, expected)
    m = NativeModel(model)
    scored = m.score(blobs, top_k=2).to_pydict()
    got = m.predict(pa.table({"content": blobs}), outputs=["top_k", "prediction"], top_k=2)
    assert got.schema.names == ["top_k", "prediction", "error"]
    assert got.column("top_k").to_pylist() == scored["top_k"]
    assert got.column("prediction").to_pylist() == scored["prediction"]
    # One call is one forward pass: outputs of two methods are refused, naming both.
    with pytest.raises(torchspark.ConfigError, match=r"`features`.*`prediction`.*one forward"):
        m.predict(pa.table({"content": blobs}), outputs=["features", "prediction"])
    with pytest.raises(torchspark.ConfigError, match=r"no output is named `nope`.*top_k"):
        m.predict(pa.table({"content": blobs}), outputs=["nope"])
    with pytest.raises(torchspark.ConfigError, match="outputs must be output names"):
        m.predict(pa.table({"content": blobs}), outputs=[1])


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
    # One message format on every input kind: the row, the input, its column, the reason.
    at = "input `image` (column content)"
    assert out["error"][1].startswith(f"row 1: {at}: empty")
    assert out["error"][2].startswith(f"row 2: {at}: truncated PNG")
    assert out["error"][3].startswith(f"row 3: {at}: input is null")
    assert out["error"][4].startswith(f"row 4: {at}: not a PNG")
    for name in ("prediction", "probability", "predicted_label", "top_k"):
        assert out[name][1:] == [None] * 4, name


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
