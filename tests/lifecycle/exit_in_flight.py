"""Exits while calls are in flight: daemon threads score through a shared engine (passes on its
workers) and a per-task one (passes on the callers' threads, two OpenMP threads), batches stay
queued and uncollected, then the main thread ends the process. The exit status is the verdict
(tests/python/test_lifecycle.py, tools/stress.py): 0, or 3 for `sys.exit`; a signal or a hang
is the fault this guards against (docs/engine.md#lifecycle).

usage: exit_in_flight.py MODEL PNG {return,sys.exit,atexit-scores} [SEED]
"""

from __future__ import annotations

import atexit
import random
import sys
import threading
import time

model_path, png_path, how = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else None)
png = open(png_path, "rb").read()

if how == "atexit-scores":
    # Registered before the library loads, so it runs after the library's own atexit drain:
    # the exiting thread may still score (on its own thread, the workers are stopped).
    def _late() -> None:
        out = late.score([png, b"junk"])
        print(f"late score: {out.column('prediction').to_pylist()}", flush=True)

    atexit.register(_late)

from torchspark import NativeModel  # noqa: E402  (after the atexit handler above)

shared = NativeModel(model_path, num_threads=1)
per_task = NativeModel(model_path, engine="per-task", num_threads=2)
late = shared


def loop(model: NativeModel, rows: int) -> None:
    batch = [png] * rows + [b"junk"]
    while True:
        model.score(batch, batch_size=64)


for m, rows in ((shared, 40 + rng.randrange(100)), (per_task, 60), (shared, 16)):
    threading.Thread(target=loop, args=(m, rows), daemon=True).start()
# Queued and never collected (about a second of passes): the exit drops them.
pending = [shared.submit([png] * 256, "score", batch_size=256) for _ in range(4)]
time.sleep(0.05 + rng.random() * 0.4)
print("exiting", flush=True)
if how == "sys.exit":
    sys.exit(3)
