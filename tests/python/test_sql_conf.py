"""SQL functions from configuration alone (docs/sql-functions.md): the venv's `bin/spark-sql`
with `spark.sql.extensions=dev.torchspark.TorchSparkExtensions` and
`spark.torchspark.functions.<name>=<model>`, nothing else, against PyTorch's numbers; a bad
key fails the session naming it; a model that cannot load fails its first call naming its key.
(Spark Connect: tests/connect/test_connect.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest

import torchspark

SPARK_SQL = Path(sys.executable).parent / "spark-sql"
FN = "spark.torchspark.functions"


def _spark_sql(cwd: Path, conf: dict[str, str], sql: str) -> subprocess.CompletedProcess:
    cmd = [str(SPARK_SQL), "--master", "local[1]", "--jars", torchspark.jar_path()]
    conf = {
        "spark.ui.enabled": "false",
        "spark.sql.extensions": "dev.torchspark.TorchSparkExtensions",
        "spark.sql.warehouse.dir": str(cwd / "warehouse"),
        # The CLI's Derby metastore and its log go to the test's folder.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={cwd}",
        **conf,
    }
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "TORCHSPARK_PYTHON": sys.executable}
    # This interpreter's Spark (the script's own lookup asks the `python3` on PATH).
    env["SPARK_HOME"] = os.path.dirname(pyspark.__file__)
    return subprocess.run(
        [*cmd, "-e", sql], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not SPARK_SQL.exists(), reason="this pyspark has no bin/spark-sql")
def test_spark_sql_calls_a_model_from_configuration_alone(general, diabetes, tmp_path):
    rows = "\n UNION ALL ".join(
        f"SELECT {i} AS id, array({', '.join(repr(float(v)) for v in x)}) AS x"
        for i, x in enumerate(diabetes["X"][:5])
    )
    sql = (
        f"SELECT id, diabetes(x).prediction FROM ({rows}) ORDER BY id;\n"
        "SELECT missing(array(1.0D));"
    )
    p = _spark_sql(
        tmp_path,
        {
            FN + ".diabetes": str(general / "diabetes_mlp.pt"),
            FN + ".diabetes.numThreads": "1",
            FN + ".missing": str(tmp_path / "nowhere.pt"),
        },
        sql,
    )
    got = [line.split("\t") for line in p.stdout.splitlines() if "\t" in line]
    assert [int(i) for i, _ in got] == list(range(5)), p.stdout + p.stderr[-3000:]
    for (_, pred), want in zip(got, diabetes["pred"][:5]):
        assert abs(float(pred) - want) <= 1e-5
    # The second statement: its model is not there; the error names the key and the file.
    assert p.returncode != 0
    assert f"SQL function missing ({FN}.missing={tmp_path / 'nowhere.pt'})" in p.stderr
    assert "not found" in p.stderr


@pytest.mark.skipif(not SPARK_SQL.exists(), reason="this pyspark has no bin/spark-sql")
def test_spark_sql_with_a_bad_function_key_fails_naming_it(general, tmp_path):
    p = _spark_sql(
        tmp_path,
        {FN + ".diabetes": str(general / "diabetes_mlp.pt"), FN + ".diabetes.threads": "2"},
        "SELECT 1",
    )
    assert p.returncode != 0
    assert f"{FN}.diabetes.threads: unknown option `threads`" in p.stderr, p.stderr[-3000:]
