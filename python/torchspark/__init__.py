"""torchspark: native TorchScript scoring and featurizing for Apache Spark.

- DataFrame API (runs in the JVM executors): `ImageScorer`, `ImageFeaturizer`, `TorchModel`,
  `TextEmbedder`, `TextClassifier`.
- Python-worker API (mapPartitions / mapInArrow): `NativeModel`, `score_partitions`, `score_arrow`,
  `predict_arrow`, `embed_arrow`, `describe`.
- `configure(builder)` (the jar on any SparkSession builder), `local_session`, `jar_path`,
  `export_model`, `evaluate`.
"""

import sys
from importlib import util as _util
from pathlib import Path as _Path

from torchspark.cluster import read_images, ship_model
from torchspark.errors import (
    ConfigError,
    DeviceError,
    InferenceError,
    InputError,
    ModelLoadError,
    ModelSpecError,
    TorchSparkError,
    require_extra,
)
from torchspark.evaluate import Evaluation, evaluate
from torchspark.native_model import NativeModel, describe
from torchspark.session import configure, jar_path, local_session, register_udfs
from torchspark.workers import (
    SCORE_SCHEMA,
    embed_arrow,
    predict_arrow,
    score_arrow,
    score_partitions,
)


def export_model(module, path, spec, **kwargs):
    """Script, freeze and save `module` with its spec JSON (see torchspark.export)."""
    require_extra("torch", "torch", "export_model")
    from torchspark.export import export_model as _export

    return _export(module, path, spec, **kwargs)


def export_text_model(source_dir, out_path, **kwargs):
    """Export a Hugging Face text encoder with its spec and tokenizer (see torchspark.export_text)."""
    require_extra("torch", "torch", "export_text_model")
    from torchspark.export_text import export_text_model as _export

    return _export(source_dir, out_path, **kwargs)


def doctor(spark, **kwargs):
    """The node check on every executor, as a table (see torchspark.node.doctor)."""
    from torchspark.node import doctor as _doctor

    return _doctor(spark, **kwargs)


def __getattr__(name):
    # The py4j wrappers import pyspark; load them on first use.
    if name in ("ImageScorer", "ImageFeaturizer", "TorchModel", "TextEmbedder", "TextClassifier"):
        from torchspark import transformers

        return getattr(transformers, name)
    raise AttributeError(name)


class _StageModuleFinder:
    """Serves `dev.torchspark` (python/dev/torchspark.py: where PySpark finds a saved stage's
    Python class) only when no other finder has it: when the `dev` on sys.path is a user's own
    package, which stays as it is. Without a user's `dev`, `dev` is torchspark's namespace
    package and this finder is never asked. Adds nothing to sys.modules by itself."""

    _FILE = _Path(__file__).resolve().parent.parent / "dev" / "torchspark.py"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "dev.torchspark" or not self._FILE.is_file():
            return None
        return _util.spec_from_file_location(fullname, self._FILE)


if not any(type(f).__name__ == "_StageModuleFinder" for f in sys.meta_path):
    # Last: every ordinary finder (a user's dev.torchspark, if any) is asked first.
    sys.meta_path.append(_StageModuleFinder())

__all__ = [
    "SCORE_SCHEMA",
    "ConfigError",
    "DeviceError",
    "Evaluation",
    "ImageFeaturizer",
    "ImageScorer",
    "InferenceError",
    "InputError",
    "ModelLoadError",
    "ModelSpecError",
    "NativeModel",
    "TextClassifier",
    "TextEmbedder",
    "TorchModel",
    "TorchSparkError",
    "configure",
    "describe",
    "doctor",
    "embed_arrow",
    "evaluate",
    "export_model",
    "export_text_model",
    "jar_path",
    "local_session",
    "predict_arrow",
    "read_images",
    "register_udfs",
    "score_arrow",
    "score_partitions",
    "ship_model",
]
# The release version: the repository's VERSION file, shipped in the package.
__version__ = (_Path(__file__).parent / "VERSION").read_text().strip()
