"""Build and load the fused C++ engine at first use (torch.utils.cpp_extension + ninja), cached per user.

Layout of the cache (<cache> is $GATEDRNN_CACHE_DIR, else $XDG_CACHE_HOME/gatedrnn, else ~/.cache/gatedrnn):

    <cache>/fused-<key>.lock              the build lock (opened without following links)
    <cache>/fused-<key>/<name>.so         the library that is imported (<name> = gatedrnn_fused_<key>)
    <cache>/fused-<key>/<name>.json       its size and sha256, recorded at build time
    <cache>/fused-<key>/build/            ninja's folder (object files, build.ninja)
    <cache>/fused-<key>/build.log         the whole output of the last failed build

<key> hashes the C++ sources, the flags (`gatedrnn.engine._flags`: per architecture, native by default,
GATEDRNN_ISA for another x86-64 level), the torch and Python versions and the CPU's instruction-set flags
(a native build must not be reused by another CPU sharing the cache).

Safety rules, each one a failure seen in practice:
- The cache folders must belong to this user and not be writable by group or others; otherwise
  anyone could plant a library at the predictable name. Such a folder is refused with a message.
- The library is only ever replaced whole: ninja links inside build/, the result is copied to a
  temporary name, its size and sha256 are recorded, and it is renamed into place, all under the lock.
- A library is imported only after its size and sha256 match the record (a truncated library would
  kill the process with SIGBUS at import); a mismatch or a missing record means a rebuild.
- `load()` builds at most once per process; other threads wait for the result (they do not silently
  run the reference path meanwhile). A failed build emits ONE warning quoting the first compiler error
  (the whole log stays in build.log) and the engine then runs the reference path.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import stat
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import torch

from gatedrnn.engine._flags import LDFLAGS, compile_flags, cpu_features

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the build still runs; concurrent first builds may race)
    fcntl = None

CSRC = Path(__file__).resolve().parent / "csrc"
# GATEDRNN_BACKEND: "" or "auto" or "fused" use the fused engines where they apply (C++ on the CPU; on CUDA torch's
# cuDNN op for a plain layer, the Triton kernels for traces, noise and gatedrnn's own cells);
# "reference" forces the reference path everywhere; "triton" runs the Triton kernels on any device (on CPU tensors
# under TRITON_INTERPRET=1, Triton's interpreter: how the tests check them without a GPU). Anything else raises
# BackendSettingError.
BACKENDS = ("auto", "fused", "reference", "triton")

_module: Optional[ModuleType] = None
_error: Optional[str] = None
_attempted = False
_lock = threading.Lock()  # one build per process: other threads wait on it


class BuildError(RuntimeError):
    """Why the engine could not be built or loaded, in one line that names the cause."""


class BackendSettingError(ValueError):
    """GATEDRNN_BACKEND holds a value that is not one of BACKENDS."""


def requested_backend() -> str:
    """GATEDRNN_BACKEND, read now: "auto" (also for unset, empty and "fused"), "reference" or "triton"."""
    raw = os.environ.get("GATEDRNN_BACKEND", "")
    if not raw:  # unset: the common case, read at every layer call
        return "auto"
    value = raw.strip().lower() or "auto"
    if value not in BACKENDS:
        raise BackendSettingError(f"GATEDRNN_BACKEND={raw!r} is not understood; expected one of "
                                  f"{', '.join(BACKENDS)} (or unset)")
    return "auto" if value == "fused" else value


def _sources() -> list[Path]:
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h"))


def build_key() -> str:
    """Hash of everything that changes the compiled library."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for part in (torch.__version__, sys.version, " ".join(compile_flags() + LDFLAGS), cpu_features()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("GATEDRNN_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gatedrnn"


def library_path() -> Path:
    """Where the library for this build key lives (it may not exist yet)."""
    key = build_key()
    return cache_dir() / f"fused-{key}" / f"gatedrnn_fused_{key}.so"


