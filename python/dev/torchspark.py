"""`dev.torchspark`: where PySpark finds the Python class of a torchspark stage.

Loading a saved Pipeline, PySpark turns each stage's Java class name into a Python module and
class (`dev.torchspark.ImageFeaturizer` -> `__import__("dev.torchspark").ImageFeaturizer`), and
over Spark Connect it names the Java class from the Python class's `__module__`. This module
answers for the PySpark wrappers in `torchspark.transformers`, imported on first use.

`dev` has no `__init__.py`: it is a namespace package (PEP 420), so a user's own package named
`dev` always wins over it; `import torchspark` then adds a finder that serves only
`dev.torchspark` when that package has none (torchspark/__init__.py).
"""

_STAGES = ("ImageScorer", "ImageFeaturizer", "TorchModel", "TextEmbedder", "TextClassifier")


def __getattr__(name: str):
    if name in _STAGES:
        from torchspark import transformers

        return getattr(transformers, name)
    raise AttributeError(f"module 'dev.torchspark' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_STAGES])
