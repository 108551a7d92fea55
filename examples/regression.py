"""Regression on Spark with torchspark: an MLP trained on scikit-learn's diabetes data (442 rows,
10 features), scored by `TorchModel` from a `VectorAssembler` column, and Spark's
`RegressionEvaluator` beside PyTorch's RMSE.

The model and PyTorch's own predictions come from tests/fixtures/make_general_fixtures.py
(made here when missing: trained in a few seconds, nothing downloaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERAL = Path(
    os.environ.get("TORCHSPARK_GENERAL", ROOT / "tests" / "fixtures" / "out" / "general")
)


def fixture() -> Path:
    """The folder with diabetes_mlp.pt, its spec and diabetes.json (made when missing)."""
    if not (GENERAL / "manifest.json").exists():  # written last by the script
        script = ROOT / "tests" / "fixtures" / "make_general_fixtures.py"
        subprocess.run([sys.executable, str(script), str(GENERAL)], check=True)
    return GENERAL


def data() -> dict:
    """feature_names, X (442x10), y, PyTorch's predictions `pred` and its `rmse`."""
    return json.loads((fixture() / "diabetes.json").read_text())


def frame(spark, d: dict):
    """The 442 patients: `id`, the ten features as double columns, and the target `y`."""
    names = d["feature_names"]
    rows = [(i, *map(float, x), float(y)) for i, (x, y) in enumerate(zip(d["X"], d["y"]))]
    schema = "id int, " + ", ".join(f"`{n}` double" for n in names) + ", y double"
    return spark.createDataFrame(rows, schema)


def run(spark) -> tuple[float, float, float]:
    """Scores the diabetes rows with TorchModel; returns (Spark's RMSE, PyTorch's RMSE, the
    largest difference between a Spark prediction and PyTorch's)."""
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.feature import VectorAssembler

    import torchspark

    d = data()
    model = str(fixture() / "diabetes_mlp.pt")
    features = VectorAssembler(inputCols=d["feature_names"], outputCol="features")
    scored = torchspark.TorchModel(modelPath=model).transform(features.transform(frame(spark, d)))
    rmse = RegressionEvaluator(labelCol="y", predictionCol="prediction").evaluate(scored)
    got = dict(scored.select("id", "prediction").collect())
    diff = max(abs(got[i] - p) for i, p in enumerate(d["pred"]))
    print(
        f"[result] diabetes MLP (10-32-1) on {len(got)} rows, TorchModel from a VectorAssembler "
        f"column: RMSE {rmse:.4f} (PyTorch: {d['rmse']:.4f}); largest prediction difference "
        f"{diff:.1e}",
        flush=True,
    )
    return rmse, d["rmse"], diff
