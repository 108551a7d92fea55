"""The PySpark driver of the cluster tests (scenario c and the executor-kill test), run with
spark-submit against a real cluster; it writes what it saw as JSON for pytest to check.

    driver.py scenario IMAGES MODEL OUT_JSON    ImageScorer twice, then rdd.mapPartitions
    driver.py kill IMAGES MODEL OUT_JSON        one slow ImageScorer job; prints progress lines
                                                so that the test can SIGKILL an executor mid-job

MODEL is a cluster-storage URI, a path on every node or a --files name.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from pyspark.sql import SparkSession

import torchspark
from torchspark import ImageScorer


def read_images(spark, path: str, partitions: int | None = None):
    if not partitions:
        return torchspark.read_images(spark, path).select("path", "content")
    # The kill test wants many small tasks (read_images makes a few per slot): binaryFile
    # splits by bytes, each file costing openCostInBytes more.
    spark.conf.set("spark.sql.files.openCostInBytes", "8192")
    spark.conf.set("spark.sql.files.minPartitionNum", str(partitions))
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    return reader.load(path).select("path", "content")


def executors(spark) -> int:
    # The JVM's status tracker lists the driver too.
    return len(spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()) - 1


def scored_rows(df) -> list[list]:
    return [
        [r.path, r.prediction, r.error] for r in df.select("path", "prediction", "error").collect()
    ]


def scenario(spark, images: str, model: str) -> dict:
    files = read_images(spark, images)
    scorer = ImageScorer(modelPath=model, inputCol="content", handleInvalid="keep")
    t0 = time.monotonic()
    first = scored_rows(scorer.transform(files))
    m1 = scorer.metrics()
    t1 = time.monotonic()
    second = scored_rows(scorer.transform(files))
    m2 = scorer.metrics()
    t2 = time.monotonic()

    # The Python-worker way: the same native code, in the executors' Python workers (a
    # cluster-storage model is shipped to them by score_partitions).
    rdd = [list(t) for t in files.rdd.mapPartitions(torchspark.score_partitions(model)).collect()]
    t3 = time.monotonic()
    return {
        # Cold: the executors load libtorch and the model; warm: they have them.
        "seconds": {"first": t1 - t0, "second": t2 - t1, "rdd": t3 - t2},
        "executors": executors(spark),
        "first": {"rows": first, "metrics": m1},
        "second": {"rows": second, "metrics": m2},
        "rdd": {"rows": [[p, pred, e] for p, pred, _label, _prob, _top_k, e in rdd]},
    }


def kill(spark, images: str, model: str) -> dict:
    files = read_images(spark, images, partitions=24)

    # A slow identity upstream of the scorer, in the same stage: the job lasts long enough
    # for the test to kill an executor while tasks are still to run.
    def slow(batches):
        for b in batches:
            time.sleep(0.4)
            yield b

    slowed = files.mapInArrow(slow, files.schema)
    scorer = ImageScorer(modelPath=model, inputCol="content", handleInvalid="keep")
    sc = spark.sparkContext
    done = threading.Event()

    def progress() -> None:
        while not done.is_set():
            for stage in sc.statusTracker().getActiveStageIds():
                info = sc.statusTracker().getStageInfo(stage)
                if info:
                    print(
                        f"PROGRESS {info.numCompletedTasks}/{info.numTasks}",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.2)

    threading.Thread(target=progress, daemon=True).start()
    try:
        rows = scored_rows(scorer.transform(slowed))
    finally:
        done.set()
    return {"executors": executors(spark), "rows": rows, "metrics": scorer.metrics()}


def main() -> None:
    mode, images, model, out = sys.argv[1:5]
    spark = SparkSession.builder.appName(f"torchspark-test-{mode}").getOrCreate()
    result = {"scenario": scenario, "kill": kill}[mode](spark, images, model)
    with open(out, "w") as f:
        json.dump(result, f)
    spark.stop()


if __name__ == "__main__":
    main()
