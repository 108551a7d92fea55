"""Speed and held-out accuracy of the demo's ResNet-20 per format and precision.

    .venv/bin/python examples/precision.py        (after `make demo`, or it trains first)

Exports the demo model as AOTInductor packages in fp32, bf16 and int8 (PT2E, calibrated on 512
training images) beside the TorchScript files, then scores the held-out PNGs with NativeModel
(decode + preprocess + forward, the native path every entry point shares): accuracy on the
held-out set, and images/s over the held-out set cycled to IMAGES rows (2 threads, batch 256,
best of 3 passes). Prints a table with the CPU's relevant flags and writes
demo-output/precision.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "examples"))

import train_resnet20  # noqa: E402
from demo import write_pngs  # noqa: E402
from torchspark import NativeModel  # noqa: E402
from torchspark.export import export_model  # noqa: E402
from torchspark.models import ResNet20  # noqa: E402

OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo-output"))
IMAGES = int(os.environ.get("PRECISION_IMAGES", "5000"))
THREADS = int(os.environ.get("PRECISION_THREADS", "2"))
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    from torchspark.node import cpu_flags as flags_of_this_cpu
    from torchspark.node import cpu_model

    flags = flags_of_this_cpu()
    return f"{cpu_model()}; " + " ".join(f for f in FLAGS if f in flags)


def packages(model_dir: Path, labels: list[str]) -> dict[str, Path]:
    """The AOTI exports of the demo model (made once, reused while newer than the model)."""
    params = train_resnet20.params_path(model_dir / "resnet20.pt")
    net = ResNet20(num_classes=len(labels))
    net.load_state_dict(torch.jit.load(str(params)).state_dict())
    net.eval()
    (xtr, _), _, _ = train_resnet20.dataset()
    sample = train_resnet20.to_tensor(xtr[:512])
    out = {}
    for precision in ("fp32", "bf16", "int8"):
        path = model_dir / f"resnet20_aoti_{precision}.pt2"
        if not path.exists() or path.stat().st_mtime < params.stat().st_mtime:
            t = time.time()
            export_model(
                net,
                path,
                train_resnet20.spec(labels),
                format="aoti",
                precision=precision,
                sample=sample,
            )
            print(f"[export] {path.name} in {time.time() - t:.0f} s", flush=True)
        out[precision] = path
    return out


def main() -> None:
    model = train_resnet20.train(OUT / "model")
    _, (xte, yte), labels = train_resnet20.dataset()
    heldout = OUT / "images" / "heldout"
    write_pngs(heldout, xte, yte, len(xte))
    files = sorted(heldout.rglob("*.png"))
    blobs = [f.read_bytes() for f in files]
    truth = np.array([int(f.parent.name.split("=")[1]) for f in files])
    pk = packages(model.parent, labels)
    ways = [
        ("TorchScript", "fp32", model, "fp32"),
        ("TorchScript", "bf16 (runtime cast)", train_resnet20.params_path(model), "bf16"),
        ("AOTInductor", "fp32", pk["fp32"], "fp32"),
        ("AOTInductor", "bf16 (compiled)", pk["bf16"], "fp32"),
        ("AOTInductor", "int8 (PT2E static)", pk["int8"], "fp32"),
    ]
    cycled = [blobs[i % len(blobs)] for i in range(IMAGES)]
    rows = []
    for fmt, precision, path, option in ways:
        m = NativeModel(str(path), num_threads=THREADS, precision=option)
        pred = np.array(m.score(blobs, batch_size=256).to_pydict()["prediction"])
        accuracy = float((pred == truth).mean())
        m.score(cycled[:512], batch_size=256)  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            m.score(cycled, batch_size=256)
            best = min(best, time.perf_counter() - t)
        rows.append((fmt, precision, path.name, IMAGES / best, accuracy))
        print(f"[precision] {fmt} {precision}: {IMAGES / best:,.0f} img/s, {accuracy:.2%}")
    base = rows[0][3]
    lines = [
        f"CPU: {cpu_flags()}; {THREADS} threads, batch 256, {IMAGES} PNGs (32x32), "
        f"NativeModel (decode + forward); held-out accuracy on {len(blobs)} images.",
        "",
        "| format | precision | file | images/s | × TorchScript fp32 | held-out accuracy |",
        "|---|---|---|---:|---:|---:|",
    ]
    for fmt, precision, name, speed, acc in rows:
        lines.append(
            f"| {fmt} | {precision} | `{name}` | {speed:,.0f} | {speed / base:.2f} | {acc:.2%} |"
        )
    text = "\n".join(lines) + "\n"
    (OUT / "precision.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
