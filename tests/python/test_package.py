"""The package's shape: the public names (a contract), the modules that hold them, and what
`import torchspark` leaves alone in the interpreter."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

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
