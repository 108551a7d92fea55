"""Two builds of torchspark side by side on the same machine: ImageScorer and ImageFeaturizer.

    python tests/bench/ab_trees.py --base /path/to/other/checkout [--rounds 2]

For a change that must not cost speed (issue 26 retired the image-only path: "make bench's
ImageScorer and featurizer figures within noise of today's"), this runs the same workload
through two checkouts, each built (`make setup` there: its .so and jar), in child processes
that alternate base, head, base, head... so that a noisy minute hits both. Each child imports
torchspark from its checkout's python/ (and so its jar and .so), starts local[2] and runs:

- ImageScorer over 10,000 PNGs (32x32, the digits the demo uses) with this checkout's
  fixture ResNet-20 (tests/fixtures/out/resnet20.pt), engine shared and per-task, batch 128;
- ImageFeaturizer over 2,000 JPEGs of ImageNet sizes (featurize_bench's), EfficientNet-Lite0
  and a headless ResNet-18, batch featurize_bench.BATCH.

Each way: a cold pass, then 3 warm passes; the figure is images/s of the best warm pass, and
the table gives each build's best over its rounds with the spread (max/min of its rounds).
Both builds read the same files and the same model files (made by this checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("DEMO_OUT", ROOT / "demo-output")) / "ab"

CHILD = r"""
import json, sys, time
tree, root, work = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [tree + "/python", root + "/tests/bench", root + "/examples"]
import torchspark
assert torchspark.__file__.startswith(tree), torchspark.__file__
spark = torchspark.local_session("local[2]", **{"spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false"})
spark.sparkContext.setLogLevel("ERROR")
cfg = json.loads(open(work + "/inputs.json").read())

def best(fn, warm=3):
    t = time.perf_counter(); fn(); cold = time.perf_counter() - t
    times = []
    for _ in range(warm):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return cold, min(times)

def sink(frame):
    frame.write.format("noop").mode("overwrite").save()

out = {}
pngs = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(cfg["pngs"])
n = pngs.count()
for engine in ("shared", "per-task"):
    sc = torchspark.ImageScorer(modelPath=cfg["scorer"], inputCol="content", batchSize=128)
    sc = sc.copy({sc.getParam("engine"): engine})
    cold, warm = best(lambda: sink(sc.transform(pngs).select("path", "prediction")))
    out[f"ImageScorer {engine}"] = (n / warm, cold)
jpegs = spark.read.format("binaryFile").load(cfg["jpegs"])
m = jpegs.count()
for name, path in (cfg["featurizers"] if sys.argv[4] == "all" else {}).items():
    f = torchspark.ImageFeaturizer(modelPath=path, inputCol="content", batchSize=cfg["batch"])
    cold, warm = best(lambda: sink(f.transform(jpegs)))
    out[f"ImageFeaturizer {name}"] = (m / warm, cold)
print("RESULT " + json.dumps(out), flush=True)
spark.stop()
"""


def inputs() -> dict:
    """The shared inputs, made once by this checkout: PNGs, JPEGs and the featurizer models."""
    sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests" / "bench"), str(ROOT / "examples")]
    import featurize_bench
    import numpy as np

    import demo
    import train_resnet20

    WORK.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte), _ = train_resnet20.dataset()
    pngs = WORK / "pngs"
    demo.write_pngs(pngs, np.concatenate([xtr, xte]), np.concatenate([ytr, yte]), 10000)
    featurize_bench.OUT = WORK
    jpegs = WORK / "jpeg_imagenet_sizes"
    featurize_bench.write_photo_jpegs(jpegs, 2000)
    feats = {k: str(v[0]) for k, v in featurize_bench.models(WORK / "imagenet").items()}
    cfg = {
        "pngs": str(pngs),
        "jpegs": str(jpegs),
        "scorer": str(ROOT / "tests" / "fixtures" / "out" / "resnet20.pt"),
        "featurizers": feats,
        "batch": featurize_bench.BATCH,
    }
    (WORK / "inputs.json").write_text(json.dumps(cfg))
    return cfg


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the other checkout (built)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--only",
        choices=["all", "scorer"],
        default="all",
        help="scorer: the ImageScorer ways only (a minute a round)",
    )
    args = ap.parse_args()
    trees = {"base": str(Path(args.base).resolve()), "head": str(ROOT)}
    inputs()
    rev = {
        k: subprocess.run(["git", "-C", t, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
        for k, t in trees.items()
    }  # fmt: skip
    print(f"== CPU: {cpu()}, {os.cpu_count()} cores; base {rev['base']}, head {rev['head']} ==")
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    for r in range(args.rounds):
        for k in ("base", "head"):
            p = subprocess.run(
                [sys.executable, "-c", CHILD, trees[k], str(ROOT), str(WORK), args.only],
                capture_output=True, text=True,
            )  # fmt: skip
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                sys.exit(f"{k} round {r + 1} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
            res = json.loads(line[-1][7:])
            runs[k].append(res)
            print(f"round {r + 1} {k}: " + ", ".join(f"{w} {v[0]:,.0f}/s" for w, v in res.items()))
    print(f"\n| way | base {rev['base']} images/s | head {rev['head']} images/s | head/base "
          "| spread base | spread head |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for way in runs["head"][0]:
        b = [x[way][0] for x in runs["base"]]
        h = [x[way][0] for x in runs["head"]]
        print(f"| {way} | {max(b):,.0f} | {max(h):,.0f} | {max(h) / max(b):.3f} "
              f"| {max(b) / min(b):.3f} | {max(h) / min(h):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
