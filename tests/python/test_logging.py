"""The lifecycle log lines (docs/logging.md): Python `logging` under `torchspark.*` in this
process (caplog), and, in a local-mode Spark job, both the Python workers' lines and the JVM's
`dev.torchspark.*` lines in the log Spark writes (the process's stderr)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

from conftest import ROOT
from torchspark import NativeModel


def _fresh_mlp(general, tmp_path) -> str:
    """diabetes_mlp.pt and its spec in a new folder: a path this process has not loaded."""
    for f in ("diabetes_mlp.pt", "diabetes_mlp.json"):
        shutil.copy(general / f, tmp_path / f)
    return str(tmp_path / "diabetes_mlp.pt")


def _lines(caplog, logger: str, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and r.levelno == level and text in r.getMessage()
    ]


def test_native_model_logs_load_reload_and_engine_configuration_once(general, tmp_path, caplog):
    path = _fresh_mlp(general, tmp_path)
    with caplog.at_level(logging.DEBUG, logger="torchspark"):
        NativeModel(path).close()
        NativeModel(path).close()
    everything = "\n".join(r.getMessage() for r in caplog.records)
    loaded = _lines(caplog, "torchspark.model", logging.INFO, f"loaded model {path}")
    assert len(loaded) == 1, everything
    assert f"({os.path.getsize(path)} bytes)" in loaded[0]
    assert len(_lines(caplog, "torchspark.model", logging.DEBUG, "already loaded")) == 1
    engines = _lines(caplog, "torchspark.engine", logging.INFO, f"engine for {path}")
    assert len(engines) == 1, everything
    assert '"mode": "shared"' in engines[0]

    # The same bytes written again with a new time: the registry reloads, and the log says why.
    caplog.clear()
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with caplog.at_level(logging.DEBUG, logger="torchspark"):
        NativeModel(path).close()
    reloaded = _lines(caplog, "torchspark.model", logging.INFO, f"reloaded model {path}")
    assert len(reloaded) == 1 and "changed on disk" in reloaded[0], caplog.text


_JOB = """
import sys
from pyspark.sql import functions as F
import torchspark
from torchspark import TorchModel, predict_arrow

model = sys.argv[1]
spark = torchspark.local_session("local[1]", **{"spark.ui.enabled": "false"})
df = spark.range(40).select(F.array(*[F.lit(0.01 * i) for i in range(10)]).alias("features"))
fn, schema = predict_arrow(model, input_schema=df.schema, batch_size=8)
assert df.mapInArrow(fn, schema).count() == 40
assert TorchModel(modelPath=model).transform(df).count() == 40
spark.stop()
"""

_LOG4J2 = """
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c: %m%n
logger.torchspark.name = dev.torchspark
logger.torchspark.level = info
"""


def test_executor_side_events_reach_the_local_mode_log(general, tmp_path):
    path = _fresh_mlp(general, tmp_path)
    (tmp_path / "log4j2.properties").write_text(textwrap.dedent(_LOG4J2))
    (tmp_path / "job.py").write_text(_JOB)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    conf = f"-Dlog4j2.configurationFile=file:{tmp_path / 'log4j2.properties'}"
    env["PYSPARK_SUBMIT_ARGS"] = f'--driver-java-options "{conf}" pyspark-shell'
    p = subprocess.run(
        [sys.executable, str(tmp_path / "job.py"), path],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    log = p.stderr
    # The Python worker's lines (its stderr, which Spark copies into the executor's log) ...
    assert "INFO torchspark.native: loaded libtorchspark from" in log, log[-4000:]
    assert f"INFO torchspark.model: loaded model {path}" in log, log[-4000:]
    assert f"INFO torchspark.engine: engine for {path}" in log, log[-4000:]
    # ... and the JVM executor's, through Spark's log4j2.
    assert "INFO dev.torchspark.native: loaded libtorchspark from" in log, log[-4000:]
    assert f"INFO dev.torchspark.model: loaded model {path}" in log, log[-4000:]
    assert f"INFO dev.torchspark.engine: engine for {path}" in log, log[-4000:]
    # Lifecycle only: five batches in each job, no line per batch.
    assert log.count(f"torchspark.model: loaded model {path}") == 2, log[-4000:]
