"""Export a trained `torch.nn.Module` for torchspark: a TorchScript `.pt` or an AOTInductor
`.pt2` package, plus the spec JSON beside it (`model.pt2` -> `model.json`)."""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from torchspark import cluster

FORMATS = ("torchscript", "aoti")
PRECISIONS = ("fp32", "bf16", "int8")
# AVX2 + FMA (Haswell, Zen 1 and later): every x86 node of a mixed cluster runs it.
PORTABLE_CPU = "x86-64-v3"


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
    cpu: str | None = None,
) -> Path:
    """Write `module` to `path` in `format`, and the spec beside it; returns the spec's path.

    `spec` is a version-1 image spec or a version-2 spec (declared `inputs` and `outputs`).
    Every method the spec names (version 1: `featurize.method`; version 2: `method`, and an
    output's `method`) is kept in the exported file; a method the module does not have (in
    TorchScript: one `torch.jit.script` did not compile, i.e. not `@torch.jit.export`) raises
    ValueError naming it before anything is written.

    format="torchscript" (default): scripted, then frozen (keeping the methods the spec names).
    `torch.jit.optimize_for_inference` is deliberately not applied: libtorch as loaded by
    torchspark cannot read modules saved after it. Pass `freeze=False` to keep the weights as
    parameters (needed for the runtime option `precision="bf16"`, which casts them).

    format="aoti": an AOTInductor package (`.pt2`): `torch.export` with a dynamic batch
    dimension (1..`max_batch`), compiled by Inductor with freezing. Its models take the spec's
    inputs in their declared order (version 1: one NCHW float32 image), each of its dtype and
    per-row shape, a `-1` dimension (and a text input's length, up to its `max_length`) dynamic
    and shared with the input's `mask`/`type_ids`; a `ragged: "list"` input cannot be exported
    (ValueError). Image inputs come NCHW float32; with `channels_last` their conversion to
    channels-last (faster for convolutions on CPU) is compiled into the package. Each method
    the spec names becomes a further model of that name in the package. `precision` is compiled
    in and recorded in the spec:

    - "fp32" (default);
    - "bf16": weights and activations in bfloat16 (input and outputs stay float32); pays only on
      CPUs with bf16 instructions (avx512_bf16, AMX) or a GPU;
    - "int8": post-training static quantization (PT2E with torchao's X86InductorQuantizer),
      calibrated on `sample` (a float tensor of preprocessed inputs, N x C x H x W: a few hundred
      typical images; a version-2 spec: of its one float input's per-row shape, N first); pays
      on CPUs with VNNI (avx512_vnni, avx_vnni, AMX).

    `cpu` is the x86 CPU level the package's machine code is compiled for (format="aoti" only):

    - "x86-64-v3" (default on x86-64): AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE; runs on every
      x86 CPU since Haswell (2013) and Zen 1, i.e. on every node of a cluster that mixes
      AVX2-only and AVX-512 machines. The default because a package compiled for the
      exporting machine can die with SIGILL (killing the executor) on an older node; the cost
      is small, as convolutions and matrix products run in libtorch's oneDNN/MKL, which pick
      the best instructions of each host at run time (measured: see docs/model-formats.md, "CPU level");
    - "native": Inductor's own default, `-march=native`: the fastest code for the exporting
      machine's CPU, which only CPUs with all of its instruction sets can run;
    - "x86-64-v4" (AVX-512) or any other GCC `-march` name ("znver4", "sapphirerapids"...).

    Inductor's generated kernels get the matching vector width (256 bits up to v3, 512 from
    v4; on an AVX-512 exporting CPU they may also use its VNNI/BF16/AMX extensions). The spec
    records what the code needs, `"cpu": {"march": ..., "flags": [...]}` (flags as
    /proc/cpuinfo spells them), and a host lacking one of them refuses the package with an
    error naming it, the host and the flags, instead of crashing. On other machines (ARM) the
    default is "native".

    Compiling takes tens of seconds (ResNet-20: ~30 s on 2 cores) and needs a C++ compiler.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if cpu is not None and format != "aoti":
        raise ValueError(
            'cpu= applies to format="aoti"; a TorchScript model is compiled by each host when '
            "it loads"
        )
    if cpu is None:
        cpu = PORTABLE_CPU if _is_x86() else "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", cpu):
        raise ValueError(
            f'cpu must be "native", "x86-64-v3", "x86-64-v4" or a -march name, not {cpu!r}'
        )
    path = Path(path)
    spec = dict(spec)
    methods = _named_methods(spec)
    missing = [(n, w) for n, w in methods.items() if not callable(getattr(module, n, None))]
    if missing:
        name, where = missing[0]
        raise ValueError(
            f"the spec names the method `{name}` ({where}), which {type(module).__name__} "
            "does not have"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
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
            _save_torchscript(module, path, methods, freeze)
        else:
            spec["cpu"] = _save_aoti(
                module, path, spec, methods, precision, sample, channels_last, max_batch, cpu
            )
            if precision != "fp32":
                spec["precision"] = precision
    finally:
        module.train(was_training)
    # Where every loader looks for it (one rule: torchspark.cluster.spec_path).
    spec_file = Path(cluster.spec_path(str(path)))
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")
    return spec_file


def _named_methods(spec: dict) -> dict[str, str]:
    """The methods `spec` names (each run instead of `forward` for some outputs) -> where:
    version 1's `featurize.method`; version 2's `method` and each output's `method`."""
    found: dict[str, str] = {}

    def add(name: Any, where: str) -> None:
        if name is None:
            return
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{where} must be a method's name, not {name!r}")
        found.setdefault(name, where)

    if spec.get("spec_version", 1) == 1:
        add((spec.get("featurize") or {}).get("method"), "featurize.method")
        return found
    add(spec.get("method"), "method")
    for i, out in enumerate(spec.get("outputs") or []):
        if isinstance(out, dict):
            add(out.get("method"), f"outputs[{i}].method ({out.get('name', '?')})")
    return found


