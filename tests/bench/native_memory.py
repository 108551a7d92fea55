"""How much native (non-JVM-heap) memory torchspark adds to a process, to size
`spark.executor.memoryOverhead`: peak RSS (VmHWM) of a fresh process that loads the library,
loads a model and scores batches, minus its RSS before the library was loaded.

    .venv/bin/python tests/bench/native_memory.py [fixtures dir]

Each case runs in a fresh process, so one case's allocator caches do not hide another's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

CHILD = r"""
import json, sys, numpy as np
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
model, size, batch, threads, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
import pyarrow
import torchspark
base = kb("VmRSS")
from torchspark import _native
_native.lib()
lib = kb("VmRSS")
m = torchspark.NativeModel(model, num_threads=threads)
loaded = kb("VmRSS")
x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
for _ in range(batches):
    m.score(x, top_k=1, batch_size=batch)
print(json.dumps({"base": base, "lib": lib - base, "model": loaded - lib, "peak": kb("VmHWM") - base}))
"""


def headless_resnet18(out: Path) -> Path:
    import torch
    import torchvision

    import torchspark

    net = torchvision.models.resnet18(weights=None).eval()
    net.fc = torch.nn.Identity()
    spec = {
        "input": {"height": 224, "width": 224},
        "preprocess": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "output": "logits",
    }
    path = out / "resnet18_headless.pt"
    torchspark.export_model(net, path, spec)
    return path


def main() -> None:
    fixtures = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/out"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("ResNet-20, 32x32", fixtures / "resnet20.pt", 32)]
        try:
            cases.append(("ResNet-18 headless, 224x224", headless_resnet18(Path(tmp)), 224))
        except Exception as e:  # torchvision missing: report the small model only
            print(f"(ResNet-18 skipped: {e})")
        for name, path, size in cases:
            for batch, threads in ((64, 1), (64, 2)):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        str(path),
                        str(size),
                        str(batch),
                        str(threads),
                        "3",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                mib = {k: v / 1024 for k, v in r.items()}
                rows.append((name, path.stat().st_size / 2**20, batch, threads, mib))
    print("| model | file MiB | batch | threads | library MiB | model MiB | peak native MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, size, batch, threads, m in rows:
        print(
            f"| {name} | {size:.0f} | {batch} | {threads} | {m['lib']:.0f} | {m['model']:.0f} "
            f"| {m['peak']:.0f} |"
        )


if __name__ == "__main__":
    main()
