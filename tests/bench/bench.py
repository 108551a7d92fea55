"""torchspark against every way a Spark user scores images today, side by side, in one run.

    make bench          (BENCH_QUICK=1 for a short smoke run)

Workload: the demo's ResNet-20 and 10,000 PNGs (32x32 RGB) read with the binaryFile source,
on local[2]. Prints one line per way (images/s, cold and warm seconds, accuracy), the ratios,
memory, the ImageNet-size featurizer and scaling; writes tests/bench/results.md and
tests/bench/results.png.
"""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "examples")]

import featurize_bench  # noqa: E402

import demo  # noqa: E402
import torchspark  # noqa: E402
import train_resnet20  # noqa: E402

OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo-output"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
N = 2000 if QUICK else 10000
RESULTS = ROOT / "tests" / "bench"
LABEL_RE = r"label=(\d+)"


def log(msg: str) -> None:
    print(msg, flush=True)


def accuracy(pairs) -> float:
    """pairs of (path, prediction)."""
    import re

    pairs = list(pairs)
    ok = [
        int(re.search(LABEL_RE, p).group(1)) == int(pred) for p, pred in pairs if pred is not None
    ]
    return sum(ok) / max(1, len(pairs))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# ---- the ways ------------------------------------------------------------------------------


def decode_all(files: list[str]) -> np.ndarray:
    from PIL import Image

    x = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    x = (x / 255.0 - 0.5) / 0.25
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def native_raw(model: str, x: np.ndarray, bs: int, threads: int):
    m = torchspark.NativeModel(model, num_threads=threads)

    def run():
        preds = []
        for i in range(0, len(x), bs):
            preds += m.score(x[i : i + bs], batch_size=bs, top_k=1).column("prediction").to_pylist()
        return preds

    return run


def torch_raw(model: str, x: np.ndarray, bs: int, threads: int):
    import torch

    mod = torch.jit.load(model)
    xt = torch.from_numpy(x)

    def run():
        torch.set_num_threads(threads)
        preds = []
        with torch.inference_mode():
            for i in range(0, len(xt), bs):
                preds += torch.softmax(mod(xt[i : i + bs]), 1).argmax(1).tolist()
        return preds

    return run


def pyspark_torch_partition(model_path: str):
    """The seed article's recipe, in PyTorch: model loaded per partition, PIL, numpy, torch."""

    def run(rows):
        import io

        import numpy as np
        import torch
        from PIL import Image

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        mod = torch.jit.load(model_path)
        batch, paths = [], []

        def flush():
            x = np.stack(batch).transpose(0, 3, 1, 2)
            with torch.inference_mode():
                pred = torch.softmax(mod(torch.from_numpy(np.ascontiguousarray(x))), 1).argmax(1)
            return list(zip(paths, pred.tolist()))

        for r in rows:
            im = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32)
            batch.append((im / 255.0 - 0.5) / 0.25)
            paths.append(r.path)
            if len(batch) == 64:
                yield from flush()
                batch, paths = [], []
        if batch:
            yield from flush()

    return run


