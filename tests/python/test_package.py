"""The package's shape: the public names (a contract), the modules that hold them, and what
`import torchspark` leaves alone in the interpreter."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchspark

PKG = Path(torchspark.__file__).resolve().parent

# The names `torchspark` has exported (issue 26's contract list and `__all__`).
PUBLIC = (
    "NativeModel",
    "ImageScorer",
    "ImageFeaturizer",
    "TorchModel",
    "TextEmbedder",
    "local_session",
    "configure",
    "jar_path",
    "read_images",
    "score_partitions",
    "score_arrow",
    "predict_arrow",
    "embed_arrow",
    "register_udfs",
    "SCORE_SCHEMA",
    "export_model",
    "export_text_model",
    "evaluate",
    "describe",
    "doctor",
    "ship_model",
)
# Every public name `torchspark.native` had before it was split, and where each lives now.
NATIVE = {
    "native_model": ("ENGINES", "NativeModel", "Pending", "as_record_batch", "describe"),
    "workers": (
        "HANDLE_INVALID",
        "MAX_BYTES_CONF",
        "SCORE_SCHEMA",
        "RowCounts",
        "embed_arrow",
        "predict_arrow",
        "score_arrow",
        "score_partitions",
        "spark_type",
    ),
}


def test_public_names_stay_importable():
    for name in PUBLIC:
        assert getattr(torchspark, name) is not None, name
    assert set(torchspark.__all__) >= set(PUBLIC) - {"read_images"}


def test_native_re_exports_the_split_modules_names():
    import torchspark.native as native

    for module, names in NATIVE.items():
        home = importlib.import_module(f"torchspark.{module}")
        for name in names:
            assert getattr(native, name) is getattr(home, name), f"{module}.{name}"
    assert set(native.__all__) == {n for names in NATIVE.values() for n in names}
    assert torchspark.NativeModel is native.NativeModel
    assert torchspark.score_arrow is native.score_arrow


def test_python_calls_the_native_library_through_submit_and_collect_only():
    # The synchronous entries (ts_score, ts_featurize, ts_predict) are not declared or called:
    # per-task mode runs inline inside ts_submit.
    for path in PKG.glob("*.py"):
        text = path.read_text()
        for name in ("ts_score", "ts_featurize", "ts_predict"):
            assert name not in text, f"{path.name} uses {name}"


def _imports(module: str) -> set[str]:
    """The torchspark modules `module` imports, at its top or inside functions (the package
    itself, `from torchspark import __version__`, is not counted: it imports every module)."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torchspark":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchspark."):
            out.add(node.module.removeprefix("torchspark."))
        elif isinstance(node, ast.Import):
            out.update(
                a.name.removeprefix("torchspark.")
                for a in node.names
                if a.name.startswith("torchspark.")
            )
    return out


def test_no_import_circle_between_the_package_modules():
    modules = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")
    edges = {m: _imports(m) & set(modules) for m in modules}
    assert "transformers" in edges["session"] or "session" in edges["transformers"]

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(edges[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(edges[m])
        return seen

    circles = [m for m in modules if m in reaches(m)]
    assert not circles, f"modules on an import circle: {circles} ({edges})"


# A user's own package named `dev` (a regular package with a module), made in `root`.
USER_DEV = {"dev/__init__.py": 'OWNER = "user"\n', "dev/mine.py": "VALUE = 7\n"}


def _child(code: str, *path: Path) -> None:
    """Runs `code` in a fresh interpreter with `path` first on sys.path (then this worktree's
    python/); fails with its output unless it exits 0."""
    pythonpath = os.pathsep.join([*map(str, path), str(PKG.parent)])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _user_dev(root: Path) -> Path:
    for name, text in USER_DEV.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


STAGE = """
m = __import__("dev.torchspark", fromlist=["ImageFeaturizer"])
from torchspark.transformers import ImageFeaturizer, ImageScorer, TextEmbedder, TorchModel
assert m.ImageFeaturizer is ImageFeaturizer and m.TorchModel is TorchModel
assert m.ImageScorer is ImageScorer and m.TextEmbedder is TextEmbedder
"""


def test_import_leaves_a_users_dev_package_intact(tmp_path):
    root = _user_dev(tmp_path)
    # torchspark first, then the user's package; and the other way round.
    check = """
import dev, dev.mine
assert dev.OWNER == "user" and dev.mine.VALUE == 7, dev
assert dev.__file__ == {file!r}, dev.__file__
"""
    file = str(root / "dev" / "__init__.py")
    _child(
        "import sys, torchspark\n"
        "dev = [m for m in sys.modules if m.split('.')[0] == 'dev']\n"
        "assert not dev, dev\n"
        + check.format(file=file)
        + STAGE
        + "assert sys.modules['dev'] is dev and dev.mine.VALUE == 7\n",
        root,
    )
    _child(check.format(file=file) + "import torchspark\n" + STAGE, root)


def test_stage_classes_resolve_without_a_users_dev_before_torchspark_is_imported():
    # `dev` is torchspark's namespace package: PySpark finds the stages even before
    # `import torchspark` ran (a saved Pipeline loaded first thing).
    _child(
        "import dev\nassert getattr(dev, '__file__', None) is None, dev\n" + STAGE,
    )


def test_optional_dependencies_that_are_missing_name_their_extra(monkeypatch, spark, model):
    # None in sys.modules: `import x` raises ImportError, as when x is not installed.
    for name in ("matplotlib", "matplotlib.pyplot", "pandas", "torch"):
        monkeypatch.setitem(sys.modules, name, None)
    df = spark.createDataFrame([(1.0, 1.0), (0.0, 1.0)], "label double, prediction double")
    with pytest.raises(ImportError, match=r"pip install 'torchspark\[plot\]'") as e:
        torchspark.evaluate(df)
    assert "evaluate's confusion-matrix figure needs matplotlib" in str(e.value)
    for fn in (torchspark.score_arrow, torchspark.predict_arrow, torchspark.embed_arrow):
        with pytest.raises(ImportError, match=r"pip install 'torchspark\[pandas\]'") as e:
            fn(model)
        assert f"df.mapInArrow ({fn.__name__}) needs pandas" in str(e.value)
    for fn, args in (
        (torchspark.export_model, (None, "out.pt", {})),
        (torchspark.export_text_model, ("minilm", "out.pt")),
    ):
        with pytest.raises(ImportError, match=r"pip install 'torchspark\[torch\]'") as e:
            fn(*args)
        assert f"{fn.__name__} needs torch" in str(e.value)


def test_quickstart_in_the_docs_is_examples_quickstart():
    # One source: test_dist.py runs examples/quickstart.py in a venv with only the wheel.
    root = PKG.parents[1]
    code = (root / "examples" / "quickstart.py").read_text().split('"""', 2)[2].lstrip("\n")
    for page in ("docs/install-python.md", "python/README.md"):
        text = (root / page).read_text()
        block = text.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
        assert block == code, page
