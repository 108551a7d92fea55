"""torchspark: native TorchScript scoring and featurizing for Apache Spark."""

from torchspark.export import export_model

__all__ = ["export_model"]
__version__ = "0.1.0"
