"""Soak: 1,000,000 images through ONE executor JVM, watching its memory and speed.

    .venv/bin/python tests/bench/soak.py [--rows 1000000] [--chunks 20] [--warmup 3]

On local[2] the driver JVM is the executor: ImageScorer (the fixture ResNet-20, 32x32 PNGs,
batch 128) scores `--chunks` equal chunks of `--rows` in total, one Spark job each. A chunk's
rows repeat the fixture PNGs (tests/fixtures/out/images, made by make_fixtures.py if absent)
inside Spark: a range of row ids joined to the broadcast PNG bytes, so no file is written per
row and every row is scored from a real encoded PNG. The 1 GiB heap is committed and touched
at start-up (-Xms = -Xmx, AlwaysPreTouch), so that RSS growth is memory outside the Java heap.
After each chunk the JVM's VmRSS (/proc/<pid>/status; the pid from the JVM's own ProcessHandle),
its heap use, its thread count and the chunk's images/s are recorded.

Pass (printed, and the exit status): after warm-up (chunk `--warmup`), the JVM's RSS grows at
most 5% (the largest later RSS against the RSS after warm-up), and images/s stays flat (the
mean of the last 3 chunks at least 90% of the mean of chunks warmup..warmup+2), and every row
gets a prediction. Writes tests/bench/soak.md (the table and the verdict) and soak.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

import torchspark  # noqa: E402
from torchspark.node import cpu_flags, isa_summary  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "out"
RSS_GROWTH = 0.05
SPEED_DROP = 0.10
HEAP = "1g"


def log(msg: str) -> None:
    print(msg, flush=True)


def fixtures() -> Path:
    if not (FIXTURES / "resnet20.pt").exists() or not (FIXTURES / "images").is_dir():
        subprocess.run(
            [sys.executable, str(ROOT / "tests/fixtures/make_fixtures.py"), str(FIXTURES)],
            check=True,
        )
    return FIXTURES


def cpu() -> str:
    """The CPU's model name and the instruction sets that matter here (as bench.py prints)."""
    name = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    isa, bf16 = isa_summary(cpu_flags())
    return f"{name}; {isa}; bf16 {bf16}; {os.cpu_count()} cores"


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def verdict(chunks: list[dict], warmup: int) -> tuple[bool, list[str]]:
    """(passed, one line per criterion). `warmup` is 1-based: the RSS after that chunk is the
    baseline; speed compares the last 3 chunks with chunks warmup..warmup+2."""
    base = chunks[warmup - 1]["rss_mib"]
    later = max(c["rss_mib"] for c in chunks[warmup:])
    growth = later / base - 1
    ref = [c["ips"] for c in chunks[warmup - 1 : warmup + 2]]
    last = [c["ips"] for c in chunks[-3:]]
    ratio = (sum(last) / len(last)) / (sum(ref) / len(ref))
    scored = all(c["scored"] == c["rows"] for c in chunks)
    checks = [
        (
            growth <= RSS_GROWTH,
            f"RSS after warm-up (chunk {warmup}) {base:,.0f} MiB, largest later {later:,.0f} MiB:"
            f" {100 * growth:+.1f}% (limit +{100 * RSS_GROWTH:.0f}%)",
        ),
        (
            ratio >= 1 - SPEED_DROP,
            f"images/s, last 3 chunks {sum(last) / len(last):,.0f} against chunks {warmup}-"
            f"{warmup + 2} {sum(ref) / len(ref):,.0f}: {100 * (ratio - 1):+.1f}%"
            f" (limit -{100 * SPEED_DROP:.0f}%)",
        ),
        (scored, f"every row scored: {sum(c['scored'] for c in chunks):,} predictions"),
    ]
    return all(ok for ok, _ in checks), [("PASS " if ok else "FAIL ") + s for ok, s in checks]


