"""A model file replaced at the same path is a new model, on the Python-worker path
(NativeModel) and on the JVM path (ImageScorer on a local[2] session); handles opened before
keep the model they opened."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from conftest import tol
from torchspark import ImageScorer, NativeModel


def _replace_by_rename(src: Path, dest: Path) -> None:
    """A new inode at `dest`, as `mv`, rsync and most uploads give."""
    part = dest.with_suffix(".part")
    shutil.copyfile(src, part)
    os.replace(part, dest)


def _rewrite_in_place(src: Path, dest: Path) -> None:
    """The same inode rewritten, its old mtime put back (as `cp --preserve=timestamps` onto it)."""
    st = dest.stat()
    with open(dest, "r+b") as f:
        f.truncate(0)
        f.write(src.read_bytes())
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dest.stat().st_ino == st.st_ino


def _copy_model(fixtures: Path, name: str, dest_dir: Path) -> Path:
    for ext in (".pt", ".json"):
        shutil.copyfile(fixtures / f"{name}{ext}", dest_dir / f"k{ext}")
    return dest_dir / "k.pt"


def _other_resnet20(fixtures: Path, out_dir: Path) -> Path:
    """Another ResNet-20 (other weights) exported with resnet20's very spec: what `k.pt` must
    score once only the model file is replaced (the spec stays, byte for byte)."""
    import json

    import torch

    from torchspark.export import export_model
    from torchspark.models import ResNet20

    torch.manual_seed(7)
    net = ResNet20().eval()
    with torch.no_grad():  # visibly different outputs from the fixture's weights
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out_dir.mkdir()
    export_model(net, out_dir / "k.pt", json.loads((fixtures / "resnet20.json").read_text()))
    return out_dir / "k.pt"


def _torch_probs(model: Path, names: list[str], expected: dict) -> dict:
    """PyTorch's probabilities of `model` on the fixture's preprocessed inputs."""
    import torch

    m = torch.jit.load(str(model)).eval()
    x = torch.tensor(
        np.stack([np.asarray(expected[n]["resnet20"]["input"], np.float32) for n in names])
    ).view(len(names), 3, 32, 32)
    with torch.no_grad():
        return {n: p.tolist() for n, p in zip(names, torch.softmax(m(x), -1))}


def _assert_probs(out: dict, names: list[str], expected: dict, model: str) -> None:
    for i, n in enumerate(names):
        assert out["error"][i] is None, n
        want = np.array(expected[n][model]["probability"])
        assert np.abs(np.array(out["probability"][i]) - want).max() <= tol(n), n


def test_native_model_loads_a_replaced_file_anew_and_old_handles_keep_theirs(
    tmp_path, fixtures, expected
):
    names = sorted(expected)
    blobs = [(fixtures / "images" / n).read_bytes() for n in names]
    k = _copy_model(fixtures, "resnet20", tmp_path)
    before = NativeModel.load_count()
    a = NativeModel(str(k))
    _assert_probs(a.score(blobs).to_pydict(), names, expected, "resnet20")
    with NativeModel(str(k)):
        assert NativeModel.load_count() == before + 1  # unchanged: the loaded model is reused
    # Only the model file changes (the spec stays byte for byte): a new model all the same.
    other = _other_resnet20(fixtures, tmp_path / "other")
    _replace_by_rename(other, k)
    b = NativeModel(str(k))
    assert NativeModel.load_count() == before + 2
    want = _torch_probs(other, names, expected)
    got = b.score(blobs).to_pydict()
    for i, n in enumerate(names):
        assert np.abs(np.array(got["probability"][i]) - want[n]).max() <= tol(n), n
    _assert_probs(a.score(blobs).to_pydict(), names, expected, "resnet20")  # the old handle
    a.close()
    b.close()
    # Model and spec both replaced (another kind of model at the same path).
    for ext in (".pt", ".json"):
        _replace_by_rename(fixtures / f"tuple_net{ext}", k.with_suffix(ext))
    b = NativeModel(str(k))
    assert NativeModel.load_count() == before + 3
    _assert_probs(b.score(blobs).to_pydict(), names, expected, "tuple_net")
    assert b.score(blobs[:1]).to_pydict()["predicted_label"][0] in "wxyz"
    a.close()
    b.close()


def test_image_scorer_scores_with_the_model_now_at_its_path(spark, tmp_path, fixtures, expected):
    loads = spark.sparkContext._jvm.dev.torchspark.TorchSpark.nativeModelLoads
    files = spark.read.format("binaryFile").option("pathGlobFilter", "*.png")
    files = files.load(str(fixtures / "images"))
    k = _copy_model(fixtures, "resnet20", tmp_path)
    scorer = ImageScorer(modelPath=str(k), inputCol="content")

    def score() -> tuple[list[str], dict]:
        rows = scorer.transform(files).select("path", "probability", "predicted_label").collect()
        rows.sort(key=lambda r: r.path)
        names = [r.path.rsplit("/", 1)[-1] for r in rows]
        out = {
            "probability": [r.probability.toArray() for r in rows],
            "error": [None] * len(rows),
            "label": [r.predicted_label for r in rows],
        }
        return names, out

    start = loads()
    names, first = score()
    assert loads() == start + 1
    _assert_probs(first, names, expected, "resnet20")
    # Only the model file rewritten in place (same inode, its mtime put back), spec untouched.
    other = _other_resnet20(fixtures, tmp_path / "other")
    _rewrite_in_place(other, k)
    names, second = score()
    assert loads() == start + 2
    want = _torch_probs(other, names, expected)
    for i, n in enumerate(names):
        assert np.abs(np.array(second["probability"][i]) - want[n]).max() <= tol(n), n
    score()  # unchanged since: no load
    assert loads() == start + 2
