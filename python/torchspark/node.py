"""Node set-up and checks: `python -m torchspark.node setup [--cpu|--gpu] | check`.

Managed clusters (HDInsight script actions, EMR bootstrap actions, Dataproc initialization
actions) run one command on every node, head and workers:

    python3 -m pip install torchspark-<version>-<tag>.whl && python3 -m torchspark.node setup

`setup --cpu` installs torch 2.13.0 without its CUDA wheels: the torch wheel, the two CUDA
libraries libtorch_cpu.so links to, and torch's pure-Python dependencies (1.3 GB instead of
4.9 GB installed; `--import-torch` adds what `import torch` in Python needs).
`setup --gpu` installs torch with its CUDA wheels. Without either, a node with no NVIDIA GPU
gets --cpu. The pins are in torchspark/data/torch-cpu.txt (docs/install-node.md). `setup` never
replaces a torch of another version unless told to (`--replace-torch`); it says what it found
and what it does (`--dry-run`: only that). `check` (or `setup --check`) only checks: host, CPU
instruction sets, glibc against what the library needs, torch and the libraries libtorch needs,
that the library loads, and that a tiny bundled model scores the expected numbers. It exits 1 if
any check fails. `torchspark.doctor(spark)` runs the same check on every executor.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TORCH_VERSION = "2.13.0"
_DATA = Path(__file__).resolve().parent / "data"
# The pins of the CPU set-up (the Makefile's `make setup` reads the same files).
PINS_CPU = _DATA / "torch-cpu.txt"
PINS_IMPORT = _DATA / "torch-cpu-python.txt"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    host: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def get(self, name: str) -> str:
        return next((c.detail for c in self.checks if c.name == name), "")

    def text(self) -> str:
        lines = [f"torchspark node check on {self.host} ({sys.executable})"]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name:<9} {c.detail}" for c in self.checks]
        lines.append("  result: " + ("ready" if self.ok else "NOT ready (see FAIL lines)"))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "host": self.host,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), or "?"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


# The /proc/cpuinfo flags of the x86-64 levels that export_model(format="aoti", cpu=...)
# compiles for ("abm" is LZCNT).
X86_64_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
X86_64_V4 = X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def isa_summary(flags: set[str]) -> tuple[str, str]:
    """(instruction sets, bf16 support) in words."""
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    isa += [f for f in ("amx_tile", "amx_bf16", "amx_int8") if f in flags]
    level = next((n for n, s in (("v4", X86_64_V4), ("v3", X86_64_V3)) if s <= flags), None)
    if isa and level:
        # Which AOTInductor packages (export_model's cpu=...) this node can run.
        runs = {"v4": "x86-64-v4 or x86-64-v3", "v3": "x86-64-v3"}[level]
        isa.append(f"(runs .pt2 exported with cpu={runs})")
    if "amx_bf16" in flags:
        bf16 = "native (AMX)"
    elif "avx512_bf16" in flags:
        bf16 = "native (avx512_bf16)"
    else:
        bf16 = "emulated (slow: use fp32)"
    return (" ".join(isa) or "none of avx2/avx512"), bf16


def check(tiny_model: bool = True) -> Report:
    """Checks this node; never raises."""
    from torchspark import _elf, _native

    r = Report(host=socket.gethostname())
    machine = platform.machine()
    r.add("platform", sys.platform == "linux" and machine == "x86_64", f"{sys.platform} {machine}")
    isa, bf16 = isa_summary(cpu_flags())
    r.add("cpu", "avx2" in isa, isa + ("" if "avx2" in isa else " (torch 2.13 needs AVX2)"))
    r.add("bf16", True, bf16)

    node = _elf.node_glibc()
    try:
        so = _native.library_path()
        need = _elf.glibc_needed(so)
    except (OSError, ValueError) as e:
        r.add("library", False, str(e))
        return r
    glibc_ok = node is not None and need is not None and not _elf.older(node, need)
    r.add("glibc", glibc_ok, f"node has {node or 'no glibc'}; torchspark needs {need}")
    cxx_need, cxx_have = _elf.glibcxx_needed(so), _elf.node_glibcxx()
    cxx_ok = not cxx_need or (cxx_have is not None and not _elf.older(cxx_have, cxx_need))
    r.add(
        "libstdc++",
        cxx_ok,
        f"node has GLIBCXX {cxx_have or 'none'}; torchspark needs {cxx_need}",
    )
    glibc_ok = glibc_ok and cxx_ok

    torch_ok = _check_torch(r, find_torch())
    if not glibc_ok:
        return r
    if not torch_ok:
        # Loading it would only repeat the linker's words (or mix two libtorch versions).
        r.add(
            "library", False, f"{so} not loaded: libtorch {TORCH_VERSION} is not ready (see above)"
        )
        return r
    try:
        _native.lib()
        r.add("library", True, f"{so} loads")
    except Exception as e:  # noqa: BLE001  (the check reports every failure, never raises)
        r.add("library", False, str(e))
        return r
    if tiny_model:
        r.add(*_score_tiny())
    return r


# ---- torch: which one is here, and what libtorch needs ---------------------------------------

# The pip package of each CUDA library that torch 2.13's libraries NEED, so that a missing one
# comes with the command that brings it (data/cuda-libraries.txt: the JVM's loader reads it too).
_LIB_PACKAGE = dict(
    ln.split()
    for ln in (_DATA / "cuda-libraries.txt").read_text().splitlines()
    if ln.strip() and not ln.startswith("#")
)
_SYSTEM_DIRS = ("/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")


def pins(path: Path = PINS_CPU) -> dict[str, str]:
    """{package: version} of a pins file, following its `-r` lines."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out.update(pins(path.parent / line[3:].strip()))
        elif "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name)] = version.strip()
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


