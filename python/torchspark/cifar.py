"""Reader of the official CIFAR-10 binary release (`data_batch_*.bin`, `test_batch.bin`).

Each record: 1 label byte, then 3,072 bytes: 1,024 red, 1,024 green, 1,024 blue (32x32, CHW).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORD = 1 + 3 * 32 * 32


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×32×32×3 HWC RGB, labels uint8 N) from one .bin file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte records")
    raw = raw.reshape(-1, RECORD)
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), raw[:, 0].copy()


def load(
    directory: str | Path,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)) from a cifar-10-batches-bin folder."""
    d = Path(directory)
    train = [read_batch(p) for p in sorted(d.glob("data_batch_*.bin"))]
    if not train:
        raise FileNotFoundError(f"{d}: no data_batch_*.bin")
    test = read_batch(d / "test_batch.bin")
    return (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])), test