def plot(chunks: list[dict], warmup: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c["done"] / 1e6 for c in chunks]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    base = chunks[warmup - 1]["rss_mib"]
    a.plot(done, [c["rss_mib"] for c in chunks], "o-", label="JVM VmRSS")
    a.axhline(base * (1 + RSS_GROWTH), color="r", ls="--", lw=1, label="+5% of post-warm-up RSS")
    a.set_ylabel("RSS (MiB)")
    a.set_ylim(0, max(c["rss_mib"] for c in chunks) * 1.15)
    a.legend(loc="lower right")
    b.plot(done, [c["ips"] for c in chunks], "o-", color="g")
    b.set_ylabel("images/s")
    b.set_ylim(0, max(c["ips"] for c in chunks) * 1.15)
    b.set_xlabel("images scored (millions)")
    for ax in (a, b):
        ax.axvspan(0, done[warmup - 1], color="0.9", zorder=0)
        ax.grid(alpha=0.3)
    a.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="images in total")
    ap.add_argument("--chunks", type=int, default=20, help="Spark jobs, equal in rows")
    ap.add_argument("--warmup", type=int, default=3, help="chunks before the RSS baseline")
    ap.add_argument("--partitions", type=int, default=4, help="tasks per chunk")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "bench")
    a = ap.parse_args()
    if a.chunks < a.warmup + 3 or a.warmup < 1:
        ap.error("need --warmup >= 1 and --chunks >= warmup + 3")
    per_chunk = a.rows // a.chunks

    fx = fixtures()
    pngs = sorted((fx / "images").glob("*.png"))
    model = str(fx / "resnet20.pt")
    spark = torchspark.local_session(
        "local[2]",
        **{
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
            # The whole heap committed and touched up front: RSS growth is then what is not
            # the Java heap (native memory, threads, code), where a leak would show.
            "spark.driver.memory": HEAP,
            "spark.driver.extraJavaOptions": f"-Xms{HEAP} -XX:+AlwaysPreTouch",
        },
    )
    spark.sparkContext.setLogLevel("ERROR")
    jvm = spark.sparkContext._jvm
    pid = int(jvm.java.lang.ProcessHandle.current().pid())
    runtime = jvm.java.lang.Runtime.getRuntime()
    xmx = int(runtime.maxMemory()) / 2**20

    from pyspark.sql import functions as F

    # The PNGs' bytes are broadcast; row i of a chunk is PNG i mod k: a chunk is as many rows
    # as asked, all in Spark, with no shuffle of the large side.
    files = spark.createDataFrame(
        [(i, p.name, p.read_bytes()) for i, p in enumerate(pngs)],
        "idx long, path string, content binary",
    )
    rows = spark.range(0, per_chunk, 1, a.partitions).withColumn("idx", F.col("id") % len(pngs))
    chunk = rows.join(F.broadcast(files), "idx").select("id", "path", "content")
    scorer = torchspark.ImageScorer(modelPath=model, inputCol="content", batchSize=a.batch_size)
    scored = scorer.transform(chunk).filter("prediction IS NOT NULL")

    title = f"{a.chunks} x {per_chunk:,} images, ResNet-20 32x32, ImageScorer, local[2]"
    log(f"== soak: {title} (JVM pid {pid}, -Xmx {xmx:,.0f} MiB) ==")
    log(f"== CPU: {cpu()} ==")
    log(f"== {len(pngs)} fixture PNGs repeated; {a.partitions} tasks per chunk ==")
    before = status(pid)
    log(f"JVM before scoring: VmRSS {before['VmRSS'] / 1024:,.0f} MiB")
    chunks: list[dict] = []
    done = 0
    for i in range(1, a.chunks + 1):
        t = time.perf_counter()
        n = scored.count()
        dt = time.perf_counter() - t
        done += per_chunk
        s = status(pid)
        committed = int(runtime.totalMemory())
        used = committed - int(runtime.freeMemory())
        c = {"chunk": i, "rows": per_chunk, "scored": n, "done": done, "seconds": dt,
             "ips": per_chunk / dt, "rss_mib": s["VmRSS"] / 1024, "hwm_mib": s["VmHWM"] / 1024,
             "threads": s["Threads"], "heap_used_mib": used / 2**20,
             "heap_mib": committed / 2**20}  # fmt: skip
        chunks.append(c)
        log(f"chunk {i:>3}  {done:>10,} images  {dt:7.1f} s  {c['ips']:7,.0f} img/s  "
            f"VmRSS {c['rss_mib']:7,.0f} MiB  VmHWM {c['hwm_mib']:7,.0f} MiB  "
            f"heap used/committed {c['heap_used_mib']:5,.0f}/{c['heap_mib']:,.0f} MiB  "
            f"threads {c['threads']}")  # fmt: skip
    loads = scorer.metrics().get("modelLoads")
    spark.stop()

    ok, lines = verdict(chunks, a.warmup)
    lines.append(f"model loads in the JVM: {loads}")
    log("== verdict: " + ("PASS" if ok else "FAIL") + " ==")
    for line in lines:
        log("  " + line)

    a.out.mkdir(parents=True, exist_ok=True)
    plot(chunks, a.warmup, a.out / "soak.png", title)
    md = [
        "# Soak: one executor JVM, many images",
        "",
        f"Made by `tests/bench/soak.py --rows {a.rows} --chunks {a.chunks} --warmup {a.warmup}` "
        f"on {date.today().isoformat()} ({platform.node()}).",
        "",
        f"- Workload: {title}; batch {a.batch_size}, {a.partitions} tasks per chunk; "
        f"{len(pngs)} fixture PNGs repeated inside Spark.",
        f"- CPU: {cpu()}",
        f"- JVM: -Xms = -Xmx = {HEAP} with -XX:+AlwaysPreTouch (the heap is resident from the"
        f" start, so RSS growth is native memory, threads and code); max heap {xmx:,.0f} MiB;"
        f" VmRSS before the first chunk {before['VmRSS'] / 1024:,.0f} MiB.",
        "",
        f"**Verdict: {'PASS' if ok else 'FAIL'}**",
        "",
        *[f"- {line}" for line in lines],
        "",
        "| chunk | images scored | seconds | images/s | VmRSS MiB | VmHWM MiB | heap used MiB |"
        " threads |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {c['chunk']} | {c['done']:,} | {c['seconds']:.1f} | {c['ips']:,.0f} | "
            f"{c['rss_mib']:,.0f} | {c['hwm_mib']:,.0f} | {c['heap_used_mib']:,.0f} | "
            f"{c['threads']} |"
            for c in chunks
        ],
        "",
        "![RSS and images/s per chunk](soak.png)",
        "",
    ]
    (a.out / "soak.md").write_text("\n".join(md))
    log(f"wrote {a.out / 'soak.md'} and {a.out / 'soak.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
