"""ctypes binding of libtorchspark.so's C ABI (Arrow C Data Interface)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.machinery
import importlib.util
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from torchspark import _elf

_TORCH = "2.13.0"

_PKG = Path(__file__).resolve().parent
# The library and libtorch: found, loaded, from where (once per process; docs/logging.md).
log = logging.getLogger("torchspark.native")
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failure: BaseException | None = None


class ArrowSchema(ctypes.Structure):
    # Opaque storage for `struct ArrowSchema` (9 pointer-sized fields).
    _fields_ = [("_raw", ctypes.c_uint64 * 9)]


class ArrowArray(ctypes.Structure):
    # Opaque storage for `struct ArrowArray` (10 pointer-sized fields).
    _fields_ = [("_raw", ctypes.c_uint64 * 10)]


def library_path() -> Path:
    """The .so: $TORCHSPARK_LIB, the package's lib/, or a checkout's target/release."""
    candidates = []
    if os.environ.get("TORCHSPARK_LIB"):
        candidates.append(Path(os.environ["TORCHSPARK_LIB"]))
    candidates += [
        _PKG / "lib" / "libtorchspark.so",
        _PKG.parent.parent / "target" / "release" / "libtorchspark.so",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "libtorchspark.so not found (looked at: "
        + ", ".join(map(str, candidates))
        + "); run `make setup` or set TORCHSPARK_LIB"
    )


def _search_path() -> list[str]:
    """sys.path without the working directory: `python -c`, `-m`, `-` and notebooks put it
    first (as "" or as its absolute path), and a `torch` planted there (a shared or downloaded
    folder) must never be where torchspark loads native libraries from. Relative entries go
    too: they mean a folder under the working directory."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the working directory was removed
        cwd = None
    return [p for p in sys.path if p and os.path.isabs(p) and os.path.realpath(p) != cwd]


