"""Transfer learning on Spark: ImageNet features -> a Spark ML classifier (the demo's 2nd part).

The image set: scikit-image's `lfw_subset`, 200 real 25x25 grey photographs, 100 faces (from
Labeled Faces in the Wild) and 100 non-faces, shipped inside the scikit-image wheel (nothing is
downloaded). It is a task that neither network was trained on: EfficientNet-Lite0 learned
ImageNet's 1000 classes, the demo's ResNet-20 learned digits. The images are written as PNGs
(label in the path), read with Spark's binaryFile source, featurized with ImageFeaturizer and
classified by LogisticRegression in a Pipeline; held-out accuracy is printed beside
LogisticRegression on the raw pixels and on the ResNet-20's features.

    python examples/transfer_learning.py       (after the demo's first part, or on its own)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "examples")]

import efficientnet_lite0  # noqa: E402
from pyspark.ml import Pipeline  # noqa: E402
from pyspark.ml.classification import LogisticRegression  # noqa: E402
from pyspark.ml.evaluation import MulticlassClassificationEvaluator  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import torchspark  # noqa: E402

OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo-output"))
SEED = 0
CLASSES = ["non-face", "face"]


def faces_dataset() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images 200x25x25, labels: 1 face, 0 non-face) from scikit-image's package data."""
    from skimage.data import lfw_subset

    x = lfw_subset()  # floats in [0, 1]; the first 100 are faces
    y = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    return np.round(x * 255).astype(np.uint8), y


def write_faces(folder: Path) -> tuple[Path, Path]:
    """PNGs under folder/{train,test}/label=<k>/, a stratified 60/40 split with a fixed seed."""
    from PIL import Image

    x, y = faces_dataset()
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(y), bool)
    for k in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == k))
        test[idx[: int(len(idx) * 0.4)]] = True
    if not (folder / "test").exists() or sum(1 for _ in folder.rglob("*.png")) != len(y):
        shutil.rmtree(folder, ignore_errors=True)
        for i, (img, k) in enumerate(zip(x, y)):
            d = folder / ("test" if test[i] else "train") / f"label={k}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"face_{i:03d}.png")
    return folder / "train", folder / "test"


def with_resize(model: Path, size: int, out: Path) -> Path:
    """A copy of `model` whose spec resizes any image to size x size (the ResNet-20 takes 32x32,
    the faces are 25x25)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out)
    spec = json.loads(model.with_suffix(".json").read_text())
    spec["preprocess"]["resize"] = [size, size]
    out.with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
    return out


def read_labelled(spark, folder: Path):
    return (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(str(folder))
        .withColumn("label", F.regexp_extract("path", r"label=(\d+)", 1).cast("double"))
    )


def raw_pixels(spark, folder: Path):
    """(path, label, pixels as an ML vector in [0, 1]): the baseline without a network."""
    import io

    from PIL import Image

    rows = []
    for r in read_labelled(spark, folder).select("path", "label", "content").collect():
        px = np.asarray(Image.open(io.BytesIO(r.content)), np.float64).ravel() / 255
        rows.append((r.path, r.label, Vectors.dense(px)))
    return spark.createDataFrame(rows, ["path", "label", "features"])


def accuracy(model, df) -> float:
    ev = MulticlassClassificationEvaluator(metricName="accuracy")
    return ev.evaluate(model.transform(df))


def run(spark, resnet20: Path | None = None) -> dict:
    """Featurize, train, evaluate; prints [transfer] lines and returns the figures."""
    t_start = time.time()
    classifier, featurizer_path = efficientnet_lite0.export(OUT / "model")
    train_dir, test_dir = write_faces(OUT / "images" / "faces")
    train, test = read_labelled(spark, train_dir).cache(), read_labelled(spark, test_dir).cache()
    n_train, n_test = train.count(), test.count()
    print(
        f"[transfer] scikit-image lfw_subset: {n_train} training and {n_test} held-out photos "
        "(25x25 grey, faces vs non-faces)",
        flush=True,
    )
    lr = LogisticRegression(maxIter=200, regParam=0.01)
    results = {}

    def fit_eval(name: str, featurizer_model: Path | None) -> None:
        t0 = time.time()
        if featurizer_model is None:
            pipe = Pipeline(stages=[lr])
            tr, te = raw_pixels(spark, train_dir), raw_pixels(spark, test_dir)
        else:
            feat = torchspark.ImageFeaturizer(
                modelPath=str(featurizer_model), inputCol="content", batchSize=32
            )
            pipe, tr, te = Pipeline(stages=[feat, lr]), train, test
        fitted = pipe.fit(tr)
        acc = accuracy(fitted, te)
        results[name] = acc
        print(
            f"[transfer] {name:<44} held-out accuracy {acc:6.2%}  ({time.time() - t0:.1f} s)",
            flush=True,
        )

    fit_eval("LogisticRegression on raw pixels (625)", None)
    if resnet20 is not None and Path(resnet20).exists():
        fit_eval(
            "LR on the demo's ResNet-20 features (64)",
            with_resize(Path(resnet20), 32, OUT / "model" / "resnet20_resize32.pt"),
        )
    fit_eval("LR on EfficientNet-Lite0 ImageNet features", featurizer_path)

    # Featurizer throughput on every image, warm (the model is loaded by now).
    both = train.unionByName(test)
    feat = torchspark.ImageFeaturizer(modelPath=str(featurizer_path), inputCol="content")
    t0 = time.time()
    n = feat.transform(both).select("features").filter("features IS NOT NULL").count()
    dt = time.time() - t0
    m = feat.metrics()
    results["featurizer_images_per_s"] = n / dt
    print(
        f"[transfer] ImageFeaturizer (EfficientNet-Lite0, 1280-dim): {n} images in {dt:.1f} s, "
        f"{n / dt:,.0f} images/s; task time: preprocess {m['preprocessTimeMs'] / 1000:.2f} s, "
        f"forward {m['forwardTimeMs'] / 1000:.2f} s",
        flush=True,
    )

    # The classifier on a few of scikit-image's photographs, top-5 with ImageNet names.
    photos = photo_frame(spark)
    scorer = torchspark.ImageScorer(modelPath=str(classifier), inputCol="content", topK=5)
    for r in scorer.transform(photos).select("name", "top_k").collect():
        top = ", ".join(f"{t.label} {t.probability:.2f}" for t in r.top_k[:3])
        print(f"[transfer] {r.name:<10} top-3: {top}", flush=True)
    print(f"[transfer] done in {time.time() - t_start:.0f} s", flush=True)
    return results


def photo_frame(spark, names=("chelsea", "coffee", "astronaut", "rocket")):
    """A DataFrame (name, content) of scikit-image's packaged photos as PNG bytes."""
    import io

    from PIL import Image
    from skimage import data

    rows = []
    for n in names:
        buf = io.BytesIO()
        Image.fromarray(getattr(data, n)()[..., :3]).save(buf, format="PNG")
        rows.append((n, bytearray(buf.getvalue())))
    return spark.createDataFrame(rows, "name string, content binary")


if __name__ == "__main__":
    session = torchspark.local_session("local[2]", **{"spark.ui.showConsoleProgress": "false"})
    session.sparkContext.setLogLevel("ERROR")
    model = OUT / "model" / "resnet20.pt"
    run(session, model if model.exists() else None)
    session.stop()