def predict_batch_udf_column(model_path: str):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import IntegerType

    def make_predict():
        import io

        import numpy as np
        import torch
        from PIL import Image

        mod = torch.jit.load(model_path)

        def predict(content: np.ndarray) -> np.ndarray:
            x = np.stack(
                [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float32) for b in content]
            )
            x = np.ascontiguousarray(((x / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2))
            with torch.inference_mode():
                return torch.softmax(mod(torch.from_numpy(x)), 1).argmax(1).numpy().astype(np.int32)

        return predict

    return predict_batch_udf(make_predict, return_type=IntegerType(), batch_size=64)


# ---- helpers -------------------------------------------------------------------------------


def jvm_rss_peak(spark) -> float:
    """Peak RSS (MiB) of the JVM: in local mode the driver is the executor."""
    pid = spark.sparkContext._gateway.proc.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def session(master: str = "local[2]"):
    return torchspark.local_session(
        master,
        **{
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
        },
    )


def memory_probe(master: str, model: str, images: str) -> tuple[float, int]:
    """Runs in a child process: fresh JVM, score, report (peak RSS MiB, model loads)."""
    code = f"""
import sys; sys.path[:0] = {[str(ROOT / "python"), str(ROOT / "tests" / "bench")]}
import bench
s = bench.session({master!r}); s.sparkContext.setLogLevel("ERROR")
df = s.read.format("binaryFile").load({images!r}).repartition(4)
sc = bench.torchspark.ImageScorer(modelPath={model!r}, inputCol="content", batchSize=16)
sc.transform(df).write.format("noop").mode("overwrite").save()
print("RESULT", bench.jvm_rss_peak(s), sc.metrics()["modelLoads"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1].split()
    return float(line[1]), int(line[2])


def scaling_probe(model: str, images: str, unions: int) -> tuple[float, float, float, int]:
    """Fresh JVM: N images cold then warm, then (1 + unions) x N; per-image time ratio, peak RSS
    after the warm N run and after the large run."""
    code = f"""
import sys, time; sys.path[:0] = {[str(ROOT / "python"), str(ROOT / "tests" / "bench")]}
import bench
s = bench.session(); s.sparkContext.setLogLevel("ERROR")
df = s.read.format("binaryFile").option("recursiveFileLookup", "true").load({images!r})
sc = bench.torchspark.ImageScorer(modelPath={model!r}, inputCol="content", batchSize=128)
run = lambda d: sc.transform(d).select("prediction").filter("prediction IS NOT NULL").count()
run(df)
t = time.perf_counter(); n = run(df); small = (time.perf_counter() - t) / n
rss_small = bench.jvm_rss_peak(s)
big = df
for _ in range({unions}):
    big = big.union(df)
t = time.perf_counter(); nb = run(big); large = (time.perf_counter() - t) / nb
print("RESULT", large / small, rss_small, bench.jvm_rss_peak(s), nb)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1].split()
    return float(line[1]), float(line[2]), float(line[3]), int(line[4])


def make_big_model(path: Path) -> float:
    """A randomly initialised ResNet-50-sized network (about 100 MB), input 64x64."""
    import torch
    import torchvision

    if not path.exists():
        torch.manual_seed(0)
        net = torchvision.models.resnet50(num_classes=1000)
        spec = {
            "input": {"height": 64, "width": 64},
            "preprocess": {"resize": [64, 64], "mean": [0.5], "std": [0.25]},
        }
        torchspark.export_model(net, path, spec)
    return path.stat().st_size / 2**20


def by_way(rows: list[dict], way: str) -> dict:
    return next(r for r in rows if r["way"] == way)


def stage_profile(m: dict, row: dict) -> str:
    """Where torchspark_df's warm run spent its task time, from the transformer's metrics."""
    stages = {
        "read (binaryFile rows)": m["readTimeMs"],
        "bridge (JVM Arrow + rows)": m["bridgeTimeMs"],
        "preprocess (decode, normalize)": m["preprocessTimeMs"],
        "forward": m["forwardTimeMs"],
        "native IPC": max(0, m["nativeTimeMs"] - m["preprocessTimeMs"] - m["forwardTimeMs"]),
    }
    total = sum(stages.values())
    parts = ", ".join(f"{k} {v / 1000:.2f} s ({100 * v / total:.1f}%)" for k, v in stages.items())
    line = (f"task time by stage, summed over tasks ({total / 1000:.2f} s for a "
            f"{row['warm']:.2f} s run on 2 cores): {parts}")  # fmt: skip
    log(f"  {line}")
    return line


def cpu_bf16() -> str:
    """Whether oneDNN has native bf16 kernels here (avx512_bf16 / AMX / avx_ne_convert)."""
    import torch

    flags = next(
        (ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), []
    )
    isa = "avx512_bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "avx2"
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return f"{'native' if native else 'emulated (slow)'}: oneDNN bf16 {native}, best ISA {isa}"