def _save_torchscript(
    module: torch.nn.Module, path: Path, methods: dict[str, str], freeze: bool
) -> None:
    scripted = torch.jit.script(module)
    for name, where in methods.items():
        # torch.jit.script compiles forward, what it calls and @torch.jit.export methods only.
        if not scripted._c._has_method(name):
            raise ValueError(
                f"the spec names the method `{name}` ({where}), which torch.jit.script did not "
                f"compile: decorate {type(module).__name__}.{name} with @torch.jit.export"
            )
    if freeze:
        # Freezing keeps `forward` only, unless told which other methods to keep.
        scripted = torch.jit.freeze(scripted, preserved_attrs=list(methods))
    for name, where in methods.items():
        if not scripted._c._has_method(name):  # pragma: no cover - torch's promise
            raise ValueError(f"freezing dropped the method `{name}` ({where})")
    scripted.save(str(path))


_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class _Entry(torch.nn.Module):
    """One exported program: `forward` or a method of the net on the declared inputs; image
    inputs (4-D float) turned channels-last if asked, float inputs cast to `dtype` and float
    outputs back to float32."""

    def __init__(
        self,
        net: torch.nn.Module,
        method: str | None,
        images: tuple[bool, ...],
        channels_last: bool,
        dtype: torch.dtype,
    ):
        super().__init__()
        self.net = net
        self.method = method
        self.images = images
        self.channels_last = channels_last
        self.dtype = dtype

    def forward(self, *xs: torch.Tensor):
        args = []
        for x, image in zip(xs, self.images):
            if image and self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if x.is_floating_point():
                x = x.to(self.dtype)
            args.append(x)
        out = self.net(*args) if self.method is None else getattr(self.net, self.method)(*args)
        if self.dtype == torch.float32:
            return out
        return torch.utils._pytree.tree_map(
            lambda t: t.float() if t.is_floating_point() else t, out
        )


