"""The Spark 3.5 line on a real cluster: a standalone master and one worker (2 cores) started from
.venv-spark35's pyspark 3.5, and a spark-submit of examples/score_images.py with the 3.5 jar
(torchspark-spark3.5_2.12) and the 3.5 venv's Python. That venv has no torch: the JVMs borrow
this venv's libtorch through TORCHSPARK_LIBTORCH_DIR, as on a node set up without pip's torch.

Every image comes out exactly once with NativeModel's prediction, and the one executor (two task
threads) loads the model once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from spark_clusters import EXAMPLE, ROOT, Standalone, check_rows, model_loads, read_parquet

pytestmark = pytest.mark.cluster

PY35 = os.environ.get("TORCHSPARK_SPARK35_PYTHON", str(ROOT / ".venv-spark35" / "bin" / "python"))


@pytest.fixture(scope="module")
def standalone35(request, tmp_path_factory):
    if not Path(PY35).exists():
        pytest.fail(f"{PY35} not found: `make setup` creates .venv-spark35 (pyspark 3.5)")
    probe = subprocess.run(
        [PY35, "-c", "import json, pyspark, torchspark; print(json.dumps("
         "[pyspark.__version__, pyspark.__file__, torchspark.jar_path()]))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    version, init, jar = json.loads(probe.stdout.strip().splitlines()[-1])
    assert version.startswith("3.5."), version
    assert "torchspark-spark3.5_2.12-" in jar, jar
    before = request.session.testsfailed
    c = None
    try:
        work = tmp_path_factory.mktemp("standalone35")
        libtorch = {"TORCHSPARK_LIBTORCH_DIR": str(Path(torch.__file__).parent / "lib")}
        line = {"spark_home": Path(init).parent, "python": PY35, "jar": jar, "env": libtorch}
        c = Standalone(work, workers=1, cores=2, **line)
        c.version = version
        yield c
    finally:
        if c is not None:
            kept = c.close(failed=request.session.testsfailed > before)
            if kept:
                print(f"Spark 3.5 standalone cluster logs kept in {kept}", file=sys.stderr)


def test_spark35_submit_on_standalone_scores_every_image_once(
    standalone35, spark, cluster_images, model_files, oracle, tmp_path
):
    out = tmp_path / "scores.parquet"
    log = standalone35.submit([EXAMPLE, cluster_images, "resnet20.pt", out], files=model_files)
    assert f"Running Spark version {standalone35.version}" in log
    assert "torchspark-spark3.5_2.12-" in log  # the 3.5 jar was the one added
    cols, rows = read_parquet(spark, str(out))
    assert cols == ["path", "prediction", "label", "probability", "error"]
    check_rows(rows, oracle, "Spark 3.5 Python example")
    assert model_loads(log) == 1  # one executor, two task threads, one load
