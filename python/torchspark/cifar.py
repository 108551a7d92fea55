"""Readers of the official CIFAR-10 and CIFAR-100 binary releases.

Layouts (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):

- ``"cifar-10"``: ``data_batch_1..5.bin`` and ``test_batch.bin``; each record is 1 label byte
  (0-9), then 3,072 pixel bytes: 1,024 red, 1,024 green, 1,024 blue (32x32, CHW, row-major).
  Label names: ``batches.meta.txt`` (one a line), else `LABELS`.
- ``"cifar-100"``: ``train.bin`` and ``test.bin``; each record is 1 coarse label byte (0-19),
  1 fine label byte (0-99), then the same 3,072 pixel bytes. Label names:
  ``coarse_label_names.txt`` and ``fine_label_names.txt``.

A file read with the wrong layout raises ValueError naming the file, the layout and the reason
(the record size does not divide the file, a label is out of range, or a fine label sits under
two superclasses): never misaligned images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PIXELS = 3 * 32 * 32
# CIFAR-10's record size, kept for callers of the first version of this module.
RECORD = 1 + PIXELS


@dataclass(frozen=True)
class Layout:
    """One binary release: its label bytes (name, number of classes) in record order, and the
    file names of its train and test splits."""

    name: str
    labels: tuple[tuple[str, int], ...]
    train: str
    test: str

    @property
    def record(self) -> int:
        """Bytes per record: the label bytes, then 3,072 pixel bytes."""
        return len(self.labels) + PIXELS


LAYOUTS = {
    "cifar-10": Layout("cifar-10", (("label", 10),), "data_batch_*.bin", "test_batch.bin"),
    "cifar-100": Layout("cifar-100", (("coarse", 20), ("fine", 100)), "train.bin", "test.bin"),
}


def _layout(layout: str) -> Layout:
    key = layout.lower().replace("_", "-")
    if key in ("cifar10", "cifar100"):
        key = key[:5] + "-" + key[5:]
    if key not in LAYOUTS:
        raise ValueError(f"unknown CIFAR layout {layout!r}: expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[key]


def _label_index(lay: Layout, label: str | None) -> int:
    names = [n for n, _ in lay.labels]
    if label is None:
        return len(names) - 1  # CIFAR-100: fine, the 100 classes usually meant
    if label not in names:
        raise ValueError(f"{lay.name} has labels {names}, not {label!r}")
    return names.index(label)


def read_records(path: str | Path, layout: str = "cifar-10") -> dict[str, np.ndarray]:
    """Every field of one .bin file: ``{"images": uint8 N×32×32×3 (HWC, RGB), <label>: uint8 N}``
    with ``label`` for CIFAR-10, ``coarse`` and ``fine`` for CIFAR-100.

    Raises ValueError naming the file and the layout when the file is empty, is not a whole
    number of records, holds a label out of range, or (CIFAR-100) maps one fine label to two
    coarse ones: all signs of a file written in another layout (or cut short).
    """
    lay = _layout(layout)
    raw = np.fromfile(path, dtype=np.uint8)
    where = f"{path} read as {lay.name} ({lay.record}-byte records)"
    if raw.size == 0:
        raise ValueError(f"{where}: the file is empty")
    if raw.size % lay.record:
        hint = [o.name for o in LAYOUTS.values() if o is not lay and raw.size % o.record == 0]
        raise ValueError(
            f"{where}: {raw.size} bytes is not a whole number of records"
            f" ({raw.size // lay.record} records and {raw.size % lay.record} bytes left over)"
            + (f"; it divides into {hint[0]} records" if hint else "")
        )
    raw = raw.reshape(-1, lay.record)
    out: dict[str, np.ndarray] = {}
    for i, (name, classes) in enumerate(lay.labels):
        col = raw[:, i]
        bad = np.flatnonzero(col >= classes)
        if bad.size:
            r = int(bad[0])
            raise ValueError(
                f"{where}: record {r} has {name} label {int(col[r])}, out of range 0-{classes - 1}"
                f" ({bad.size} of {len(col)} records out of range)"
            )
        out[name] = col.copy()
    if "coarse" in out:
        # Each fine class belongs to exactly one superclass: a second one means misread bytes.
        pairs = np.unique(out["fine"].astype(np.int32) * 256 + out["coarse"])
        fine = pairs // 256
        dup = np.flatnonzero(fine[1:] == fine[:-1])
        if dup.size:
            f = int(fine[dup[0]])
            coarse = sorted(int(p % 256) for p in pairs[fine == f])
            raise ValueError(
                f"{where}: fine label {f} appears under coarse labels {coarse};"
                " each CIFAR-100 class has one superclass"
            )
    images = raw[:, len(lay.labels) :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    out["images"] = np.ascontiguousarray(images)
    return out


def read_batch(
    path: str | Path, layout: str = "cifar-10", label: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×32×32×3 HWC RGB, labels uint8 N) from one .bin file.

    layout: ``"cifar-10"`` (default) or ``"cifar-100"``; label: for CIFAR-100 ``"fine"``
    (default, 0-99) or ``"coarse"`` (0-19). Errors: see `read_records`.
    """
    lay = _layout(layout)
    name = lay.labels[_label_index(lay, label)][0]
    records = read_records(path, lay.name)
    return records["images"], records[name]


def detect_layout(directory: str | Path) -> str:
    """``"cifar-10"`` or ``"cifar-100"`` from the files in a release folder (the first holds
    ``data_batch_*.bin``, the second ``train.bin``). Raises FileNotFoundError when neither set
    is there and ValueError when both are (pass ``layout`` then)."""
    d = Path(directory)
    found = [n for n, lay in LAYOUTS.items() if any(d.glob(lay.train))]
    if not found:
        raise FileNotFoundError(
            f"{d}: no CIFAR release here (neither data_batch_*.bin for cifar-10"
            " nor train.bin for cifar-100)"
        )
    if len(found) > 1:
        raise ValueError(f"{d}: holds both cifar-10 and cifar-100 files; pass layout=")
    return found[0]


def load(
    directory: str | Path, layout: str | None = None, label: str | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)) from a release folder
    (``cifar-10-batches-bin`` or ``cifar-100-binary``).

    layout: ``"cifar-10"``, ``"cifar-100"`` or None to detect it (`detect_layout`); label: as
    in `read_batch`. Images uint8 N×32×32×3 HWC RGB, labels uint8 N.
    """
    d = Path(directory)
    lay = _layout(layout or detect_layout(d))
    files = sorted(d.glob(lay.train))
    if not files:
        raise FileNotFoundError(f"{d}: no {lay.train} ({lay.name})")
    train = [read_batch(p, lay.name, label) for p in files]
    test = read_batch(d / lay.test, lay.name, label)
    return (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])), test


def label_names(
    directory: str | Path, layout: str | None = None, label: str | None = None
) -> list[str]:
    """The class names of a release folder, index = label: CIFAR-10's ``batches.meta.txt``
    (`LABELS` when absent), CIFAR-100's ``fine_label_names.txt`` or ``coarse_label_names.txt``.
    Raises ValueError when the file does not list the layout's number of classes."""
    d = Path(directory)
    lay = _layout(layout or detect_layout(d))
    name, classes = lay.labels[_label_index(lay, label)]
    file = d / ("batches.meta.txt" if lay.name == "cifar-10" else f"{name}_label_names.txt")
    if lay.name == "cifar-10" and not file.exists():
        return list(LABELS)
    names = [n.strip() for n in file.read_text().splitlines() if n.strip()]
    if len(names) != classes:
        raise ValueError(f"{file}: {len(names)} names, {lay.name} {name} labels have {classes}")
    return names