def bf16_way(spark, model: str, fp32: dict) -> tuple:
    params = str(train_resnet20.params_path(Path(model)))
    heldout = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(str(OUT / "images" / "heldout"))
    )
    folder = OUT / "images" / ("all" if N == 10000 else f"bench{N}")
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    accs = {}
    for precision in ("fp32", "bf16"):
        sc = torchspark.ImageScorer(
            modelPath=params, inputCol="content", batchSize=128, precision=precision
        )
        accs[precision] = accuracy(
            (r.path, r.prediction)
            for r in sc.transform(heldout).select("path", "prediction").collect()
        )
    # The held-out run above loaded the model: this is a warm run.
    warm, out = timed(lambda: [
        (r.path, r.prediction) for r in sc.transform(df).select("path", "prediction").collect()
    ])  # fmt: skip
    ips, acc = len(out) / warm, accuracy(out)
    log(f"\n== bf16 ({cpu_bf16()}) == {ips:,.0f} img/s warm ({warm:.2f} s), "
        f"x{ips / fp32['ips']:.2f} of fp32 end to end (target >= 1.6); held-out accuracy "
        f"{accs['bf16']:.4f} vs fp32 {accs['fp32']:.4f} ({100 * (accs['bf16'] - accs['fp32']):+.2f} "
        f"points, target within 0.2); {len(out):,}-image accuracy {acc:.4f}")  # fmt: skip
    return ips, ips / fp32["ips"], accs["fp32"], accs["bf16"], cpu_bf16()


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    model = str(train_resnet20.train(OUT / "model"))
    (xtr, ytr), (xte, yte), _ = train_resnet20.dataset()
    folder = OUT / "images" / ("all" if N == 10000 else f"bench{N}")
    demo.write_pngs(folder, np.concatenate([xtr, xte]), np.concatenate([ytr, yte]), N)
    demo.write_pngs(OUT / "images" / "heldout", xte, yte, len(xte))
    files = sorted(str(p) for p in folder.rglob("*.png"))
    rows: list[dict] = []

    def record(way, n, cold, warm, acc, note=""):
        rows.append(
            {
                "way": way,
                "n": n,
                "cold": cold,
                "warm": warm,
                "ips": n / warm,
                "acc": acc,
                "note": note,
            }
        )
        log(f"{way:<18} {n / warm:>8,.0f} img/s   cold {cold:6.2f} s   warm {warm:6.2f} s   "
            f"accuracy {acc:.4f}  {note}")  # fmt: skip

    log(f"== workload: {N} PNGs 32x32, ResNet-20, {os.cpu_count()} cores ==")
    t, x = timed(lambda: decode_all(files))
    log(f"(pre-decoding for the raw ways: {t:.1f} s, not counted)")
    paths = files
    # Each raw way in each mode (cold + warm), then its best mode three more times, the two ways
    # interleaved so that a noisy minute hits both: warm is the best of its warm runs.
    best = {}
    for way, make in (("native_raw", native_raw), ("torch_raw", torch_raw)):
        for threads in (1, 2):
            for bs in (64, 256):
                run = make(model, x, bs, threads)
                cold, _ = timed(run)
                warm, preds = timed(run)
                if way not in best or warm < best[way][1]:
                    best[way] = [cold, warm, preds, f"bs{bs}, {threads} threads", run]
    for _ in range(3):
        for way in best:
            warm, _ = timed(best[way][4])
            best[way][1] = min(best[way][1], warm)
    for way, (cold, warm, preds, note, _) in best.items():
        record(way, N, cold, warm, accuracy(zip(paths, preds)), note)
    del x
    gc.collect()

    t0 = time.perf_counter()
    spark = session()
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    log(f"(Spark local[2] start-up: {startup:.1f} s, excluded from the ratios)")
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    log(f"(torchspark ways: {df.rdd.getNumPartitions()} partitions)")

    def spark_way(name, fn, note=""):
        cold, out = timed(fn)
        warm, out = timed(fn)
        record(name, len(out), cold, warm, accuracy(out), note)

    scorer = torchspark.ImageScorer(modelPath=model, inputCol="content", batchSize=128)
    spark_way("torchspark_df", lambda: [
        (r.path, r.prediction) for r in scorer.transform(df).select("path", "prediction").collect()
    ], "binaryFile -> ImageScorer (JVM, JNI)")  # fmt: skip
    stages = stage_profile(scorer.metrics(), by_way(rows, "torchspark_df"))
    spark_way("torchspark_rdd", lambda: [
        (r[0], r[1]) for r in df.select("path", "content").rdd
        .mapPartitions(torchspark.score_partitions(model)).collect()
    ], "rdd.mapPartitions + NativeModel")  # fmt: skip
    spark_way("torchspark_arrow", lambda: [
        (r.path, r.prediction) for r in df.select("path", "content")
        .mapInArrow(torchspark.score_arrow(model), torchspark.SCORE_SCHEMA)
        .select("path", "prediction").collect()
    ], "mapInArrow + NativeModel")  # fmt: skip
    # The ways users run today get Spark's default file splitting (4 MB open cost: ~300
    # partitions for 10,000 small files), as in the seed article; torchspark's session sets 8 KB.
    spark.conf.set("spark.sql.files.openCostInBytes", str(4 << 20))
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    log(f"(baselines: Spark defaults, {df.rdd.getNumPartitions()} partitions)")
    spark_way("pyspark_torch", lambda: df.select("path", "content").rdd
              .mapPartitions(pyspark_torch_partition(model)).collect(),
              "model per partition, PIL, numpy, torch")  # fmt: skip
    udf = predict_batch_udf_column(model)
    spark_way("predict_batch_udf", lambda: [
        (r.path, r.p) for r in df.select("path", udf("content").alias("p")).collect()
    ], "PIL decode inside predict")  # fmt: skip

    spark.conf.set("spark.sql.files.openCostInBytes", "8192")
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    by = {r["way"]: r for r in rows}
    ratios = [
        ("torchspark_df / native_raw", by["torchspark_df"]["ips"] / by["native_raw"]["ips"], 0.90),
        ("native_raw / torch_raw", by["native_raw"]["ips"] / by["torch_raw"]["ips"], 1.0),
        ("torchspark_df / pyspark_torch (cold)",
         by["pyspark_torch"]["cold"] / by["torchspark_df"]["cold"], 5.0),
        ("torchspark_df / predict_batch_udf (cold)",
         by["predict_batch_udf"]["cold"] / by["torchspark_df"]["cold"], 3.0),
        ("torchspark_df / pyspark_torch (warm)", by["torchspark_df"]["ips"] / by["pyspark_torch"]["ips"], None),
        ("torchspark_rdd / pyspark_torch (warm)", by["torchspark_rdd"]["ips"] / by["pyspark_torch"]["ips"], None),
    ]  # fmt: skip
    log("\n== ratios ==")
    for name, v, target in ratios:
        log(f"{name:<42} {v:6.2f}x" + (f"   (target >= {target})" if target else ""))
    log(f"{N:,} images end to end after Spark start: {by['torchspark_df']['warm']:.2f} s warm, "
        f"{by['torchspark_df']['cold']:.2f} s cold (target <= 6 s)")  # fmt: skip

    # bf16: the demo's weights exported unfrozen, scored end to end; accuracy on the held-out
    # images (the demo's figure) and on the 10,000.
    bf16 = bf16_way(spark, model, by["torchspark_df"])

    # Scaling: 10x the rows by union, same files, in a fresh JVM of its own (so that nothing run
    # before it sets the peak RSS).
    scaling = scaling_probe(model, str(folder), 3 if QUICK else 9)
    log(f"\n== scaling == {scaling[3]:,} images: time per image x{scaling[0]:.2f} of the "
        f"{N:,} run (target <= 1.1); JVM peak RSS {scaling[1]:,.0f} MiB -> {scaling[2]:,.0f} MiB "
        f"(x{scaling[2] / scaling[1]:.2f}, target within 10%)")  # fmt: skip

    # ImageNet-size featurizer: tests/bench/featurize_bench.py (EfficientNet-Lite0, ResNet-18).
    nj = 400 if QUICK else 2000
    featurizer = (nj, featurize_bench.run(spark, nj))
    spark.stop()

    # Memory with a ~100 MB model, fresh JVMs with 1 and 2 concurrent tasks.
    big_model = OUT / "bench" / "resnet50_random.pt"
    size = make_big_model(big_model)
    mem_imgs = str(OUT / "images" / "heldout")
    rss1, loads1 = memory_probe("local[1]", str(big_model), mem_imgs)
    rss2, loads2 = memory_probe("local[2]", str(big_model), mem_imgs)
    log(f"\n== memory, {size:.0f} MB model == peak RSS 1 task {rss1:,.0f} MiB, 2 tasks {rss2:,.0f} MiB: "
        f"+{rss2 - rss1:,.0f} MiB = {(rss2 - rss1) / size:.2f}x the model (target <= 1.1x); "
        f"model loads {loads1} / {loads2}")  # fmt: skip
    memory = (size, rss1, rss2, loads1, loads2)

    write_results(rows, ratios, startup, scaling, featurizer, memory, bf16, stages)


