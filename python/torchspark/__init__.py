"""torchspark: native TorchScript scoring and featurizing for Apache Spark.

- DataFrame API (runs in the JVM executors): `ImageScorer`, `ImageFeaturizer`, `TorchModel`,
  `TextEmbedder`.
- Python-worker API (mapPartitions / mapInArrow): `NativeModel`, `score_partitions`, `score_arrow`,
  `predict_arrow`, `embed_arrow`, `describe`.
- `local_session`, `jar_path`, `export_model`, `evaluate`.
"""

import sys
import types
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
)
from torchspark.evaluate import Evaluation, evaluate
from torchspark.native_model import NativeModel, describe
from torchspark.session import jar_path, local_session, register_udfs
from torchspark.workers import (
    SCORE_SCHEMA,
    embed_arrow,
    predict_arrow,
    score_arrow,
    score_partitions,
)


def export_model(module, path, spec, **kwargs):
    """Script, freeze and save `module` with its spec JSON (see torchspark.export)."""
    from torchspark.export import export_model as _export

    return _export(module, path, spec, **kwargs)


def export_text_model(source_dir, out_path, **kwargs):
    """Export a Hugging Face text encoder with its spec and tokenizer (see torchspark.export_text)."""
    from torchspark.export_text import export_text_model as _export

    return _export(source_dir, out_path, **kwargs)


def doctor(spark, **kwargs):
    """The node check on every executor, as a table (see torchspark.node.doctor)."""
    from torchspark.node import doctor as _doctor

    return _doctor(spark, **kwargs)


def __getattr__(name):
    # The py4j wrappers import pyspark; load them on first use.
    if name in ("ImageScorer", "ImageFeaturizer", "TorchModel", "TextEmbedder"):
        from torchspark import transformers

        return getattr(transformers, name)
    raise AttributeError(name)


# PySpark maps a Java stage class to Python by its name (dev.torchspark.X -> module
# dev.torchspark) when it loads a saved Pipeline: make that module resolve to ours.
class _LazyTransformers(types.ModuleType):
    def __getattr__(self, name):
        from torchspark import transformers

        return getattr(transformers, name)


sys.modules.setdefault("dev", types.ModuleType("dev"))
sys.modules.setdefault("dev.torchspark", _LazyTransformers("dev.torchspark"))

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
    "TextEmbedder",
    "TorchModel",
    "TorchSparkError",
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
