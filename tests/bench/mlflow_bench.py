"""torchspark from the MLflow registry against MLflow's own batch path, side by side in one run
(issue 28's bench row).

    python tests/bench/mlflow_bench.py      (`make bench` runs it; MLFLOW_BENCH_ROWS=200000: shorter)

A real `mlflow server` (SQLite, local artifact root, 127.0.0.1) holds the diabetes MLP
(tests/fixtures/make_general_fixtures.py, TorchScript) twice under the alias @bench:
- as torchspark logs it (the `.pt` and its spec), scored by `TorchModel(modelPath=
  "models:/diabetes_ts@bench")` in the executor JVMs, resolved once on the driver;
- as `mlflow.pytorch.log_model` logs the same scripted module, scored by
  `mlflow.pyfunc.spark_udf(spark, "models:/diabetes_pt@bench", env_manager="local")`: MLflow's
  pytorch flavor in the Python workers, the ten features as ten double columns (its input).
The rows: the 442 diabetes rows repeated to 1,000,000, 4 cached partitions, local[2]; each way
sums its predictions. Each way at its best batch (torchspark 1024/8192; spark_udf's Arrow batch
`spark.sql.execution.arrow.maxRecordsPerBatch` 10,000 (its default) and 50,000), a cold pass and
2 warm ones, best warm. Model loads per job: torchspark's counter (NativeBridge.loadCount) on
the driver JVM (local mode: the executors are in it), over all six passes; spark_udf loads the
model once in each Python worker process it runs in (its code; not counted here). Images are not measured:
MLflow's pytorch flavor takes one float tensor, so it cannot decode image bytes. Writes
tests/bench/mlflow.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests" / "python")]

from benchlib import cpu_info, log, timed  # noqa: E402  (tests/bench)
from mlflow_server import mlflow_server  # noqa: E402  (tests/python)

import torchspark  # noqa: E402

ROWS = int(os.environ.get("MLFLOW_BENCH_ROWS", 1_000_000))
WARM = 2
GENERAL = ROOT / "tests" / "fixtures" / "out" / "general"
RESULTS = ROOT / "tests" / "bench" / "mlflow.md"


def steady(fn) -> tuple[float, float]:
    cold = timed(fn)
    return cold, min(timed(fn) for _ in range(WARM))


def register(url: str, tmp: Path) -> None:
    """diabetes_ts@bench (torchspark's files) and diabetes_pt@bench (mlflow.pytorch)."""
    import mlflow
    import torch

    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient()
    folder = tmp / "ts"
    folder.mkdir()
    (folder / "diabetes_mlp.pt").write_bytes((GENERAL / "diabetes_mlp.pt").read_bytes())
    (folder / "diabetes_mlp.json").write_text((GENERAL / "diabetes_mlp.json").read_text())
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model")
    client.create_registered_model("diabetes_ts")
    v = client.create_model_version(
        "diabetes_ts", f"runs:/{run.info.run_id}/model", run.info.run_id
    )
    client.set_registered_model_alias("diabetes_ts", "bench", v.version)
    scripted = torch.jit.load(str(GENERAL / "diabetes_mlp.pt"))
    with mlflow.start_run():
        # MLflow 3 saves a scripted module with torch.jit.save under "pickle" (its "pt2" default is
        # for exported programs).
        info = mlflow.pytorch.log_model(
            scripted,
            name="model",
            registered_model_name="diabetes_pt",
            serialization_format="pickle",
        )
    client.set_registered_model_alias("diabetes_pt", "bench", info.registered_model_version)


def main() -> None:
    import pyspark.sql.functions as F

    model_name, flags = cpu_info()
    has = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    cpu = f"{model_name}; {os.cpu_count()} cores; {', '.join(has)}"
    log(f"MLflow bench on {cpu}; {ROWS:,} rows")
    with tempfile.TemporaryDirectory(prefix="torchspark-mlflow-bench-") as t:
        tmp = Path(t)
        with mlflow_server(tmp, "--default-artifact-root", str(tmp / "artifacts")) as url:
            os.environ["MLFLOW_TRACKING_URI"] = url
            register(url, tmp)
            spark = torchspark.local_session(
                "local[2]", **{"spark.ui.showConsoleProgress": "false"}
            )
            spark.conf.set("spark.torchspark.mlflow.trackingUri", url)
            rows = run(spark, F)
            spark.stop()
    write(rows, cpu)


def run(spark, F) -> list[dict]:
    import mlflow.pyfunc

    data = json.loads((GENERAL / "diabetes.json").read_text())
    x = np.asarray(data["X"], np.float64)
    reps = -(-ROWS // len(x))
    small = spark.createDataFrame(
        [(i, r.tolist()) for i, r in enumerate(x)], "k long, features array<double>"
    )
    df = (
        spark.range(reps)
        .crossJoin(small)
        .select(
            "features",
            *[F.col("features")[i].alias(f"x{i}") for i in range(10)],
        )
        .limit(ROWS)
        .repartition(4)
        .cache()
    )
    df.count()
    jvm = spark.sparkContext._jvm
    rows = []

    def record(way, cold, best, loads, note):
        rows.append({"way": way, "cold": cold, "best": best, "loads": loads, "note": note})
        log(
            f"  {way:<44} cold {cold:6.2f}s best {best:6.2f}s {ROWS / best:>11,.0f} rows/s  loads {loads}  {note}"
        )

    best = {}
    before = jvm.dev.torchspark.NativeBridge.loadCount()
    for bs in (1024, 8192):
        tm = torchspark.TorchModel(
            modelPath="models:/diabetes_ts@bench", batchSize=bs, numThreads=1
        )
        best[bs] = steady(lambda tm=tm: tm.transform(df).agg(F.sum("prediction")).collect())
    loads = jvm.dev.torchspark.NativeBridge.loadCount() - before
    bs = min(best, key=lambda b: best[b][1])
    record(
        "torchspark TorchModel, models:/diabetes_ts@bench",
        *best[bs],
        loads,
        f"batch {bs}, 1 thread/task; loads: over all 6 passes (both batch sizes)",
    )
    ours = best[bs][1]

    peer = {}
    for per_batch in (10_000, 50_000):
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(per_batch))
        udf = mlflow.pyfunc.spark_udf(spark, "models:/diabetes_pt@bench", result_type="double",
                                      env_manager="local")  # fmt: skip
        cols = [f"x{i}" for i in range(10)]
        peer[per_batch] = steady(
            lambda u=udf, c=cols: df.select(u(*c).alias("p")).agg(F.sum("p")).collect()
        )
    spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    per_batch = min(peer, key=lambda b: peer[b][1])
    record("mlflow.pyfunc.spark_udf (pytorch flavor, local env)", *peer[per_batch], "1 per Python worker (not counted)",
           f"Arrow batch {per_batch:,}; torch threads as MLflow leaves them")  # fmt: skip
    rows.append({"ratio": peer[per_batch][1] / ours})
    log(f"  spark_udf time / TorchModel time: {peer[per_batch][1] / ours:.2f}")
    return rows


def write(rows: list[dict], cpu: str) -> None:
    lines = [
        "# torchspark from the MLflow registry vs mlflow.pyfunc.spark_udf",
        "",
        f"{date.today().isoformat()}, {cpu}; `python tests/bench/mlflow_bench.py`; {ROWS:,} rows"
        " of the diabetes MLP, 4 cached partitions, local[2]; best of 2 warm passes (cold in"
        " brackets). What each way is: the script's docstring.",
        "",
        "| way | best s (cold) | rows/s | model loads | note |",
        "|---|---:|---:|---|---|",
    ]
    for r in rows:
        if "way" in r:
            lines.append(
                f"| {r['way']} | {r['best']:.2f} ({r['cold']:.2f}) | {ROWS / r['best']:,.0f} |"
                f" {r['loads']} | {r['note']} |"
            )
    ratio = next(r["ratio"] for r in rows if "ratio" in r)
    lines += ["", f"spark_udf's time / TorchModel's: **{ratio:.2f}**", ""]
    RESULTS.write_text("\n".join(lines))
    log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
