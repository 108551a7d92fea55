"""Fixtures shared by the cluster tests: their images and NativeModel's predictions on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from spark_clusters import ROOT


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
