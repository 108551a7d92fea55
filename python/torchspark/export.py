"""Export a trained `torch.nn.Module` for torchspark: TorchScript `.pt` plus the spec JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def export_model(
    module: torch.nn.Module,
    path: str | os.PathLike,
    spec: dict[str, Any],
    *,
    freeze: bool = True,
) -> Path:
    """Script `module`, freeze it (keeping the featurize method), save `path` and the spec.

    `torch.jit.optimize_for_inference` is deliberately not applied: libtorch as loaded by
    torchspark cannot read modules saved after it. Freezing folds BatchNorm and inlines the
    weights, which is most of its gain. Pass `freeze=False` to keep the weights as parameters
    (needed for `precision="bf16"`, which casts them).

    Returns the path of the written spec (`model.pt` -> `model.json`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        scripted = torch.jit.script(module)
        if freeze:
            featurize = spec.get("featurize") or {}
            keep = [featurize["method"]] if featurize.get("method") else []
            scripted = torch.jit.freeze(scripted, preserved_attrs=keep)
        scripted.save(str(path))
    finally:
        module.train(was_training)
    spec_path = path.with_suffix(".json")
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec_path
