"""The package's shape: the public names (a contract), the modules that hold them, and what
`import torchspark` leaves alone in the interpreter."""

from __future__ import annotations

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
    import importlib

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