@lru_cache(maxsize=1)
def _ldconfig_names() -> frozenset[str]:
    """The library names in the dynamic linker's cache (`ldconfig -p`)."""
    try:
        out = subprocess.run(
            ["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(ln.split()[0] for ln in out.splitlines()[1:] if "x86-64" in ln)


def _find_library(name: str, rpath: list[str], origin: Path) -> Path | None:
    """Where the dynamic linker would find `name` for a library in `origin` with `rpath`:
    its RPATH/RUNPATH, LD_LIBRARY_PATH, the system's folders; None when nowhere."""
    dirs = [d.replace("$ORIGIN", str(origin)).replace("${ORIGIN}", str(origin)) for d in rpath]
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for d in dirs + list(_SYSTEM_DIRS):
        if (Path(d) / name).exists():
            return Path(d) / name
    return Path(name) if name in _ldconfig_names() else None


def missing_libraries(lib: Path) -> list[tuple[str, str]]:
    """[(library, the one that needs it)] that loading `lib` would not find: its NEEDED entries
    and, through the ones found outside the system's folders (torch's, nvidia-*'s), theirs."""
    from torchspark import _elf

    missing: list[tuple[str, str]] = []
    seen: set[str] = set()
    todo = [lib]
    while todo:
        cur = todo.pop()
        try:
            needed, rpath = _elf.dynamic(cur)
        except (OSError, ValueError):
            missing.append((cur.name, "(unreadable)"))
            continue
        for name in needed:
            if name in seen:
                continue
            seen.add(name)
            found = _find_library(name, rpath, cur.parent)
            if found is None:
                missing.append((name, cur.name))
            elif found.is_absolute() and str(found.parent) not in _SYSTEM_DIRS:
                todo.append(found)
    return missing


@dataclass
class TorchInstall:
    """The torch (libtorch) that torchspark would load, read from files, never imported."""

    lib: Path | None  # libtorch's lib/ folder
    version: str | None  # "2.13.0+cu130" (torch/version.py) or libtorch's build-version
    cuda: str | None  # the CUDA version it was built for; None for a CPU build
    missing: list[tuple[str, str]] = field(default_factory=list)  # for libtorch_cpu.so
    python_missing: list[tuple[str, str]] = field(default_factory=list)  # for `import torch`

    @property
    def public(self) -> str | None:
        """The version without its local label ("2.13.0" of "2.13.0+cu130")."""
        return self.version.split("+", 1)[0] if self.version else None

    def describe(self) -> str:
        if self.lib is None:
            return "no torch"
        build = f"built for CUDA {self.cuda}" if self.cuda else "a CPU build"
        return f"torch {self.version or 'of unknown version'} ({build}) at {self.lib.parent}"


def find_torch() -> TorchInstall:
    """The torch of this Python (or $TORCHSPARK_LIBTORCH_DIR) and what its libraries lack."""
    from torchspark import _native

    importlib.invalidate_caches()
    lib = _native.libtorch_dir()
    if lib is None:
        return TorchInstall(None, None, None)
    version = cuda = None
    vfile = lib.parent / "version.py"
    if vfile.is_file():
        text = vfile.read_text(errors="replace")
        m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.MULTILINE)
        version = m.group(1) if m else None
        m = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)", text, re.MULTILINE)
        cuda = m.group(1) if m else None
    elif (lib.parent / "build-version").is_file():  # an unzipped libtorch
        version = (lib.parent / "build-version").read_text().strip() or None
    t = TorchInstall(lib, version, cuda)
    t.missing = missing_libraries(lib / "libtorch_cpu.so")
    python = lib / "libtorch_python.so"
    if python.is_file():
        t.python_missing = missing_libraries(python)
    return t


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver on this node: /proc/driver/nvidia or nvidia-smi on PATH."""
    import shutil

    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def _py() -> str:
    return shlex.quote(sys.executable)


def _fix_setup(extra: str = "") -> str:
    mode = "--gpu" if has_nvidia_gpu() else "--cpu"
    return f"{_py()} -m torchspark.node setup {mode}{extra}"


def _pip_fix(missing: list[tuple[str, str]]) -> str:
    """The command that brings the missing libraries: their nvidia-* packages at torch's pins;
    a missing torch library (a broken install) means torch again."""
    want = pins(PINS_IMPORT)
    names = {n for n, _ in missing}
    if any(n.startswith(("libc10", "libtorch", "libshm")) for n in names):
        return f"{_py()} -m pip install --no-deps --force-reinstall torch=={TORCH_VERSION}"
    pkgs = sorted({_LIB_PACKAGE[n] for n in names if n in _LIB_PACKAGE})
    fixes = []
    if pkgs:
        spec = " ".join(f"{p}=={want[p]}" if p in want else p for p in pkgs)
        fixes.append(f"{_py()} -m pip install --no-deps {spec}")
    other = sorted(n for n in names if n not in _LIB_PACKAGE)
    if other:
        fixes.append("install the system's " + ", ".join(other) + " (the OS package manager)")
    return "; ".join(fixes)


def _check_torch(r: Report, t: TorchInstall) -> bool:
    """The `torch` and `libtorch` lines of the check: what was found, what is needed, the fix."""
    if t.lib is None:
        return r.add(
            "torch",
            False,
            f"torch not installed (needs {TORCH_VERSION}) for {sys.executable}; "
            f"fix: {_fix_setup()}",
        )
    if t.public != TORCH_VERSION and t.version is not None:
        return r.add(
            "torch",
            False,
            f"{t.describe()}; torchspark needs {TORCH_VERSION}; fix: "
            f"{_fix_setup(' --replace-torch')} (replaces it)",
        )
    r.add("torch", True, f"{t.describe()}; libtorch at {t.lib}")
    if t.missing:
        names = ", ".join(
            sorted({n if who == "libtorch_cpu.so" else f"{n} (for {who})" for n, who in t.missing})
        )
        return r.add(
            "libtorch",
            False,
            f"libtorch_cpu.so needs {names}: not found in its RPATH, LD_LIBRARY_PATH or the "
            f"system's libraries; fix: {_pip_fix(t.missing)}",
        )
    if t.python_missing:
        n = len({name for name, _ in t.python_missing})
        note = (
            f"torch's Python module would not load (`import torch`: {n} CUDA libraries absent, "
            "a lean CPU set-up; torchspark does not need them; setup --cpu --import-torch adds them)"
        )
    else:
        note = "`import torch` loads too"
    return r.add("libtorch", True, f"libtorch_cpu.so's libraries found; {note}")


def _score_tiny() -> tuple[str, bool, str]:
    import numpy as np

    from torchspark.native_model import NativeModel

    try:
        expected = json.loads((_DATA / "tiny.expected.json").read_text())
        with NativeModel(_DATA / "tiny.pt", num_threads=1) as m:
            out = m.score([(_DATA / "tiny.png").read_bytes()], top_k=1).to_pydict()
        if out["error"][0]:
            return "score", False, f"tiny model: {out['error'][0]}"
        got = np.asarray(out["probability"], dtype=np.float64)
        diff = float(np.abs(got - np.asarray(expected["probability"])).max())
        ok = diff < 1e-4
        return "score", ok, f"tiny model max |diff| vs PyTorch {diff:.1e}"
    except Exception as e:  # noqa: BLE001  (the check reports every failure, never raises)
        return "score", False, f"tiny model failed: {e}"


def _installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+", 1)[0])[:4])


def _meets(have: str, spec: str) -> bool:
    """Whether version `have` meets a requirement's specifier (">=4.10.0,<5"; "" is any)."""
    for part in filter(None, (x.strip() for x in spec.split(","))):
        m = re.fullmatch(r"(>=|<=|==|!=|>|<|~=)\s*([\w.*+!]+)", part)
        if not m:
            return False
        op, v = m.groups()
        a, b = _vtuple(have), _vtuple(v.rstrip(".*"))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            ">": a > b,
            "<": a < b,
            "==": a[: len(b)] == b,
            "!=": a[: len(b)] != b,
            "~=": a >= b and a[: len(b) - 1] == b[: len(b) - 1],
        }[op]
        if not ok:
            return False
    return True