# ----- the cache folder: ours, private, writable -----
def _check_private(path: Path, *, follow: bool = False) -> None:
    """`path` must be a directory owned by this user and not writable by group or others (with `follow`, a
    link to such a directory is accepted: $GATEDRNN_CACHE_DIR may point to another disk)."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except OSError as error:
        raise BuildError(f"cannot read the cache folder {str(path)!r} ({error.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise BuildError(f"the cache folder {str(path)!r} is not a directory (a link or a file); "
                         f"set GATEDRNN_CACHE_DIR to a folder of your own")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise BuildError(f"the cache folder {str(path)!r} belongs to another user (uid {info.st_uid}); "
                         f"set GATEDRNN_CACHE_DIR to a folder of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BuildError(f"the cache folder {str(path)!r} is writable by other users "
                         f"(mode {stat.S_IMODE(info.st_mode):o}), so a library planted there could run as you; "
                         f"run `chmod go-w {path}` or set GATEDRNN_CACHE_DIR to a folder of your own")


def _make_private(path: Path, *, follow: bool = False) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise BuildError(f"cannot create the cache folder {str(path)!r} ({error.strerror}); "
                         f"set GATEDRNN_CACHE_DIR to a writable folder") from None
    _check_private(path, follow=follow)
    if not os.access(path, os.W_OK):
        raise BuildError(f"the cache folder {str(path)!r} is not writable; set GATEDRNN_CACHE_DIR to a writable folder")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`, opened without following links and never truncated."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        raise BuildError(f"cannot open the build lock {str(path)!r} ({error.strerror}"
                         f"{'; it is a symbolic link, remove it' if path.is_symlink() else ''})") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process may be building the same key: wait for it
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ----- the library and its record -----
def _record_path(library: Path) -> Path:
    return library.with_suffix(".json")


def _digest(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def intact(library: Path) -> bool:
    """The library exists, is ours, and has the size and sha256 recorded when it was built."""
    try:
        info = os.lstat(library)
        record = json.loads(_record_path(library).read_text())
    except (OSError, ValueError):
        return False
    if not stat.S_ISREG(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return False
    if not isinstance(record, dict) or info.st_size != record.get("bytes"):
        return False  # checked before hashing: the cheap test catches a truncated file
    return _digest(library) == {"bytes": record.get("bytes"), "sha256": record.get("sha256")}


def _install(built: Path, library: Path) -> None:
    """Copy ninja's output next to `library` under a temporary name, record it, rename it into place."""
    tmp = library.with_name(f".{library.name}.tmp-{os.getpid()}")
    record_tmp = tmp.with_suffix(".json")
    try:
        shutil.copyfile(built, tmp)
        os.chmod(tmp, 0o700)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        record_tmp.write_text(json.dumps(_digest(tmp)))
        os.replace(record_tmp, _record_path(library))  # the record first: a reader of the old library re-checks
        os.replace(tmp, library)
    finally:
        tmp.unlink(missing_ok=True)
        record_tmp.unlink(missing_ok=True)


