"""What portability costs: ResNet-20 `.pt2` packages compiled for cpu="x86-64-v3" (the
export default) against cpu="native" (Inductor's own default), scored by NativeModel.

    .venv/bin/python tests/bench/cpu_target.py [native x86-64-v3 x86-64-v4 ...]
    CPU_TARGET_PRECISION=int8 .venv/bin/python tests/bench/cpu_target.py   (or bf16)

Exports the fixture ResNet-20 (seeded weights) once per target into bench/work/cpu_target/ (about
30 s each), then scores the fixture PNGs cycled to IMAGES rows: decode + preprocess + forward,
2 threads, batch 256. The targets take turns, ROUNDS times, and the best pass of each counts, so
that a loaded machine's noise falls on both alike. Also counts the AVX-512 (zmm) instructions
in each package's code, and prints the spec's `cpu` entry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from make_fixtures import load_rgb, normalize, randomize_bn  # noqa: E402

from torchspark import NativeModel  # noqa: E402
from torchspark.export import export_model  # noqa: E402
from torchspark.models import ResNet20  # noqa: E402

OUT = ROOT / "bench" / "work" / "cpu_target"
IMAGES = int(os.environ.get("CPU_TARGET_IMAGES", "4096"))
THREADS = int(os.environ.get("CPU_TARGET_THREADS", "2"))
ROUNDS = int(os.environ.get("CPU_TARGET_ROUNDS", "5"))
# fp32 (default), bf16 or int8 (calibrated on the fixture images).
PRECISION = os.environ.get("CPU_TARGET_PRECISION", "fp32")
SPEC = {
    "input": {"height": 32, "width": 32, "channels": 3},
    "preprocess": {
        "scale": 1 / 255,
        "mean": [0.4914, 0.4822, 0.4465],
        "std": [0.247, 0.243, 0.261],
    },
    "output": "logits",
}


def zmm_instructions(pt2: Path) -> int | None:
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    count = 0
    with zipfile.ZipFile(pt2) as z, tempfile.TemporaryDirectory() as d:
        for name in z.namelist():
            if name.endswith(".so"):
                so = Path(d) / "k.so"
                so.write_bytes(z.read(name))
                asm = subprocess.run([objdump, "-d", str(so)], capture_output=True, text=True)
                count += sum("zmm" in line for line in asm.stdout.splitlines())
    return count


def main() -> None:
    targets = sys.argv[1:] or ["native", "x86-64-v3"]
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = ResNet20(num_classes=10)
    randomize_bn(net, torch.Generator().manual_seed(0))
    images = sorted((ROOT / "tests" / "fixtures" / "out" / "images").glob("*.png"))
    if not images:
        sys.exit("no fixture images: run tests/fixtures/make_fixtures.py first")
    sample = torch.stack([normalize(load_rgb(p), SPEC) for p in images])
    paths = {}
    for cpu in targets:
        path = OUT / f"resnet20_{PRECISION}_{cpu}.pt2"
        if not path.exists():
            t = time.time()
            export_model(
                net, path, SPEC, format="aoti", cpu=cpu, precision=PRECISION, sample=sample
            )
            print(f"[export] {path.name} in {time.time() - t:.0f} s", flush=True)
        paths[cpu] = path
    blobs = [p.read_bytes() for p in images]
    cycled = [blobs[i % len(blobs)] for i in range(IMAGES)]
    models = {cpu: NativeModel(str(p), num_threads=THREADS) for cpu, p in paths.items()}
    probs = {cpu: m.score(cycled[:256], batch_size=256) for cpu, m in models.items()}  # warm-up
    first = next(iter(probs.values())).to_pydict()["probability"]
    for cpu, rb in probs.items():
        diff = max(
            abs(a - b)
            for ra, rb_ in zip(first, rb.to_pydict()["probability"])
            for a, b in zip(ra, rb_)
        )
        print(f"[check] {cpu}: max |p - p[{targets[0]}]| = {diff:.1e}")
    best = {cpu: (float("inf"), 0.0) for cpu in models}
    for _ in range(ROUNDS):
        for cpu, m in models.items():
            t, c = time.perf_counter(), time.process_time()
            m.score(cycled, batch_size=256)
            wall, cpu_s = time.perf_counter() - t, time.process_time() - c
            if wall < best[cpu][0]:
                best[cpu] = (wall, cpu_s)
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        "?",
    )  # fmt: skip
    print(
        f"\nCPU: {model}; {PRECISION}, {THREADS} threads, batch 256, {IMAGES} PNGs, "
        f"best of {ROUNDS}\n"
    )
    print("| cpu= | images/s | images per CPU-s | × native | zmm instructions | spec flags |")
    print("|---|---:|---:|---:|---:|---|")
    base = IMAGES / best["native"][0] if "native" in best else None
    for cpu, (wall, cpu_s) in best.items():
        spec = json.loads(paths[cpu].with_suffix(".json").read_text())
        ratio = f"{IMAGES / wall / base:.2f}" if base else "-"
        print(
            f"| {cpu} | {IMAGES / wall:,.0f} | {IMAGES / cpu_s:,.0f} | {ratio} | "
            f"{zmm_instructions(paths[cpu])} | {len(spec['cpu']['flags'])}: "
            f"{' '.join(spec['cpu']['flags'])} |"
        )


if __name__ == "__main__":
    main()
