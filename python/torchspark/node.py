"""Node set-up and checks: `python -m torchspark.node setup | check`.

Managed clusters (HDInsight script actions, EMR bootstrap actions, Dataproc initialization
actions) run one command on every node, head and workers:

    python3 -m pip install torchspark-<version>-<tag>.whl && python3 -m torchspark.node setup

`setup` installs `torch==2.13.0` into this Python if it is missing or another version, then
checks the node; `check` (or `setup --check`) only checks. The check prints one screen: host,
CPU instruction sets, glibc against what the library needs, where libtorch was found, that the
library loads, and that a tiny bundled model scores the expected numbers. It exits 1 if any
check fails. `torchspark.doctor(spark)` runs the same check on every executor.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TORCH_VERSION = "2.13.0"
_DATA = Path(__file__).resolve().parent / "data"


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
        f"node has GLIBCXX {cxx_have or 'none'}; torchspark needs {cxx_need} (GCC 11's or newer)",
    )
    glibc_ok = glibc_ok and cxx_ok

    try:
        from importlib.metadata import version

        tv = version("torch")
    except ImportError:  # importlib.metadata.PackageNotFoundError
        tv = None
    libtorch = _native.libtorch_dir()
    r.add(
        "torch",
        tv == TORCH_VERSION and libtorch is not None,
        f"torch {tv or 'not installed'} (needs {TORCH_VERSION}); libtorch at {libtorch}",
    )
    if not glibc_ok:
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


def setup(check_only: bool = False) -> Report:
    """Installs torch==2.13.0 here when it is missing or another version, then checks."""
    if not check_only:
        try:
            from importlib.metadata import version

            have = version("torch")
        except ImportError:  # importlib.metadata.PackageNotFoundError
            have = None
        if have != TORCH_VERSION:
            print(f"installing torch=={TORCH_VERSION} (found {have}) into {sys.executable}")
            subprocess.run(
                # -P: not a `pip` in the working directory (`-m` would put it first).
                [sys.executable, "-P", "-m", "pip", "install", f"torch=={TORCH_VERSION}"],
                check=True,
            )
    return check()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m torchspark.node", description=__doc__.split("\n")[0]
    )
    p.add_argument("command", choices=["setup", "check"], nargs="?", default="check")
    p.add_argument("--check", action="store_true", help="with setup: only report, install nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    report = setup(check_only=a.check) if a.command == "setup" else check()
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
