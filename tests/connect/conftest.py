"""Local Spark Connect servers (127.0.0.1, free ports, stopped by pid): one started with the torchspark
jar, one without. The tests are their clients; the fixtures are tests/python's."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

import torchspark  # noqa: E402

# tests/python's fixtures (models, images, PyTorch's numbers), under a name of their own.
_spec = importlib.util.spec_from_file_location("python_conftest", ROOT / "tests/python/conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
fixtures, expected, model = _shared.fixtures, _shared.expected, _shared.model
general, diabetes = _shared.general, _shared.diabetes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`spark-submit --class ...SparkConnectServer`, as a user starts it (README)."""

    def __init__(self, log: Path, jar: str | None, conf: dict[str, str] | None = None) -> None:
        self.port, self.log = _free_port(), log
        submit = Path(sys.executable).parent / "spark-submit"
        cmd = [
            str(submit), "--master", "local[2]",
            "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--conf", f"spark.connect.grpc.binding.port={self.port}",
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.sql.files.openCostInBytes=8192",
        ]  # fmt: skip
        if jar:
            cmd += ["--jars", jar]
        for k, v in (conf or {}).items():
            cmd += ["--conf", f"{k}={v}"]
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
        env["TORCHSPARK_PYTHON"] = sys.executable
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [*cmd, "spark-internal"], stdout=self._out, stderr=subprocess.STDOUT, env=env
        )

    def wait_ready(self, timeout: float = 240) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Connect server exited; log: {self.log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return f"sc://127.0.0.1:{self.port}"
            time.sleep(0.5)
        raise RuntimeError(f"Connect server not listening after {timeout}s; log: {self.log}")

    def stop(self) -> None:
        self.proc.terminate()  # by pid; spark-submit's JVM runs the server in-process
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture(scope="session")
def servers(tmp_path_factory, general):
    logs = tmp_path_factory.mktemp("connect")
    # Both start at once (JVM start-up dominates); logs stay in pytest's tmp dir for failures.
    # The one with the jar starts as docs/sql-functions.md says: the extension, and a SQL
    # function from configuration alone.
    conf = {
        "spark.sql.extensions": "dev.torchspark.TorchSparkExtensions",
        "spark.torchspark.functions.diabetes": str(general / "diabetes_mlp.pt"),
    }
    with_jar = Server(logs / "with-jar.log", torchspark.jar_path(), conf)
    without = Server(logs / "without-jar.log", None)
    try:
        yield with_jar.wait_ready(), without.wait_ready()
    finally:
        with_jar.stop()
        without.stop()


@pytest.fixture(scope="session")
def spark(servers):
    from pyspark.sql import SparkSession

    s = SparkSession.builder.remote(servers[0]).getOrCreate()
    yield s
    s.stop()
