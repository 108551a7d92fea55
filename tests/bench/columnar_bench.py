"""Issue 29's columnar input, measured: the diabetes MLP over 1,000,000 rows read from Parquet.

Ways, each run in rounds that alternate them (so a shared CPU's load falls on all alike), the best
of the rounds kept:
  - Spark scan alone (the Parquet read + a sum, no model)
  - the native engine alone (NativeModel on the same rows as one Arrow table, one process)
  - TorchModel (reads rows: the transformers' row path)
  - the SQL function with spark.torchspark.columnarInput=false (the node's row path)
  - the SQL function with the columnar path (the default), over `features` (array<double>) and
    over `array(f0, ..., f9)` (ten double columns)

Not a test and not in `make bench` yet: `$PY tests/bench/columnar_bench.py` (env COLUMNAR_ROWS,
COLUMNAR_ROUNDS; the Parquet files go under target/ and are removed at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_info, log, register_sql  # noqa: E402

import torchspark  # noqa: E402

ROWS = int(os.environ.get("COLUMNAR_ROWS", 1_000_000))
ROUNDS = int(os.environ.get("COLUMNAR_ROUNDS", 3))
GENERAL = ROOT / "tests" / "fixtures" / "out" / "general"
WORK = ROOT / "target" / "columnar-bench"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    from pyspark.sql import functions as F

    model_name, _ = cpu_info()
    log(f"CPU: {model_name}; {os.cpu_count()} cores")
    data = json.loads((GENERAL / "diabetes.json").read_text())
    x = np.asarray(data["X"], np.float64)
    reps = -(-ROWS // len(x))
    model = str(GENERAL / "diabetes_mlp.pt")
    spark = torchspark.local_session(
        "local[2]", **{"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    )
    try:
        shutil.rmtree(WORK, ignore_errors=True)
        small = spark.createDataFrame(
            [(i, r.tolist()) for i, r in enumerate(x)], "k long, features array<double>"
        )
        (
            spark.range(reps)
            .crossJoin(small)
            .select(
                (F.col("id") * len(x) + F.col("k")).alias("id"),
                "features",
                *[F.col("features")[j].alias(f"f{j}") for j in range(10)],
            )
            .limit(ROWS)
            .repartition(4)
            .write.parquet(str(WORK / "rows.parquet"))
        )
        df = spark.read.parquet(str(WORK / "rows.parquet"))
        df.createOrReplaceTempView("col_bench")
        register_sql(spark, "col_mlp", model)
        cols = ", ".join(f"f{j}" for j in range(10))

        def total(frame, col="prediction"):
            return lambda: frame.agg(F.sum(col)).collect()

        def sql(query: str, columnar: bool):
            def run():
                spark.conf.set("spark.torchspark.columnarInput", str(columnar).lower())
                try:
                    spark.sql(query).agg(F.sum("prediction")).collect()
                finally:
                    spark.conf.unset("spark.torchspark.columnarInput")

            return run

        tm = torchspark.TorchModel(modelPath=model, batchSize=8192, numThreads=1)
        import pyarrow as pa

        big = np.tile(x, (reps, 1))[:ROWS]
        table = pa.RecordBatch.from_arrays(
            [pa.FixedSizeListArray.from_arrays(pa.array(big.reshape(-1), pa.float64()), 10)],
            names=["features"],
        )
        native = torchspark.NativeModel(model, num_threads=2)
        q_list = "SELECT col_mlp(features).prediction AS prediction FROM col_bench"
        q_gather = f"SELECT col_mlp(array({cols})).prediction AS prediction FROM col_bench"
        ways = {
            "Spark scan alone (Parquet, sum of f0)": total(
                df.select(F.col("f0").alias("prediction"))
            ),
            "native engine alone (1 process, batch 8192, 2 threads)": lambda: native.predict(
                table, batch_size=8192
            ),
            "TorchModel (rows), batch 8192": total(tm.transform(df)),
            "SQL col_mlp(features), rows": sql(q_list, False),
            "SQL col_mlp(features), columnar": sql(q_list, True),
            "SQL col_mlp(array(f0..f9)), rows": sql(q_gather, False),
            "SQL col_mlp(array(f0..f9)), columnar": sql(q_gather, True),
        }
        for fn in ways.values():  # warm-up: model loads, JIT, page cache
            fn()
        times: dict[str, list[float]] = {w: [] for w in ways}
        for r in range(ROUNDS):
            for w, fn in ways.items():
                times[w].append(timed(fn))
            log(f"round {r + 1}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values()))
        log(f"{ROWS:,} rows from Parquet, 4 files, local[2], best of {ROUNDS} alternating rounds")
        for w, ts in times.items():
            log(f"  {w:<58} {min(ts):6.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")
        # Where the time goes: the node's SQL metrics over one run of each query and path (the
        # physical plan executed directly, so its node holds the metrics).
        log("profile (one run each): wall, the node's model call time (encode + submit + wait),")
        log("  its forward time (summed over tasks), columnar batches read")
        for q in (q_list, q_gather):
            for columnar in (False, True):
                spark.conf.set("spark.torchspark.columnarInput", str(columnar).lower())
                plan = spark.sql(q)._jdf.queryExecution().executedPlan()
                t = time.perf_counter()
                plan.execute().count()
                wall = time.perf_counter() - t
                node = plan
                while not node.nodeName().startswith("TorchEval"):
                    node = node.children().apply(0)
                m = node.metrics()

                def get(name, m=m):
                    return m.apply(name).value()

                log(
                    f"  {node.simpleString(5)[:60]}...: wall {wall:.2f} s, call "
                    f"{get('waitTime') / 1e9:.2f} s, forward {get('forwardTime') / 1e9:.2f} s, "
                    f"{get('columnarBatches')} batches, input={node.inputPath()}"
                )
        spark.conf.unset("spark.torchspark.columnarInput")
    finally:
        spark.stop()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