def installed_spec(name: str):
    """The module spec of the installed package `name`, without importing it: the one this
    process already imported, else the one found on `_search_path()` (never the working
    directory's), or None."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__spec__", None)
    return importlib.machinery.PathFinder.find_spec(name, _search_path())


def _imports_installed(name: str) -> bool:
    """Whether `import name` would load the installed package (`installed_spec`), not one that
    the working directory shadows it with."""
    if name in sys.modules:
        return True
    ours, theirs = installed_spec(name), importlib.util.find_spec(name)
    return bool(ours and theirs and ours.origin == theirs.origin)


def libtorch_dir() -> Path | None:
    """libtorch's lib/: $TORCHSPARK_LIBTORCH_DIR or the installed torch package (not imported;
    never a `torch` in the working directory)."""
    if os.environ.get("TORCHSPARK_LIBTORCH_DIR"):
        return Path(os.environ["TORCHSPARK_LIBTORCH_DIR"])
    spec = installed_spec("torch")
    if spec and spec.origin:
        d = Path(spec.origin).parent / "lib"
        if (d / "libtorch_cpu.so").is_file():
            return d
    return None


def _check_glibc(so: Path) -> None:
    need, have = _elf.glibc_needed(so), _elf.node_glibc()
    if need and have and _elf.older(have, need):
        raise OSError(f"this node has glibc {have}; torchspark needs {need}")
    need, have = _elf.glibcxx_needed(so), _elf.node_glibcxx()
    if need and have and _elf.older(have, need):
        raise OSError(f"this node's libstdc++ has GLIBCXX {have}; torchspark needs {need}")


def _import_torchvision_first() -> None:
    """Registers torchvision's ops, when torchvision is installed, before the .so can register
    its CPU `torchvision::nms`.

    torchspark registers that op at run time only when the dispatcher lacks it (scripted detectors
    need it); torchvision registers it statically, and a second registration of the same op
    aborts the process, so a later `import torchvision` in this worker would. Loading
    torchvision's `_C` through torch first (what `import torchvision` does; loading it again is a
    no-op) takes half the time of the whole import, paid once per worker process."""
    spec = installed_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    # Importing torch (or torchvision) runs its Python: only the installed one, never one the
    # working directory shadows it with.
    if not (_imports_installed("torch") and _imports_installed("torchvision")):
        return
    ops = [
        p
        for d in spec.submodule_search_locations
        for p in Path(d).glob("_C*.so")
        if p.name == "_C.so" or p.name.startswith("_C.")
    ]
    # A torchvision that fails to load registers nothing; it must not stop scoring.
    with contextlib.suppress(Exception):
        import torch

        if ops:
            torch.ops.load_library(str(ops[0]))
        else:
            import torchvision  # noqa: F401


def _libtorch_how(d: Path | None) -> str:
    """Where libtorch came from, for the log line."""
    if d is None:
        return "the library's RUNPATH (no libtorch directory found)"
    if os.environ.get("TORCHSPARK_LIBTORCH_DIR"):
        return f"{d} (TORCHSPARK_LIBTORCH_DIR)"
    return f"{d} (the torch package of {sys.executable})"


def lib() -> ctypes.CDLL:
    """Loads the library once per process; a failure is kept and raised again."""
    global _lib, _failure
    with _lock:
        if _lib is not None:
            return _lib
        if _failure is not None:
            raise _failure
        t0 = time.monotonic()
        d = None
        try:
            so_path = library_path()
            _check_glibc(so_path)
            _import_torchvision_first()
            d = libtorch_dir()
            if d is not None:
                for name in ("libc10.so", "libtorch_cpu.so"):
                    ctypes.CDLL(str(d / name), mode=ctypes.RTLD_GLOBAL)
            try:
                so = ctypes.CDLL(str(so_path))
            except OSError as e:
                if d is None:  # say what is missing rather than only the linker's words
                    raise OSError(
                        f"{e}; torch=={_TORCH} is not installed for {sys.executable} and "
                        "TORCHSPARK_LIBTORCH_DIR is not set (pip install 'torchspark[torch]')"
                    ) from e
                raise
        except OSError as e:
            from torchspark.errors import ModelLoadError

            _failure = ModelLoadError(
                f"cannot load the torchspark native library on host {socket.gethostname()}: {e}"
            )
            log.error("%s", _failure)
            raise _failure from e
        log.info(
            "loaded libtorchspark from %s on host %s in %.2f s; libtorch from %s",
            so_path,
            socket.gethostname(),
            time.monotonic() - t0,
            _libtorch_how(d),
        )
        u64, i32, cp = ctypes.c_uint64, ctypes.c_int32, ctypes.c_char_p
        errp = ctypes.POINTER(ctypes.c_void_p)
        so.ts_open.argtypes = [cp, ctypes.POINTER(u64), errp]
        so.ts_open.restype = i32
        so.ts_close.argtypes = [u64]
        so.ts_close.restype = None
        so.ts_describe.argtypes = [cp, ctypes.POINTER(ArrowSchema), errp]
        so.ts_describe.restype = i32
        # The schema of a preset (score, featurize, predict, embed): docs/internals.md.
        so.ts_describe_preset.argtypes = [cp, cp, ctypes.POINTER(ArrowSchema), errp]
        so.ts_describe_preset.restype = i32
        so.ts_load_count.argtypes = []
        so.ts_load_count.restype = u64
        so.ts_string_free.argtypes = [ctypes.c_void_p]
        so.ts_string_free.restype = None
        so.ts_panic_for_test.argtypes = [errp]
        so.ts_panic_for_test.restype = i32
        # The engine (docs/engine.md): submit a batch, collect its result later.
        so.ts_submit.argtypes = [
            u64,
            i32,
            cp,
            ctypes.POINTER(ArrowArray),
            ctypes.POINTER(ArrowSchema),
            u64,
            ctypes.POINTER(u64),
            errp,
        ]
        so.ts_submit.restype = i32
        so.ts_collect.argtypes = [
            u64,
            u64,
            ctypes.POINTER(ArrowArray),
            ctypes.POINTER(ArrowSchema),
            ctypes.POINTER(i32),
            errp,
        ]
        so.ts_collect.restype = i32
        so.ts_discard.argtypes = [u64]
        so.ts_discard.restype = None
        so.ts_cancel_task.argtypes = [u64, u64]
        so.ts_cancel_task.restype = u64
        so.ts_engine_stats.argtypes = [u64, errp, errp]
        so.ts_engine_stats.restype = i32
        so.ts_auto_batch_size.argtypes = [u64]
        so.ts_auto_batch_size.restype = u64
        so.ts_shutdown.argtypes = []
        so.ts_shutdown.restype = u64
        # Python's atexit handlers run before any C++ static destructor (libtorch's among
        # them): the engines drain here, while daemon threads may still be in a call
        # (docs/engine.md#lifecycle). Registered after the library, so it runs before handlers
        # registered earlier; scoring from this thread still works afterwards.
        atexit.register(so.ts_shutdown)
        _lib = so
        return so


def take_error(so: ctypes.CDLL, err: ctypes.c_void_p) -> str:
    if not err.value:
        return "unknown native error"
    try:
        return ctypes.string_at(err.value).decode("utf-8", "replace")
    finally:
        so.ts_string_free(err.value)
