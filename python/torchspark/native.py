"""The names `torchspark.native` has always had, for compatibility: the in-process model API
lives in `torchspark.native_model`, the Spark Python-worker functions in `torchspark.workers`."""

from torchspark.native_model import (
    ENGINES,
    NativeModel,
    Pending,
    as_record_batch,
    describe,
)
from torchspark.workers import (
    HANDLE_INVALID,
    MAX_BYTES_CONF,
    SCORE_SCHEMA,
    RowCounts,
    embed_arrow,
    predict_arrow,
    score_arrow,
    score_partitions,
    spark_type,
)

__all__ = [
    "ENGINES",
    "HANDLE_INVALID",
    "MAX_BYTES_CONF",
    "SCORE_SCHEMA",
    "NativeModel",
    "Pending",
    "RowCounts",
    "as_record_batch",
    "describe",
    "embed_arrow",
    "predict_arrow",
    "score_arrow",
    "score_partitions",
    "spark_type",
]
