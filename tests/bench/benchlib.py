"""Helpers the side-by-side benches share: progress lines, wall-clock timing, what the CPU has."""

from __future__ import annotations

import time
from pathlib import Path


def log(msg: str) -> None:
    print(msg, flush=True)


def timed(fn) -> float:
    """Seconds of wall-clock time `fn()` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from the first processor in /proc/cpuinfo."""
    flags: set[str] = set()
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
    return model, flags