def write_results(rows, ratios, startup, scaling, featurizer, memory, bf16, stages) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        f"# Benchmark ({date.today()}, {os.cpu_count()} cores, {cpu}, local[2], `make bench`)",
        "",
        f"{rows[0]['n']:,} PNGs (32x32) scored with the demo's ResNet-20. Spark start-up "
        f"{startup:.1f} s is excluded.",
        "",
        "| # | way | images/s (warm) | cold s | warm s | accuracy | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | `{r['way']}` | {r['ips']:,.0f} | {r['cold']:.2f} | {r['warm']:.2f} | "
                     f"{r['acc']:.4f} | {r['note']} |")  # fmt: skip
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    for name, v, target in ratios:
        lines.append(f"| {name} | {v:.2f}x | {'>= ' + str(target) if target else ''} |")
    f, rss1, rss2, l1, l2 = memory
    lines += [
        "",
        f"- `torchspark_df` {stages}.",
        f"- Scaling (fresh JVM): {scaling[3]:,} images, time per image x{scaling[0]:.2f} of the "
        f"{N:,} run; JVM peak RSS {scaling[1]:,.0f} -> {scaling[2]:,.0f} MiB.",
        featurize_bench.markdown(featurizer[1], featurizer[0]),
        f"- Memory ({f:.0f} MB model): peak RSS {rss1:,.0f} MiB with 1 task, {rss2:,.0f} MiB with 2 "
        f"(+{(rss2 - rss1) / f:.2f}x the model); model loads {l1} and {l2}.",
        f'- bf16 (`precision="bf16"`, CPU bf16 {bf16[4]}): {bf16[0]:,.0f} img/s end to end, '
        f"x{bf16[1]:.2f} of fp32; held-out accuracy {bf16[3]:.4f} vs fp32 {bf16[2]:.4f}.",
    ]
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([r["way"] for r in rows][::-1], [r["ips"] for r in rows][::-1], color="tab:blue")
    ax.set_xlabel("images/s (warm, higher is better)")
    ax.set_title(f"ResNet-20, {rows[0]['n']:,} PNGs, local[2], {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(RESULTS / "results.png", dpi=110)
    log(f"\nwrote {RESULTS / 'results.md'} and {RESULTS / 'results.png'}")


if __name__ == "__main__":
    main()