def _import(name: str, library: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(library))
    spec = importlib.util.spec_from_file_location(name, str(library), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# ----- compiling -----
_ERROR_LINE = re.compile(r"\berror\b|not found|no such file|cannot find|undefined reference", re.IGNORECASE)
_NOISE = re.compile(r"^(Error building extension|ninja: build stopped|FAILED:|subprocess\.CalledProcessError)")


def first_error(log: str) -> str:
    """The first line of a build log that says what went wrong (else its last non-empty line)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        # "Error building extension 'x': <first line of ninja's output>" carries the output after the colon
        line = re.sub(r"^(\w+: )?Error building extension '[^']*':\s*", "", line)
        if line and not _NOISE.match(line) and _ERROR_LINE.search(line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def _hint(cause: str) -> str:
    lowered = cause.lower()
    if "ninja" in lowered:
        return "install ninja (pip install ninja)"
    if "not found" in lowered and re.search(r"(?<![\w+])(c\+\+|g\+\+|gcc|cc|clang\+\+|clang)(?![\w+])", lowered):
        return "install a C++ compiler (g++ or clang++)"
    return ""


def _compile(name: str, folder: Path, library: Path) -> ModuleType:
    """Run ninja in folder/build, then install the library; raises BuildError naming the first error."""
    from torch.utils import cpp_extension

    build = folder / "build"
    build.mkdir(exist_ok=True, mode=0o700)
    built = build / f"{name}.so"
    built.unlink(missing_ok=True)  # always relink (seconds): never import a library we did not just write
    # torch's own build baton: we hold this key's exclusive lock, so a baton here was left by a build that was
    # killed, and torch.utils.cpp_extension would wait for it forever
    (build / "lock").unlink(missing_ok=True)
    print(f"gatedrnn: compiling the fused C++ engine into {folder}; this happens once per machine, torch and "
          f"Python version (later runs load the compiled library)", file=sys.stderr, flush=True)
    log = folder / "build.log"
    try:
        module = cpp_extension.load(name=name, sources=[str(p) for p in _sources() if p.suffix == ".cpp"],
                                    extra_cflags=list(compile_flags()), extra_ldflags=list(LDFLAGS),
                                    build_directory=str(build), verbose=False)
    except Exception as error:  # a compiler error, a missing toolchain, ...
        text = f"{type(error).__name__}: {error}\n"
        try:
            log.write_text(text)
            where = f"; the whole log is in {log}"
        except OSError:
            where = ""
        cause = first_error(text)
        hint = "; ".join(part for part in (_hint(cause), where.lstrip("; ")) if part)
        raise BuildError(f"{cause} ({hint})" if hint else cause) from None
    log.unlink(missing_ok=True)
    _install(built, library)
    return module


def _load_or_build() -> ModuleType:
    """The engine module: imported when an intact library is cached, else built under the lock."""
    key = build_key()
    name = f"gatedrnn_fused_{key}"
    root = cache_dir()
    folder = root / f"fused-{key}"
    library = folder / f"{name}.so"
    if library.exists():  # the fast path, without the lock: the file is only ever replaced whole
        _check_private(root, follow=True)
        _check_private(folder)
        if intact(library):
            return _import(name, library)
    _make_private(root, follow=True)
    _make_private(folder)
    with _file_lock(root / f"fused-{key}.lock"):
        if intact(library):  # another process built it while we waited
            return _import(name, library)
        return _compile(name, folder, library)


def _describe(error: BaseException) -> str:
    if isinstance(error, BuildError):
        return str(error)
    return f"{type(error).__name__}: {first_error(str(error))}"


def load() -> Optional[ModuleType]:
    """The compiled engine module, or None (after one warning) when it cannot be built.

    The first call in a process builds (or loads) it; calls from other threads meanwhile wait for it.
    """
    global _module, _error, _attempted
    if _attempted:
        return _module
    with _lock:
        if not _attempted:
            try:
                _module = _load_or_build()
            except Exception as exc:  # a compiler error, a missing toolchain, an unsafe or unwritable cache, ...
                _error = _describe(exc)
                warnings.warn(f"gatedrnn: could not build the fused C++ engine, every layer runs on the slower "
                              f"reference path: {_error}", RuntimeWarning, stacklevel=3)
            _attempted = True
    return _module


def loaded() -> Optional[ModuleType]:
    """The engine module if this process has loaded it already, else None: never builds nor loads (for paths
    that only run where an earlier call chose the engine, such as the streaming step after its first step)."""
    return _module


def build() -> tuple[Path, float]:
    """Build (or check) the engine now, for `gatedrnn build`: (library path, seconds). Raises BuildError."""
    global _module, _error, _attempted
    started = time.perf_counter()
    with _lock:
        if _module is not None:  # already loaded in this process
            return library_path(), time.perf_counter() - started
        try:
            _module = _load_or_build()
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(_describe(exc)) from None
        _error, _attempted = None, True
    return library_path(), time.perf_counter() - started


def error() -> Optional[str]:
    """Why the last build attempt failed, or None."""
    return _error


def reset() -> None:
    """Forget the load attempt (tests use this to simulate a failed build)."""
    global _module, _error, _attempted
    _module, _error, _attempted = None, None, False
