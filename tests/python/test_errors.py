"""Missing or broken models, specs and devices: torchspark's own error classes, naming the path
and the host, on every path (NativeModel with and without Spark, the Python workers, the
transformers, the SQL UDFs), and raised on the driver before any job where the driver can know."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import torchspark
from torchspark import (
    DeviceError,
    ImageFeaturizer,
    ImageScorer,
    InputError,
    ModelLoadError,
    ModelSpecError,
    NativeModel,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
BROKEN = '{"input": {"height": 32, "width": 32'  # cut off: not JSON


def _model_with(tmp_path: Path, model: str, spec: str | None) -> str:
    """A copy of the fixture model in a folder of its own with `spec` beside it (None: none)."""
    shutil.copy(model, tmp_path / "m.pt")
    if spec is not None:
        (tmp_path / "m.json").write_text(spec)
    return str(tmp_path / "m.pt")


def _jobs(spark) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup())


def _before_any_job(spark, cls, match, f, *args):
    """`f(*args)` raises `cls` (message matching `match`) and no Spark job ran."""
    before = _jobs(spark)
    with pytest.raises(cls, match=match) as e:
        f(*args)
    assert _jobs(spark) == before, "a Spark job ran"
    return e.value


def _images(spark, fixtures):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "digit_0*.png")
        .load(str(fixtures / "images"))
    )


# ---- NativeModel, no Spark ---------------------------------------------------------------------


def test_missing_model_without_spark_is_a_model_load_error_naming_path_and_host(tmp_path):
    # Its own interpreter: no SparkContext has ever existed there (pyspark's SparkFiles asserts).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from torchspark import NativeModel, ModelLoadError\n"
        "for p in ('missing.pt', sys.argv[2]):\n"
        "    try:\n"
        "        NativeModel(p)\n"
        "    except ModelLoadError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "python"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"ModelLoadError model file missing.pt not found on host {HOST}")
    assert lines[1].startswith(f"ModelLoadError model file {tmp_path} is not a file"), lines


def test_missing_and_broken_specs_are_spec_errors_naming_the_spec(tmp_path, model):
    m = _model_with(tmp_path, model, None)
    with pytest.raises(ModelSpecError, match=f"model spec {tmp_path}/m.json: cannot read"):
        NativeModel(m)
    (tmp_path / "m.json").write_text(BROKEN)
    with pytest.raises(ModelSpecError, match=f"model spec {tmp_path}/m.json"):
        NativeModel(m)


def test_devices_that_are_not_here_are_device_errors_naming_the_host(model):
    with pytest.raises(DeviceError, match=r"device `gpu`: expected `cpu`, `cuda` or `cuda:N`"):
        NativeModel(model, device="gpu")
    with pytest.raises(DeviceError, match=rf"`cuda:0`: libtorch sees no CUDA.*on host {HOST}"):
        NativeModel(model, device="cuda:0")


# ---- with a SparkSession -----------------------------------------------------------------------


def test_missing_model_with_spark_is_a_model_load_error(spark):
    with pytest.raises(ModelLoadError, match=f"model file missing.pt not found on host {HOST}"):
        NativeModel("missing.pt")


def test_python_worker_functions_check_model_and_spec_on_the_driver(spark, model, tmp_path):
    m, spec = _model_with(tmp_path, model, None), f"model spec {tmp_path}/m.json"
    for make in (torchspark.score_arrow, torchspark.score_partitions):
        (tmp_path / "m.json").unlink(missing_ok=True)
        _before_any_job(spark, ModelLoadError, "model file /no/such/m.pt not found", make, "/no/such/m.pt")  # fmt: skip
        _before_any_job(spark, ModelSpecError, f"{spec}: cannot read", make, m)
        (tmp_path / "m.json").write_text(BROKEN)
        _before_any_job(spark, ModelSpecError, f"{spec}: not JSON", make, m)
        (tmp_path / "m.json").write_text("[]")
        _before_any_job(spark, ModelSpecError, f"{spec}: must be a JSON object", make, m)


def test_python_worker_failures_come_back_as_their_class(spark, fixtures, model):
    # Only the worker knows its GPU: the task fails there and the action raises DeviceError.
    df = _images(spark, fixtures).select("path", "content")
    arrow = torchspark.score_arrow(model, device="cuda:0")
    with pytest.raises(DeviceError, match=rf"`cuda:0`: libtorch sees no CUDA.*on host {HOST}"):
        df.mapInArrow(arrow, torchspark.SCORE_SCHEMA).collect()
    rows = torchspark.score_partitions(model, device="cuda:0")
    with pytest.raises(DeviceError, match=rf"`cuda:0`: libtorch sees no CUDA.*on host {HOST}"):
        df.rdd.mapPartitions(rows).collect()


# ---- the JVM transformers and the SQL UDFs -----------------------------------------------------


@pytest.mark.parametrize("cls", [ImageScorer, ImageFeaturizer])
def test_transformers_check_model_spec_and_device_on_the_driver(
    spark, fixtures, model, tmp_path, cls
):
    df, spec = _images(spark, fixtures), f"model spec {tmp_path}/m.json"
    missing = cls(inputCol="content", modelPath="/no/such/dir/m.pt")
    _before_any_job(spark, ModelLoadError, f"model file /no/such/dir/m.pt not found on host {HOST}", missing.transform, df)  # fmt: skip
    no_spec = cls(inputCol="content", modelPath=_model_with(tmp_path, model, None))
    _before_any_job(spark, ModelSpecError, f"{spec}: cannot read", no_spec.transform, df)
    (tmp_path / "m.json").write_text(BROKEN)
    _before_any_job(spark, ModelSpecError, spec, no_spec.transform, df)
    gpu = cls(inputCol="content", modelPath=model, device="cuda:0")
    e = _before_any_job(spark, DeviceError, rf"`cuda:0`: libtorch sees no CUDA.*on host {HOST}", gpu.transform, df)  # fmt: skip
    assert "Py4J" not in str(e) and "An error occurred while calling" not in str(e)
    with pytest.raises(DeviceError, match="device `gpu`: expected `cpu`, `cuda` or `cuda:N`"):
        cls(modelPath=model, inputCol="content", device="gpu")
    with pytest.raises(DeviceError, match="device `gpu`"):
        cls(modelPath=model, inputCol="content").setDevice("gpu")


def test_sql_udf_registration_checks_on_the_driver(spark, model, tmp_path):
    reg = torchspark.register_udfs
    _before_any_job(spark, ModelLoadError, "model file /no/such/m.pt not found", reg, spark, "u", "/no/such/m.pt")  # fmt: skip
    m = _model_with(tmp_path, model, BROKEN)
    _before_any_job(spark, ModelSpecError, f"model spec {tmp_path}/m.json", reg, spark, "u", m)
    _before_any_job(spark, DeviceError, "device `gpu`", reg, spark, "u", model, "gpu")
    _before_any_job(spark, DeviceError, f"no CUDA device.*on host {HOST}", reg, spark, "u", model, "cuda:0")  # fmt: skip


def test_a_failed_task_raises_torchsparks_class_not_py4j(spark, fixtures, model, tmp_path):
    for p in sorted((fixtures / "images").glob("digit_0*.png"))[:2]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    df = spark.read.format("binaryFile").load(str(tmp_path))
    with pytest.raises(
        InputError,
        match=r"row \d+: input `image` \(column content\): (invalid|truncated) PNG.*zz_bad\.png",
    ) as e:
        ImageScorer(modelPath=model, inputCol="content").transform(df).count()
    assert "dev.torchspark.InputException" in str(e.value.java_exception.toString())
