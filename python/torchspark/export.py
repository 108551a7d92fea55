"""Export a trained `torch.nn.Module` for torchspark: a TorchScript `.pt` or an AOTInductor
`.pt2` package, plus the spec JSON beside it (`model.pt2` -> `model.json`)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

FORMATS = ("torchscript", "aoti")
PRECISIONS = ("fp32", "bf16", "int8")


def export_model(
    module: torch.nn.Module,
    path: str | os.PathLike,
    spec: dict[str, Any],
    *,
    freeze: bool = True,
    format: str = "torchscript",
    precision: str = "fp32",
    sample: torch.Tensor | None = None,
    channels_last: bool = True,
    max_batch: int = 4096,
) -> Path:
    """Write `module` to `path` in `format`, and the spec beside it; returns the spec's path.

    format="torchscript" (default): scripted, then frozen (keeping the featurize method).
    `torch.jit.optimize_for_inference` is deliberately not applied: libtorch as loaded by
    torchspark cannot read modules saved after it. Pass `freeze=False` to keep the weights as
    parameters (needed for the runtime option `precision="bf16"`, which casts them).

    format="aoti": an AOTInductor package (`.pt2`): `torch.export` with a dynamic batch
    dimension (1..`max_batch`), compiled by Inductor with freezing. The package takes NCHW
    float32 input; with `channels_last` the conversion to channels-last (faster for convolutions
    on CPU) is compiled into it. A featurize `method` becomes a second model of that name in the
    package. `precision` is compiled in and recorded in the spec:

    - "fp32" (default);
    - "bf16": weights and activations in bfloat16 (input and outputs stay float32); pays only on
      CPUs with bf16 instructions (avx512_bf16, AMX) or a GPU;
    - "int8": post-training static quantization (PT2E with torchao's X86InductorQuantizer),
      calibrated on `sample` (a float tensor of preprocessed inputs, N x C x H x W: a few hundred
      typical images); pays on CPUs with VNNI (avx512_vnni, avx_vnni, AMX).

    Compiling takes tens of seconds (ResNet-20: ~30 s on 2 cores) and needs a C++ compiler.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = dict(spec)
    was_training = module.training
    module.eval()
    try:
        if format == "torchscript":
            if precision != "fp32":
                raise ValueError(
                    f'precision={precision!r} needs format="aoti"; TorchScript models are '
                    'saved in fp32 (bf16 is the runtime option precision="bf16" on an '
                    "unfrozen model)"
                )
            _save_torchscript(module, path, spec, freeze)
        else:
            _save_aoti(module, path, spec, precision, sample, channels_last, max_batch)
            if precision != "fp32":
                spec["precision"] = precision
    finally:
        module.train(was_training)
    spec_path = path.with_suffix(".json")
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec_path


def _save_torchscript(module: torch.nn.Module, path: Path, spec: dict, freeze: bool) -> None:
    scripted = torch.jit.script(module)
    if freeze:
        featurize = spec.get("featurize") or {}
        keep = [featurize["method"]] if featurize.get("method") else []
        scripted = torch.jit.freeze(scripted, preserved_attrs=keep)
    scripted.save(str(path))


class _Entry(torch.nn.Module):
    """One exported program: `forward` or a method of the net, float32 in and out."""

    def __init__(
        self, net: torch.nn.Module, method: str | None, channels_last: bool, dtype: torch.dtype
    ):
        super().__init__()
        self.net = net
        self.method = method
        self.channels_last = channels_last
        self.dtype = dtype

    def forward(self, x: torch.Tensor):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(self.dtype)
        out = self.net(x) if self.method is None else getattr(self.net, self.method)(x)
        if self.dtype == torch.float32:
            return out
        return torch.utils._pytree.tree_map(lambda t: t.float(), out)


def _save_aoti(
    module: torch.nn.Module,
    path: Path,
    spec: dict,
    precision: str,
    sample: torch.Tensor | None,
    channels_last: bool,
    max_batch: int,
) -> None:
    from torch._inductor.package import package_aoti

    inp = spec["input"]
    shape = (inp.get("channels", 3), inp["height"], inp["width"])
    if precision == "int8" and (sample is None or tuple(sample.shape[1:]) != shape):
        raise ValueError(
            f'precision="int8" calibrates on `sample`: pass a float tensor of preprocessed '
            f"inputs of shape (N, {', '.join(map(str, shape))})"
        )
    # Batch 2, not 1: torch.export specializes dimensions whose example size is 0 or 1.
    example = torch.zeros(2, *shape)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = copy.deepcopy(module).to(dtype) if precision == "bf16" else module
    method = (spec.get("featurize") or {}).get("method")
    entries = {"model": _Entry(net, None, channels_last, dtype)}
    if method:
        entries[method] = _Entry(net, method, channels_last, dtype)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = ({0: batch},)
    files = {}
    with torch._inductor.config.patch(freezing=True), torch.no_grad():
        for name, entry in entries.items():
            ep = torch.export.export(entry, (example,), dynamic_shapes=dynamic)
            if precision == "int8":
                ep = _quantize(ep, sample, example, dynamic)
            files[name] = torch._inductor.aot_compile(
                ep.module(), (example,), options={"aot_inductor.package": True}
            )
    package_aoti(str(path), files)


def _quantize(ep, sample: torch.Tensor, example, dynamic) -> torch.export.ExportedProgram:
    """PT2E post-training static quantization for x86 Inductor, calibrated on `sample`.

    The quantized graph is exported again on `example` (contiguous NCHW, as the engine passes
    batches): a compiled package assumes its example's strides, so a channels-last view as the
    example (what `permute` of NHWC images gives) would make it read the input wrongly."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ImportError('precision="int8" needs torchao (pip install torchao==0.18.0)') from e
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(ep.module(), quantizer)
    for chunk in sample.float().contiguous().split(64):
        prepared(chunk)
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, (example,), dynamic_shapes=dynamic)
