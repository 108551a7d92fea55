"""The process around the native library (docs/engine.md#lifecycle), through the documented
Python API: a NativeModel closed while other threads are in calls on it, a fork after the engine
started, scripts that exit with calls in flight. A script's exit status is its verdict: a
signal, an unexpected status or a hang fails, whatever it printed. `TORCHSPARK_LIFECYCLE_RUNS`
raises the number of scripts each test runs (`make stress`)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import ROOT
from torchspark import ConfigError, NativeModel, TorchSparkError

SCRIPTS = ROOT / "tests" / "lifecycle"


def _runs(default: int) -> int:
    return int(os.environ.get("TORCHSPARK_LIFECYCLE_RUNS") or default)


def run_script(args: list[str], expect: int = 0, timeout: float = 180) -> str:
    """Runs a Python script in its own process; fails on a signal, another exit status or a
    hang (killed after `timeout` s). Returns its stdout."""
    try:
        p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args}: hung, killed after {timeout} s\n{e.stderr}")
    if p.returncode < 0:
        pytest.fail(f"{args}: killed by {signal.Signals(-p.returncode).name}\n{p.stderr}")
    assert p.returncode == expect, f"{args}: exit status {p.returncode}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def png(fixtures) -> bytes:
    return (fixtures / "images" / "digit_00_label0.png").read_bytes()


def test_closing_a_model_while_a_thread_pool_uses_it_is_safe(model, png):
    """`with NativeModel(p) as m:` feeding a thread pool that outlives the block, 150 times
    (shared and per-task engines): each call returns PyTorch's rows, or raises a TorchSparkError
    saying the model is closed or the call was cancelled; nothing crashes, nothing is scored
    wrong."""
    batch = [png] * 3 + [b"junk"]
    with NativeModel(model, engine="per-task", num_threads=1) as m:
        reference = np.array(m.score(batch, batch_size=2).column("probability").to_pylist()[:3])
    rng = random.Random(25)
    outcomes = {"scored": 0, "closed": 0, "cancelled": 0}
    with ThreadPoolExecutor(4) as pool:
        for round in range(150):
            engine = "per-task" if round % 3 == 2 else "shared"
            with NativeModel(model, engine=engine, num_threads=1) as m:
                futures = [pool.submit(m.score, batch, batch_size=2) for _ in range(6)]
                time.sleep(rng.random() * 0.003)
            for f in futures:
                try:
                    out = f.result(timeout=60)
                except TorchSparkError as e:
                    kind = re.search(r"closed|not open|cancelled", str(e))
                    assert kind, f"round {round}: {e}"
                    outcomes["cancelled" if kind[0] == "cancelled" else "closed"] += 1
                    continue
                got = np.array(out.column("probability").to_pylist()[:3])
                assert out.column("error").null_count == 3, round
                assert np.abs(got - reference).max() <= 1e-5, round
                outcomes["scored"] += 1
    assert outcomes["scored"] and outcomes["closed"], outcomes
    # After the close, every call says so (in Python, before the native handle is read).
    with pytest.raises(ConfigError, match="closed"):
        m.score(batch)
    m.close()  # twice: nothing


def test_closing_a_model_races_its_calls_without_the_python_check(model, png):
    """The native side alone: a handle closed while threads call it through the C ABI (the
    `_handle` a thread read before another closed it) gives an error naming the handle."""
    batch = [png] * 3
    errors = []
    for _ in range(40):
        m = NativeModel(model, num_threads=1)
        stale = m._handle
        m.close()
        m._handle = stale  # a call that read the handle before the close
        with pytest.raises(ConfigError, match=rf"model handle {stale} is not open") as e:
            m.score(batch)
        errors.append(str(e.value))
        m._handle = 0
    assert len(set(errors)) == 40, "handle ids are never reused"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_forked_children_score_after_the_engine_started(model, png):
    """A fork after the engine, its decode pool and an OpenMP team started (sometimes while
    threads are in passes): each child scores through every path within a minute, refuses the
    parent's in-flight batch clearly, and exits; the parent goes on (tests/lifecycle)."""
    for seed in range(_runs(1)):
        out = run_script([str(SCRIPTS / "fork_child.py"), model, _png_path(model), str(seed)])
        assert out.strip().endswith("ok"), out


def _png_path(model: str) -> str:
    return os.path.join(os.path.dirname(model), "images", "digit_00_label0.png")


@pytest.mark.parametrize("how,status", [("return", 0), ("sys.exit", 3), ("atexit-scores", 0)])
def test_script_exits_cleanly_with_calls_in_flight(model, how, status):
    """A short script whose daemon threads are inside forward passes (engine workers and their
    own threads) and whose batches are still queued when it exits: exit status 0 (3 for
    `sys.exit(3)`), no signal, no hang; an `atexit` handler registered before the library can
    still score."""
    for seed in range(_runs(1)):
        out = run_script(
            [str(SCRIPTS / "exit_in_flight.py"), model, _png_path(model), how, str(seed)],
            expect=status,
        )
        assert "exiting" in out, out
        if how == "atexit-scores":
            assert "late score: [" in out, out
