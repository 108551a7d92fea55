"""Writes the cluster tests' images, deterministically (nothing is downloaded).

    python tests/cluster/make_images.py OUT_DIR [N]

N (default 300) 32x32 RGB PNGs made from scikit-learn's digits, a quarter of them in a
sub-folder (the readers must look recursively), plus one truncated PNG that every path must
report as a row error rather than drop or crash on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    from sklearn.datasets import load_digits

    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    (out / "more").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(2026)
    for i in range(n):
        img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
        gray = np.asarray(img.resize((32, 32), Image.BILINEAR))
        rgb = (gray[..., None] * rng.uniform(0.5, 1.0, size=3)).astype(np.uint8)
        folder = out / "more" if i % 4 == 3 else out
        Image.fromarray(rgb).save(folder / f"digit_{i:04d}_label{digits.target[i]}.png")
    good = (out / "digit_0000_label0.png").read_bytes()
    (out / "truncated.png").write_bytes(good[: len(good) // 2])
    print(f"{n + 1} cluster images written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
