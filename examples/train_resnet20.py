"""Train a CIFAR-style ResNet-20 on CPU and export it for torchspark.

Data: scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to 32x32 RGB (or CIFAR-10 when
CIFAR10_DIR points at the official binary release). 80/20 split with a fixed seed.

    python examples/train_resnet20.py [OUT_DIR]     (default: demo-output/model)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from torchspark import cifar  # noqa: E402
from torchspark.export import export_model  # noqa: E402
from torchspark.models import ResNet20  # noqa: E402

SEED = 0
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def digits_dataset() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 N×32×32×3, labels, label names): digits upscaled bilinearly, gray→RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack(
        [
            np.asarray(
                Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
            )
            for im in d.images
        ]
    )
    rgb = np.repeat(imgs[..., None], 3, axis=3)
    return rgb, d.target.astype(np.int64), [str(i) for i in range(10)]


def dataset() -> tuple[tuple, tuple, list[str]]:
    """((train x, y), (test x, y), labels): CIFAR-10 if CIFAR10_DIR is set, else digits 80/20."""
    if os.environ.get("CIFAR10_DIR"):
        (xtr, ytr), (xte, yte) = cifar.load(os.environ["CIFAR10_DIR"])
        return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64)), cifar.LABELS
    x, y, labels = digits_dataset()
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = int(len(x) * 0.8)
    tr, te = order[:cut], order[cut:]
    return (x[tr], y[tr]), (x[te], y[te]), labels


def to_tensor(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    return (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def spec(labels: list[str]) -> dict:
    return {
        "input": {"height": 32, "width": 32, "channels": 3, "channel_order": "RGB"},
        "preprocess": {
            "resize": None,
            "center_crop": None,
            "scale": 1 / 255,
            "mean": MEAN,
            "std": STD,
        },
        "labels": labels,
        "output": "logits",
        "featurize": {"method": "features"},
    }


def params_path(model_path: Path) -> Path:
    """The unfrozen export beside `model_path`, for `precision="bf16"`."""
    return model_path.with_name(model_path.stem + "_params.pt")


def train(out_dir: Path, epochs: int | None = None) -> Path:
    """Trains and exports `out_dir/resnet20.pt` (+ .json, + the unfrozen `resnet20_params.pt`);
    reuses a model already there."""
    model_path = out_dir / "resnet20.pt"
    outputs = [model_path, model_path.with_suffix(".json"), params_path(model_path)]
    if all(p.exists() for p in outputs):
        print(f"[train] reusing {model_path}", flush=True)
        return model_path
    torch.manual_seed(SEED)
    torch.set_num_threads(os.cpu_count() or 1)
    (xtr, ytr), (xte, yte), labels = dataset()
    epochs = epochs or int(os.environ.get("TRAIN_EPOCHS", "12" if len(xtr) < 5000 else "30"))
    xtr_t, ytr_t = to_tensor(xtr), torch.from_numpy(ytr)
    xte_t, yte_t = to_tensor(xte), torch.from_numpy(yte)
    model = ResNet20(num_classes=len(labels))
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    steps = epochs * ((len(xtr_t) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=gen)
        total = 0.0
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            xb = xtr_t[idx]
            # Light augmentation: random shifts of up to 2 pixels.
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = (model(xte_t).argmax(1) == yte_t).float().mean().item()
        print(
            f"[train] epoch {epoch + 1}/{epochs}  loss {total / len(perm):.4f}  "
            f"held-out accuracy {acc:.4f}  ({time.time() - t0:.0f} s)",
            flush=True,
        )
    export_model(model, model_path, spec(labels))
    # The same weights kept as parameters: what precision="bf16" needs (it casts them).
    export_model(model, params_path(model_path), spec(labels), freeze=False)
    print(f"[train] exported {model_path}", flush=True)
    return model_path


if __name__ == "__main__":
    train(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-output/model"))
