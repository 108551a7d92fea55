"""Shared fixtures: PyTorch-made models and images, PyTorch's expected outputs, a real
local[2] SparkSession with the torchspark jar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "out"
sys.path.insert(0, str(ROOT / "python"))


def _ensure_fixtures() -> Path:
    if not all((FIXTURES / f).exists() for f in ("expected.json", "tuple_net_cuda.pt2")):
        # PyTorch makes them: .venv-spark35 has no torch and names the main venv's Python.
        python = os.environ.get("TORCHSPARK_FIXTURE_PYTHON", sys.executable)
        subprocess.run(
            [python, str(ROOT / "tests/fixtures/make_fixtures.py"), str(FIXTURES)],
            check=True,
        )
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return _ensure_fixtures()


def _ensure_general() -> Path:
    out = FIXTURES / "general"
    if not (out / "manifest.json").exists():  # written last: the others are complete
        python = os.environ.get("TORCHSPARK_FIXTURE_PYTHON", sys.executable)
        subprocess.run(
            [python, str(ROOT / "tests/fixtures/make_general_fixtures.py"), str(out)], check=True
        )
    return out


@pytest.fixture(scope="session")
def general() -> Path:
    """The four general-model proofs' models, specs, inputs and PyTorch's outputs."""
    return _ensure_general()


@pytest.fixture(scope="session")
def diabetes(general) -> dict:
    return json.loads((general / "diabetes.json").read_text())


@pytest.fixture(scope="session")
def expected(fixtures) -> dict[str, dict]:
    data = json.loads((fixtures / "expected.json").read_text())
    return {e["file"]: e for e in data["images"]}


@pytest.fixture(scope="session")
def model(fixtures) -> str:
    return str(fixtures / "resnet20.pt")


@pytest.fixture(scope="session")
def spark(fixtures):
    import torchspark

    s = torchspark.local_session(
        "local[2]",
        **{"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"},
    )
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


def tol(file: str) -> float:
    """JPEG decoders differ by a level here and there (see the README); lossless must match."""
    return 2e-2 if file.endswith(".jpg") else 1e-5


# ---- the cluster tests' data (tests/python/clusters) ------------------------------------------
# Kept here: a conftest module in the sub-folder would shadow this one for `from conftest import`.


@pytest.fixture(scope="session")
def cluster_images(fixtures) -> Path:
    out = fixtures / "cluster_images"
    if not (out / "truncated.png").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "tests/cluster/make_images.py"), str(out)], check=True
        )
    return out


@pytest.fixture(scope="session")
def oracle(cluster_images, model) -> dict[str, int | None]:
    """File name -> NativeModel's prediction in this process (None: a row error)."""
    from torchspark import NativeModel

    files = sorted(p for p in cluster_images.rglob("*") if p.is_file())
    out = NativeModel(model).score([p.read_bytes() for p in files]).to_pydict()
    assert sum(e is not None for e in out["error"]) == 1  # truncated.png
    return {
        p.name: (None if e else pred) for p, pred, e in zip(files, out["prediction"], out["error"])
    }


@pytest.fixture(scope="session")
def model_files(model) -> list[str]:
    return [model, model.replace(".pt", ".json")]
