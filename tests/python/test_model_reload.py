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
    for ext in (".pt", ".json"):
        _replace_by_rename(fixtures / f"tuple_net{ext}", k.with_suffix(ext))
    b = NativeModel(str(k))
    assert NativeModel.load_count() == before + 2
    _assert_probs(b.score(blobs).to_pydict(), names, expected, "tuple_net")
    assert b.score(blobs[:1]).to_pydict()["predicted_label"][0] in "wxyz"
    _assert_probs(a.score(blobs).to_pydict(), names, expected, "resnet20")  # the old handle
    a.close()
    b.close()


def test_image_scorer_scores_with_the_model_now_at_its_path(spark, tmp_path, fixtures, expected):
    loads = spark.sparkContext._jvm.dev.torchspark.TorchSpark.nativeModelLoads
    files = spark.read.format("binaryFile").option("pathGlobFilter", "*.png")
    files = files.load(str(fixtures / "images"))
    k = _copy_model(fixtures, "resnet20", tmp_path)
    scorer = ImageScorer(modelPath=str(k), inputCol="content")

    def score() -> tuple[list[str], dict]:
        rows = scorer.transform(files).select("path", "probability", "predictedLabel").collect()
        rows.sort(key=lambda r: r.path)
        names = [r.path.rsplit("/", 1)[-1] for r in rows]
        out = {
            "probability": [r.probability.toArray() for r in rows],
            "error": [None] * len(rows),
            "label": [r.predictedLabel for r in rows],
        }
        return names, out

    start = loads()
    names, first = score()
    assert loads() == start + 1
    _assert_probs(first, names, expected, "resnet20")
    # The same inode rewritten with another model and its spec, mtimes put back.
    for ext in (".pt", ".json"):
        _rewrite_in_place(fixtures / f"tuple_net{ext}", k.with_suffix(ext))
    names, second = score()
    assert loads() == start + 2
    _assert_probs(second, names, expected, "tuple_net")
    assert set(second["label"]) <= set("wxyz")
    score()  # unchanged since: no load
    assert loads() == start + 2
