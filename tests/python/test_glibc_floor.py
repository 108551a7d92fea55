"""The shipped library asks no more of a node's C runtime than torch does: glibc 2.28 and torch's
own libstdc++ symbol versions (rust/ffi/compat/glibc_2_28.c, docs/install-glibc.md), so that it
loads on RHEL 8, Ubuntu 20.04 and Debian 11 beside torch's wheel. Checked on the library that
make builds and ships (the package's lib/, else target/release) by its ELF version needs, and
run for real under Debian 11's glibc 2.31 and libstdc++ (older than the build machine's), where
it must load and score like PyTorch."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from torchspark import _elf, _native

FLOOR = "2.28"  # torch 2.13's wheels: manylinux_2_28
CACHE = ROOT / "tests" / "fixtures" / "cache" / "debian11-runtime"
DEBIAN11 = ("libc6", "libstdc++6", "libgcc-s1", "libgomp1")


def _torch_lib() -> Path:
    d = _native.libtorch_dir()
    assert d is not None, "torch is not installed for this Python"
    return d


def test_library_needs_no_glibc_newer_than_torchs_floor():
    so = _native.library_path()
    needs = _elf.version_needs(so)
    versions = {
        lib: [m.group(1) for v in vs if (m := re.fullmatch(r"GLIBC_([0-9.]+)", v))]
        for lib, vs in needs.items()
    }
    assert versions.get("libc.so.6"), (so, needs)
    too_new = {lib: [v for v in vs if _elf.older(FLOOR, v)] for lib, vs in versions.items()}
    assert not any(too_new.values()), (so, too_new)


def test_library_needs_no_libstdcxx_newer_than_torchs():
    so, tl = _native.library_path(), _torch_lib()
    torch_needs = [
        v
        for f in ("libtorch_cpu.so", "libc10.so")
        for v in _elf.version_needs(tl / f).get("libstdc++.so.6", [])
    ]
    for prefix in ("GLIBCXX_", "CXXABI_"):
        ours = _elf._newest(_elf.version_needs(so).get("libstdc++.so.6", []), prefix)
        theirs = _elf._newest(torch_needs, prefix)
        assert ours and theirs
        assert not _elf.older(theirs, ours), f"{so} needs {prefix}{ours}, torch {prefix}{theirs}"


def _debian11_runtime() -> Path:
    """Debian 11's libc6 (glibc 2.31), libstdc++6, libgcc-s1 and libgomp1 (GCC 10), unpacked
    once into the fixture cache; apt-get with its own lists, leaving the system's alone."""
    root = CACHE / "root"
    if (CACHE / ".done").exists():
        return root
    apt = CACHE / "apt"
    for d in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / d).mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    sources.write_text(
        f"deb [signed-by={keyring}] http://deb.debian.org/debian bullseye main\n"
        f"deb [signed-by={keyring}] http://security.debian.org/debian-security bullseye-security main\n"
    )
    opts = [
        f"-oDir::Etc::sourcelist={sources}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::Cache={apt / 'cache'}",
        "-oDir::State::status=/dev/null",
        "-oAPT::Sandbox::User=root",
    ]
    subprocess.run(["apt-get", *opts, "-q", "update"], check=True, capture_output=True)
    subprocess.run(
        ["apt-get", *opts, "-q", "download", *DEBIAN11],
        check=True,
        capture_output=True,
        cwd=apt / "debs",
    )
    root.mkdir(exist_ok=True)
    for deb in (apt / "debs").glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (CACHE / ".done").write_text("\n".join(sorted(p.name for p in (apt / "debs").iterdir())))
    return root


@pytest.mark.timeout(300)
def test_library_scores_under_debian11_glibc_and_libstdcxx(tmp_path, fixtures, expected):
    root = _debian11_runtime()
    libs = [root / "lib/x86_64-linux-gnu", root / "usr/lib/x86_64-linux-gnu"]
    ld = libs[0] / "ld-linux-x86-64.so.2"
    # Really older than the build machine's: what the library must not need.
    # (glibc 2.31 added no symbol version: its newest is GLIBC_2.30.)
    assert _elf._newest(_elf.defined_versions(libs[0] / "libc.so.6"), "GLIBC_") == "2.30"
    cxx = _elf.defined_versions(libs[1] / "libstdc++.so.6")
    assert _elf._newest(cxx, "GLIBCXX_") == "3.4.28"
    # The smoke program itself is pinned to old symbol versions the same way as the library.
    smoke = tmp_path / "smoke"
    subprocess.run(
        [
            "cc", "-O1", "-o", str(smoke),
            str(ROOT / "tests/glibc/old_runtime_smoke.c"),
            str(ROOT / "rust/ffi/compat/glibc_2_28.c"),
            "-Wl,--no-as-needed", "-l:libdl.so.2", "-l:libpthread.so.0", "-Wl,--as-needed",
            "-lm", "-Wl,--gc-sections",
        ],
        check=True,
    )  # fmt: skip
    pngs = sorted((fixtures / "images").glob("*.png"))[:8]
    so = _native.library_path()
    run = subprocess.run(
        [str(ld), "--library-path", ":".join(map(str, libs)), str(smoke), str(_torch_lib()),
         str(so), str(fixtures / "resnet20.pt"), *map(str, pngs)],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("version "), lines
    rows = [ln.split() for ln in lines[1:]]
    assert len(rows) == len(pngs), run.stdout
    for png, (label, prob) in zip(pngs, rows):
        want = expected[png.name]["resnet20"]["probability"]
        best = max(range(len(want)), key=want.__getitem__)
        assert int(label) == best, (png.name, label, best)
        assert abs(float(prob) - want[best]) < 1e-5, (png.name, prob, want[best])