def _declared_inputs(spec: dict, max_batch: int) -> tuple[tuple, tuple, tuple[bool, ...]]:
    """(example tensors, their dynamic shapes, which are images): one per input of `spec`, in
    the order `forward` takes them. Examples hold 2 rows and 2 in each dynamic dimension:
    torch.export specializes dimensions whose example size is 0 or 1."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    if spec.get("spec_version", 1) == 1:
        if "input" not in spec:
            raise ValueError("a version-1 spec needs `input` (height, width)")
        inp = spec["input"]
        shape = (inp.get("channels", 3), inp["height"], inp["width"])
        return (torch.zeros(2, *shape),), ({0: batch},), (True,)
    decls = spec.get("inputs")
    if not isinstance(decls, list) or not decls:
        raise ValueError("a version-2 spec needs `inputs` (a list of the model's inputs)")
    rows: dict[str, list] = {}  # input name -> its per-row dimensions (an int or a Dim)
    for i, d in enumerate(decls):
        kind, name = d.get("kind", "tensor"), d.get("name")
        if kind in ("mask", "type_ids"):
            continue
        if d.get("ragged") == "list":
            raise ValueError(
                f'inputs[{i}] ({name}): a `ragged: "list"` input (a List[Tensor] per batch) '
                'cannot be exported with format="aoti"; export it as TorchScript'
            )
        if kind == "text":
            longest = d.get("max_length")
            shape = [-1]
        else:
            longest, shape = None, d.get("shape", [])
        dims: list = []
        for k, n in enumerate(shape):
            if n == -1:
                limit = {"max": longest} if longest else {}
                dims.append(torch.export.Dim(f"{name}_{k}", min=1, **limit))
            else:
                dims.append(int(n))
        rows[name] = dims
    examples, dynamic, images = [], [], []
    for i, d in enumerate(decls):
        kind, name = d.get("kind", "tensor"), d.get("name")
        dims = rows.get(d.get("of")) if kind in ("mask", "type_ids") else rows.get(name)
        if dims is None:
            raise ValueError(f"inputs[{i}] ({name}): `of` names no input: {d.get('of')!r}")
        dtype = _DTYPES.get(d.get("dtype", "int64" if kind == "text" else "float32"))
        if dtype is None:
            raise ValueError(f"inputs[{i}] ({name}): unknown dtype {d.get('dtype')!r}")
        size = [2 if isinstance(n, torch.export.Dim) else n for n in dims]
        # A mask of ones: a model may divide by its sum (mean pooling).
        fill = torch.ones if kind == "mask" else torch.zeros
        examples.append(fill(2, *size, dtype=dtype))
        spec_dims = {0: batch}
        spec_dims.update({k + 1: n for k, n in enumerate(dims) if isinstance(n, torch.export.Dim)})
        dynamic.append(spec_dims)
        images.append(kind == "image")
    return tuple(examples), tuple(dynamic), tuple(images)


def _save_aoti(
    module: torch.nn.Module,
    path: Path,
    spec: dict,
    methods: dict[str, str],
    precision: str,
    sample: torch.Tensor | None,
    channels_last: bool,
    max_batch: int,
    cpu: str,
) -> dict:
    """Compiles and writes the package; returns the spec's `cpu` entry (what its code needs)."""
    from torch._inductor.package import package_aoti

    examples, dynamic, images = _declared_inputs(spec, max_batch)
    if precision == "int8":
        if len(examples) != 1 or not examples[0].is_floating_point():
            raise ValueError(
                'precision="int8" calibrates on `sample`, one float input: this spec has '
                f"{len(examples)} inputs"
            )
        shape = tuple(examples[0].shape[1:])
        if sample is None or tuple(sample.shape[1:]) != shape:
            raise ValueError(
                f'precision="int8" calibrates on `sample`: pass a float tensor of preprocessed '
                f"inputs of shape (N, {', '.join(map(str, shape))})"
            )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = copy.deepcopy(module).to(dtype) if precision == "bf16" else module
    entries = {"model": _Entry(net, None, images, channels_last, dtype)}
    for method in methods:
        entries[method] = _Entry(net, method, images, channels_last, dtype)
    files = {}
    march, simdlen = _cpu_target(cpu)
    target = {"freezing": True, "cpp.march": march, "cpp.simdlen": simdlen}
    with torch._inductor.config.patch(target), torch.no_grad():
        needs = _required_cpu(cpu, march)
        for name, entry in entries.items():
            # The entry takes *inputs: their dynamic shapes are one tuple, for that argument.
            ep = torch.export.export(entry, examples, dynamic_shapes=(dynamic,))
            if precision == "int8":
                ep = _quantize(ep, sample, examples, dynamic)
            files[name] = torch._inductor.aot_compile(
                ep.module(), examples, options={"aot_inductor.package": True}
            )
    package_aoti(str(path), files)
    return needs


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _compiler_macros(flags: list[str]) -> set[str]:
    """The macros the C++ compiler Inductor uses defines under `flags` (`__AVX2__`, ...)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        out = subprocess.run(
            [get_cpp_compiler(), *flags, "-dM", "-E", "-x", "c++", "-"],
            input="",
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise ValueError(f"cannot compile for {' '.join(flags)}: {detail.strip()}") from e
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}


def _cpu_target(cpu: str) -> tuple[str | None, int | None]:
    """(Inductor's `cpp.march`, `cpp.simdlen`) for `cpu`: "native" leaves both to Inductor.

    The vector width follows the level (512 with AVX-512, 256 with AVX2), narrowed to what the
    exporting CPU has: Inductor only vectorizes for an ISA it can check on this CPU, and would
    otherwise emit scalar kernels."""
    if cpu == "native":
        return None, None
    if not _is_x86():
        return cpu, None
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    macros = _compiler_macros([f"-march={cpu}"])
    width = 512 if "__AVX512F__" in macros else 256 if "__AVX2__" in macros else 0
    here = {isa.bit_width() for isa in valid_vec_isa_list()}
    simdlen = max((w for w in here if w <= width), default=0)
    return cpu, simdlen


# Compiler macro -> the /proc/cpuinfo flag of that instruction set (as the load check reads it).
_MACRO_FLAGS = {
    "__SSE3__": "pni",
    "__SSSE3__": "ssse3",
    "__SSE4_1__": "sse4_1",
    "__SSE4_2__": "sse4_2",
    "__POPCNT__": "popcnt",
    "__AVX__": "avx",
    "__AVX2__": "avx2",
    "__FMA__": "fma",
    "__F16C__": "f16c",
    "__BMI__": "bmi1",
    "__BMI2__": "bmi2",
    "__LZCNT__": "abm",
    "__MOVBE__": "movbe",
    "__XSAVE__": "xsave",
    "__ADX__": "adx",
    "__AES__": "aes",
    "__PCLMUL__": "pclmulqdq",
    "__SHA__": "sha_ni",
    "__GFNI__": "gfni",
    "__VAES__": "vaes",
    "__VPCLMULQDQ__": "vpclmulqdq",
    "__AVXVNNI__": "avx_vnni",
    "__AVX512F__": "avx512f",
    "__AVX512BW__": "avx512bw",
    "__AVX512CD__": "avx512cd",
    "__AVX512DQ__": "avx512dq",
    "__AVX512VL__": "avx512vl",
    "__AVX512IFMA__": "avx512ifma",
    "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512_vbmi2",
    "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AVX512BF16__": "avx512_bf16",
    "__AVX512FP16__": "avx512_fp16",
    "__AMX_TILE__": "amx_tile",
    "__AMX_BF16__": "amx_bf16",
    "__AMX_INT8__": "amx_int8",
    "__AMX_FP16__": "amx_fp16",
}


def _required_cpu(cpu: str, march: str | None) -> dict:
    """The spec's `cpu` entry: the instruction sets the compiled code may use, read from the
    compiler under the flags Inductor compiles with (its -march plus its vector ISA's -m flags,
    which on an AVX-512 CPU add VNNI/BF16/AMX), in /proc/cpuinfo's spelling."""
    if not _is_x86():
        return {"march": cpu, "flags": []}
    from torch._inductor.cpu_vec_isa import invalid_vec_isa, pick_vec_isa

    isa = pick_vec_isa()
    flags = [f"-march={march or 'native'}"]
    if isa != invalid_vec_isa:
        flags += isa.build_arch_flags().split()
    macros = _compiler_macros(flags)
    return {"march": cpu, "flags": [f for m, f in _MACRO_FLAGS.items() if m in macros]}


def _quantize(ep, sample: torch.Tensor, examples, dynamic) -> torch.export.ExportedProgram:
    """PT2E post-training static quantization for x86 Inductor, calibrated on `sample`.

    The quantized graph is exported again on `examples` (contiguous NCHW, as the engine passes
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
    # The converted graph takes the inputs as separate arguments, not as one *inputs.
    return torch.export.export(converted, examples, dynamic_shapes=dynamic)
