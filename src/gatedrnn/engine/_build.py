"""Build and load the fused C++ engine at first use (torch.utils.cpp_extension + ninja), cached per user.

The build directory is ``<cache>/fused-<key>`` where <cache> is $GATEDRNN_CACHE_DIR, else
$XDG_CACHE_HOME/gatedrnn, else ~/.cache/gatedrnn, and <key> hashes the C++ sources, the flags, the torch
and Python versions and the CPU's instruction-set flags (the code is compiled with -march=native, so a
cache shared between different machines must not reuse a build). A built library is imported directly,
without invoking ninja; a missing one is built under an exclusive file lock, so concurrent processes
(DDP ranks, pytest workers) build it once and never read a half-written file.

`load()` tries at most once per process. If the build fails it emits ONE warning and returns None; the
engine then runs the reference path.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the build still runs; concurrent first builds may race)
    fcntl = None

CSRC = Path(__file__).resolve().parent / "csrc"
CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-DNDEBUG")
LDFLAGS = ("-fopenmp",)

_module: Optional[ModuleType] = None
_error: Optional[str] = None
_attempted = False


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _sources() -> list[Path]:
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h"))


def build_key() -> str:
    """Hash of everything that changes the compiled library."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for part in (torch.__version__, sys.version, " ".join(CFLAGS + LDFLAGS), _cpu_flags()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("GATEDRNN_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gatedrnn"


def _import(name: str, library: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(library))
    spec = importlib.util.spec_from_file_location(name, str(library), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _compile(name: str, build_dir: Path) -> ModuleType:
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=name,
        sources=[str(p) for p in _sources() if p.suffix == ".cpp"],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        build_directory=str(build_dir),
        verbose=False,
    )


def _load_or_build() -> ModuleType:
    key = build_key()
    name = f"gatedrnn_fused_{key}"
    build_dir = cache_dir() / f"fused-{key}"
    library = build_dir / f"{name}.so"
    if library.exists():
        return _import(name, library)
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"fused-{key}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key: wait for it
        try:
            if library.exists():
                return _import(name, library)
            return _compile(name, build_dir)
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def load() -> Optional[ModuleType]:
    """The compiled engine module, or None (after one warning) when it cannot be built."""
    global _module, _error, _attempted
    if not _attempted:
        _attempted = True
        try:
            _module = _load_or_build()
        except Exception as exc:  # a compiler error, a missing toolchain, a locked-down home dir, ...
            _error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            warnings.warn(
                "gatedrnn: could not build the fused C++ engine, every layer runs on the slower reference "
                f"path ({_error}). Install a C++ compiler and ninja to enable it.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _module


def error() -> Optional[str]:
    """Why the last build attempt failed, or None."""
    return _error


def reset() -> None:
    """Forget the load attempt (tests use this to simulate a failed build)."""
    global _module, _error, _attempted
    _module, _error, _attempted = None, None, False
