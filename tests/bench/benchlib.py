"""Helpers the side-by-side benches share: progress lines, wall-clock timing, what the CPU has."""

from __future__ import annotations

import time


def log(msg: str) -> None:
    print(msg, flush=True)


def timed(fn) -> float:
    """Seconds of wall-clock time `fn()` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from /proc/cpuinfo (torchspark.node's readers)."""
    from torchspark.node import cpu_flags, cpu_model

    return cpu_model(), cpu_flags()


# ---- issue 19: the engine, SQL functions, targets ----------------------------------------------


def with_engine(transformer, engine: str):
    """`transformer` with its `engine` param ("shared" | "per-task") set, or None when this
    build's transformers have no such param (a jar from before the engine)."""
    if not transformer.hasParam("engine"):
        return transformer if engine == "shared" else None
    return transformer.copy({transformer.getParam("engine"): engine})


def register_sql(spark, name: str, model: str, engine: str | None = None) -> bool:
    """Registers the SQL functions for `model` (torchspark.register_udfs); False when this jar
    cannot take the engine asked for."""
    import torchspark
    from torchspark.errors import ConfigError

    try:
        torchspark.register_udfs(spark, name, model, engine=engine)
    except ConfigError as e:
        log(f"  ({name}: {e})")
        return False
    return True


def verdict(name: str, value: float, target: str) -> tuple[str, float, str, str]:
    """(name, value, target, "met" | "NOT MET" | "") for a target written ">= x", "<= x" or
    "" (reported only), printed as one line."""
    met = ""
    if target:
        bound = float(target.split()[-1].rstrip("x"))
        ok = value >= bound if target.startswith(">") else value <= bound
        met = "met" if ok else "NOT MET"
    log(f"  {name:<76} {value:7.2f}   {target:<8} {met}")
    return name, value, target, met
