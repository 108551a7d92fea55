"""Scores every image under a path and writes Parquet: path, prediction, label, probability, error.

The Python twin of the Scala `dev.torchspark.examples.ScoreImages`, for spark-submit:

    spark-submit --master yarn --jars torchspark-spark4.1_2.13-0.1.0.jar examples/score_images.py \
      hdfs:///data/images hdfs:///models/resnet20.pt hdfs:///out/scores.parquet [--batch-size 64]

The scoring runs natively in the JVM executors (ImageScorer); Python only drives. `model` may
be a cluster-storage URI (hdfs://, abfs://, s3a://, ...), a path present on every node, or the
name of a file shipped with --files. One JSON line
`torchspark: {...}` reports the job's counters (images scored, row errors, model loads).
"""

from __future__ import annotations

import argparse
import json

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import torchspark
from torchspark import ImageScorer


def read_images(spark: SparkSession, path: str) -> DataFrame:
    """Every file under `path` (recursively) as rows of `path, content`, in a few partitions
    per task slot (see torchspark.read_images)."""
    return torchspark.read_images(spark, path).select("path", "content")


def score(images: DataFrame, model: str, batch_size: int = 64) -> tuple[DataFrame, ImageScorer]:
    """The output table, and the scorer (whose metrics() fill once an action has run)."""
    scorer = ImageScorer(
        modelPath=model, inputCol="content", batchSize=batch_size, handleInvalid="keep"
    )
    out = scorer.transform(images).select(
        "path",
        F.col("prediction").cast("int").alias("prediction"),
        F.col("predicted_label").alias("label"),
        # A row that failed (handleInvalid=keep) has no probability; vector_to_array rejects null.
        F.when(F.col("probability").isNotNull(), vector_to_array("probability")).alias(
            "probability"
        ),
        "error",
    )
    return out, scorer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", help="a directory (or glob) of images, any Hadoop filesystem")
    ap.add_argument("model", help="the TorchScript .pt (its .json beside it), or a --files name")
    ap.add_argument("output", help="where the Parquet goes")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)

    spark = SparkSession.builder.appName("torchspark-score-images").getOrCreate()
    out, scorer = score(read_images(spark, args.images), args.model, args.batch_size)
    out.write.mode("overwrite").parquet(args.output)
    print("torchspark: " + json.dumps(scorer.metrics(), sort_keys=True), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
