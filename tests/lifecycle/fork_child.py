"""Forks after the engine started (as `multiprocessing` or DataLoader workers from a notebook
driver do): the parent has scored through a shared engine (workers, a decode pool of two
threads) and a per-task one (an OpenMP team on this thread), optionally while daemon threads
are still scoring, and has a batch in flight. Each child scores through both models and a new
one, finds the parent's batch refused with a clear error, and exits (through the exit handlers
with `sys.exit`, or `os._exit`). Exit status 0 when every child did all that; a child that
hangs is killed after 60 s and fails the run (docs/engine.md#lifecycle).

usage: fork_child.py MODEL PNG [SEED]
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

import numpy as np

from torchspark import NativeModel, TorchSparkError

model_path, png_path = sys.argv[1], sys.argv[2]
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else None)
png = open(png_path, "rb").read()
batch = [png] * 40 + [b"junk"]

shared = NativeModel(model_path, num_threads=2)
per_task = NativeModel(model_path, engine="per-task", num_threads=2)
reference = np.array(per_task.score(batch).column("probability").to_pylist()[:-1])
shared.score(batch)


def same(out) -> bool:
    got = np.array(out.column("probability").to_pylist()[:-1])
    return out.num_rows == len(batch) and bool(np.abs(got - reference).max() <= 1e-5)


def loop(model: NativeModel) -> None:
    while True:
        model.score(batch)


if rng.random() < 0.5:  # forks while other threads are in passes
    for m in (shared, per_task):
        threading.Thread(target=loop, args=(m,), daemon=True).start()
    time.sleep(rng.random() * 0.2)
before = shared.submit(batch, "score")


def child() -> int:
    ok = True
    for name, m in (("shared", shared), ("per-task", per_task)):
        if not same(m.score(batch)):
            print(f"child: {name}: wrong scores", file=sys.stderr)
            ok = False
    fresh = NativeModel(model_path, num_threads=2)
    ok &= same(fresh.score(batch))
    ok &= same(fresh.submit(batch, "score").result())
    try:
        before.result()
        print("child: the parent's batch came back in the child", file=sys.stderr)
        ok = False
    except TorchSparkError as e:
        if "was forked" not in str(e):
            print(f"child: the parent's batch: {e}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


for round in range(2):
    pid = os.fork()
    if pid == 0:
        try:
            code = child()
        except BaseException as e:  # noqa: BLE001  (any failure is the child's verdict)
            print(f"child: {e!r}", file=sys.stderr)
            code = 2
        if round == 0:
            sys.exit(code)  # through the exit handlers
        os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print(f"fork {round}: the child hung (killed after 60 s)", file=sys.stderr)
            sys.exit(4)
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        print(f"fork {round}: the child died of signal {os.WTERMSIG(status)}", file=sys.stderr)
        sys.exit(5)
    if os.WEXITSTATUS(status) != 0:
        print(f"fork {round}: the child exited {os.WEXITSTATUS(status)}", file=sys.stderr)
        sys.exit(6)
# The parent still works, and its batch still comes.
assert same(shared.score(batch)) and same(before.result())
print("ok", flush=True)