def _torch_requires() -> dict[str, str]:
    """{package: specifier} of the installed torch's pure-Python dependencies (its METADATA's
    Requires-Dist without nvidia-*, cuda-*, triton and extras)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("torch") or []
    except PackageNotFoundError:
        return {}
    out = {}
    for req in reqs:
        body, _, marker = req.partition(";")
        if "extra ==" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*\(?([^)]*)\)?", body)
        if not m:
            continue
        name = _norm(m.group(1))
        if name.startswith(("nvidia-", "cuda-")) or name == "triton":
            continue
        out[name] = m.group(3).strip()
    return out


def _pip(*args: str) -> list[str]:
    # -P: not a `pip` in the working directory (`-m` would put it first); Python 3.11+.
    flags = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *flags, "-m", "pip", "install", *args]


@dataclass
class Plan:
    """What `setup` found and what it would do."""

    mode: str  # "cpu" or "gpu"
    found: TorchInstall
    notes: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    refused: bool = False
    pure_step: int | None = None  # the index of the pure-Python step in `commands`

    def text(self) -> str:
        lines = [f"torchspark node set-up ({self.mode}) for {sys.executable}"]
        lines.append(f"  found: {self.found.describe()}")
        lines += [f"  {n}" for n in self.notes]
        lines += [f"  plan:  {shlex.join(c)}" for c in self.commands]
        return "\n".join(lines)


def plan(mode: str = "auto", replace_torch: bool = False, import_torch: bool = False) -> Plan:
    """What `setup` would do here (nothing is installed)."""
    if mode == "auto":
        mode = "gpu" if has_nvidia_gpu() else "cpu"
    t = find_torch()
    pl = Plan(mode, t)
    if t.lib is None and _installed("torch"):
        pl.notes.append(f"(pip lists torch {_installed('torch')}, but its libtorch is missing)")
    same = t.lib is not None and t.public == TORCH_VERSION
    if t.lib is not None and not same:
        if not replace_torch:
            pl.refused = True
            flag = " --import-torch" if import_torch else ""
            pl.notes += [
                f"torchspark needs torch {TORCH_VERSION}: not replacing the torch above.",
                (
                    "To replace it (other code on this node may need that version): "
                    f"{_py()} -m torchspark.node setup --{mode}{flag} --replace-torch"
                ),
            ]
            return pl
        pl.notes.append(f"replace it with torch {TORCH_VERSION} (--replace-torch)")
    elif same:
        pl.notes.append(f"keep it (torch {TORCH_VERSION} is what torchspark needs)")
    if mode == "gpu":
        # torch with its CUDA wheels, the way pip resolves it; fills in what a lean one lacks.
        pl.notes.append(
            "install torch with its CUDA wheels (nvidia-*, triton: about 4.6 GB; "
            "pip adds only what is missing)"
        )
        pl.commands.append(_pip(f"torch=={TORCH_VERSION}"))
        return pl
    want = pins(PINS_IMPORT if import_torch else PINS_CPU)
    binary = {n: v for n, v in want.items() if n == "torch" or n.startswith("nvidia-")}
    if same:  # keep torch; add the CUDA libraries that are not installed or lack their files
        lacking = {_LIB_PACKAGE.get(name) for name, _ in t.missing}
        binary = {
            n: v for n, v in binary.items() if n != "torch" and (not _installed(n) or n in lacking)
        }
    what = "libtorch only" if not import_torch else "and what `import torch` needs"
    if binary:
        pl.notes.append(f"install without the CUDA wheels ({what}): " + ", ".join(binary))
        # pip skips a package whose metadata says the pinned version even when its files are
        # not there.
        again = ["--force-reinstall"] if any(_installed(n) == v for n, v in binary.items()) else []
        pl.commands.append(_pip("--no-deps", *again, *(f"{n}=={v}" for n, v in binary.items())))
    add = _pure_to_install(want)
    if add:
        pl.notes.append("install torch's pure-Python dependencies: " + ", ".join(add))
        # --no-deps: their own dependencies are pinned too, and pip's resolver would only
        # report torch's absent CUDA wheels as conflicts.
        pl.pure_step = len(pl.commands)
        pl.commands.append(_pip("--no-deps", *add))
    if not pl.commands:
        pl.notes.append("nothing to install")
    return pl


def _pure_to_install(want: dict[str, str]) -> list[str]:
    """torch's pure-Python dependencies to install: one already here that meets torch's own
    requirement (its METADATA) is kept, since other code may use it; a missing one comes at the
    tested pin."""
    floors = _torch_requires()
    out = []
    for n, v in want.items():
        if n == "torch" or n.startswith("nvidia-"):
            continue
        have = _installed(n)
        if have is None or not _meets(have, floors.get(n, "")):
            out.append(f"{n}=={v}")
    return out


def setup(
    mode: str = "auto",
    replace_torch: bool = False,
    import_torch: bool = False,
    dry_run: bool = False,
    check_only: bool = False,
    say=print,
) -> tuple[Plan | None, Report | None]:
    """Installs torch 2.13.0 for `mode` ("cpu", "gpu", "auto"), then checks the node.

    Returns (the plan, the report); no report on a dry run or a refusal."""
    if check_only:
        return None, check()
    pl = plan(mode, replace_torch, import_torch)
    say(pl.text())
    if pl.refused or dry_run:
        return pl, None
    cwd = None if sys.version_info >= (3, 11) else sys.prefix
    for i, cmd in enumerate(pl.commands):
        if i != pl.pure_step:
            say(f"  running: {shlex.join(cmd)}")
            subprocess.run(cmd, check=True, cwd=cwd)
    if pl.mode == "cpu":
        # The pure-Python step last, once torch's METADATA (now here) says what torch requires.
        add = _pure_to_install(pins(PINS_IMPORT if import_torch else PINS_CPU))
        if add:
            cmd = _pip("--no-deps", *add)
            say(f"  running: {shlex.join(cmd)}")
            subprocess.run(cmd, check=True, cwd=cwd)
    return pl, check()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m torchspark.node", description=__doc__.split("\n")[0]
    )
    p.add_argument("command", choices=["setup", "check"], nargs="?", default="check")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--cpu",
        dest="mode",
        action="store_const",
        const="cpu",
        help="setup: torch without its CUDA wheels (default on a node with no NVIDIA GPU)",
    )
    g.add_argument(
        "--gpu",
        dest="mode",
        action="store_const",
        const="gpu",
        help="setup: torch with its CUDA wheels (default on a node with an NVIDIA GPU)",
    )
    p.add_argument(
        "--import-torch",
        action="store_true",
        help="setup --cpu: also the CUDA libraries that `import torch` in Python needs",
    )
    p.add_argument(
        "--replace-torch",
        action="store_true",
        help="setup: replace a torch of another version (never done without this)",
    )
    p.add_argument("--dry-run", action="store_true", help="setup: print the plan, install nothing")
    p.add_argument("--check", action="store_true", help="with setup: only report, install nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    if a.command == "check":
        report = check()
    else:
        # With --json the plan goes to stderr: stdout holds only the report.
        say = (lambda m: print(m, file=sys.stderr, flush=True)) if a.json else print
        pl, report = setup(
            a.mode or "auto", a.replace_torch, a.import_torch, a.dry_run, a.check, say
        )
        if report is None:
            return 2 if pl is not None and pl.refused else 0
    print(json.dumps(report.as_dict()) if a.json else report.text())
    return 0 if report.ok else 1


# ---- doctor: the same check on every executor -----------------------------------------------


def _worker_check(_rows):
    import os as _os

    r = check()
    yield (r.host, _os.getppid(), json.dumps(r.as_dict()))


def doctor(spark, tasks_per_slot: int = 4, show: bool = True) -> list[dict]:
    """Runs the node check on the executors, from the driver, and prints a table.

    Two rows per executor host: `jvm` (the library inside the executor JVM, what ImageScorer
    and the SQL UDFs use; from the Scala twin `TorchSpark.doctor`) and `python` (Spark's Python
    workers, what mapPartitions/mapInArrow use). It runs a few tiny tasks per task slot and
    keeps one answer per executor; executors that ran none of them are listed as unreached.
    """
    from torchspark.cluster import task_slots

    n = max(2, task_slots(spark) * tasks_per_slot)
    rows: list[dict] = []
    jvm = spark.sparkContext._jvm
    for line in jvm.dev.torchspark.TorchSpark.doctorJson(spark._jsparkSession, n):
        rows.append(json.loads(line))
    seen = set()
    answers = spark.sparkContext.parallelize(range(n), n).mapPartitions(_worker_check).collect()
    for host, parent, report in answers:
        if (host, parent) in seen:
            continue
        seen.add((host, parent))
        d = json.loads(report)
        get = {c["name"]: c for c in d["checks"]}
        rows.append(
            {
                "side": "python",
                "host": host,
                "executor": f"python workers of pid {parent}",
                "libtorch": get.get("torch", {}).get("detail", "").split("libtorch at ")[-1],
                "isa": get.get("cpu", {}).get("detail", ""),
                "bf16": get.get("bf16", {}).get("detail", ""),
                "glibc": get.get("glibc", {}).get("detail", ""),
                "ok": d["ok"],
                "status": "; ".join(
                    f"{c['name']}: {c['detail']}" for c in d["checks"] if not c["ok"]
                )
                or "loaded, tiny model scores",
            }
        )
    if show:
        print(format_table(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    cols = ["side", "host", "executor", "libtorch", "isa", "bf16", "status"]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [min(60, max([len(c)] + [len(x[i]) for x in cells])) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*cols), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*(x[:60] for x in row)) for row in cells]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
