"""What a shared library needs from the C runtime, read from its ELF version references.

The glibc a `.so` needs is the newest `GLIBC_x.y` in its `.gnu.version_r` section (what
`objdump -T` shows as versioned imports). `make dist` tags the wheel with it, and the loaders
compare it with the node's glibc before loading, so that an old node gets "this node has glibc
X; torchspark needs Y" instead of a dynamic linker error.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

_SHT_GNU_VERNEED = 0x6FFFFFFE
_SHT_GNU_VERDEF = 0x6FFFFFFD


def version_needs(path: str | os.PathLike) -> dict[str, list[str]]:
    """{needed library: [version names]} of an ELF64 little-endian shared library."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not an ELF64 little-endian file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    out: dict[str, list[str]] = {}
    for _name, typ, _flags, _addr, off, _size, link, info, _align, _entsize in sections:
        if typ != _SHT_GNU_VERNEED:
            continue
        strtab = sections[link][4]

        def cstr(o: int, strtab: int = strtab) -> str:
            end = data.index(b"\0", strtab + o)
            return data[strtab + o : end].decode()

        entry = off
        for _ in range(info):
            _ver, cnt, file_, aux, nxt = struct.unpack_from("<HHIII", data, entry)
            names = out.setdefault(cstr(file_), [])
            a = entry + aux
            for _ in range(cnt):
                _hash, _fl, _other, name, anxt = struct.unpack_from("<IHHII", data, a)
                names.append(cstr(name))
                a += anxt
            if not nxt:
                break
            entry += nxt
    return out


def defined_versions(path: str | os.PathLike) -> list[str]:
    """The symbol versions a library defines (`GLIBCXX_3.4.29`, ...), from `.gnu.version_d`."""
    data = Path(path).read_bytes()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    out = []
    for _name, typ, _flags, _addr, off, _size, link, info, _align, _entsize in sections:
        if typ != _SHT_GNU_VERDEF:
            continue
        strtab = sections[link][4]
        entry = off
        for _ in range(info):
            _ver, _fl, _ndx, _cnt, _hash, aux, nxt = struct.unpack_from("<HHHHIII", data, entry)
            (name,) = struct.unpack_from("<I", data, entry + aux)
            end = data.index(b"\0", strtab + name)
            out.append(data[strtab + name : end].decode())
            if not nxt:
                break
            entry += nxt
    return out


_SHT_DYNAMIC = 6
_DT_NEEDED, _DT_RPATH, _DT_RUNPATH = 1, 15, 29


def dynamic(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(NEEDED libraries, RUNPATH or else RPATH entries) of an ELF64 little-endian library.

    Reads only the headers and the `.dynamic` and `.dynstr` sections: libtorch_cpu.so is 440 MB,
    and the node check reads it and its neighbours on every executor."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not an ELF64 little-endian file")
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        needed: list[str] = []
        rpath: list[str] = []
        runpath: list[str] = []
        for _name, typ, _flags, _addr, off, size, link, _info, _align, _entsize in sections:
            if typ != _SHT_DYNAMIC:
                continue
            f.seek(off)
            dyn = f.read(size)
            str_off, str_size = sections[link][4], sections[link][5]
            f.seek(str_off)
            strtab = f.read(str_size)

            def cstr(o: int, strtab: bytes = strtab) -> str:
                return strtab[o : strtab.index(b"\0", o)].decode()

            for i in range(0, len(dyn) - 15, 16):
                tag, val = struct.unpack_from("<qQ", dyn, i)
                if tag == 0:
                    break
                if tag == _DT_NEEDED:
                    needed.append(cstr(val))
                elif tag == _DT_RPATH:
                    rpath += cstr(val).split(":")
                elif tag == _DT_RUNPATH:
                    runpath += cstr(val).split(":")
    return needed, [d for d in (runpath or rpath) if d]


def node_libstdcxx() -> Path | None:
    """This node's libstdc++.so.6 (from the linker cache), or None."""
    import subprocess

    try:
        out = subprocess.run(
            ["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if "libstdc++.so.6 " in line and "x86-64" in line:
            return Path(line.rsplit("=>", 1)[1].strip())
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib"):
        if (Path(d) / "libstdc++.so.6").is_file():
            return Path(d) / "libstdc++.so.6"
    return None


def node_glibcxx() -> str | None:
    """The newest GLIBCXX version this node's libstdc++ provides, e.g. "3.4.30"."""
    lib = node_libstdcxx()
    return _newest(defined_versions(lib), "GLIBCXX_") if lib else None


def _newest(names: list[str], prefix: str) -> str | None:
    vs = [
        tuple(int(x) for x in m.group(1).split("."))
        for n in names
        if (m := re.fullmatch(re.escape(prefix) + r"([0-9.]+)", n))
    ]
    return ".".join(map(str, max(vs))) if vs else None


def glibc_needed(path: str | os.PathLike) -> str | None:
    """The newest glibc version the library references, e.g. "2.34"."""
    names = [n for ns in version_needs(path).values() for n in ns]
    return _newest(names, "GLIBC_")


def glibcxx_needed(path: str | os.PathLike) -> str | None:
    """The newest libstdc++ symbol version the library references, e.g. "3.4.30"."""
    return _newest(version_needs(path).get("libstdc++.so.6", []), "GLIBCXX_")


def node_glibc() -> str | None:
    """This node's glibc version ("2.36"), or None off glibc."""
    try:
        v = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    m = re.search(r"([0-9]+\.[0-9]+)", v)
    return m.group(1) if m else None


def older(a: str, b: str) -> bool:
    """Version `a` is older than `b`."""
    return tuple(map(int, a.split("."))) < tuple(map(int, b.split(".")))


if __name__ == "__main__":  # `python _elf.py LIB`: the glibc it needs (make writes LIB.glibc)
    import sys

    print(glibc_needed(sys.argv[1]) or "unknown")
