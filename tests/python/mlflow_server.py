"""A real MLflow tracking server for tests and benches: `mlflow server` with a SQLite backend
store on 127.0.0.1 at a free port, in its own process group (it forks uvicorn workers), stopped
by pid. Its log stays in the given folder and is shown when it fails to start."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(tmp: Path, *args: str):
    """Yields the server's URL; `args` go to `mlflow server` (e.g. `--default-artifact-root`).
    Raises RuntimeError, with the server's log, when it is not healthy within 120 s."""
    port = free_port()
    logf = open(tmp / "server.log", "wb")  # noqa: SIM115  (closed at teardown)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
           f"sqlite:///{tmp}/db.sqlite", *args,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow server did not start:\n{(tmp / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        logf.close()
