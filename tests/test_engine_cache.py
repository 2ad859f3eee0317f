"""The engine cache under attack: truncated, half-written, planted or shared libraries, a symlinked lock,
a missing compiler, an unwritable folder, two threads at the first call, a misspelt GATEDRNN_BACKEND.

Each test copies the built cache folder (object files included, so a rebuild only relinks: seconds; see
`built`) into tmp_path and runs a fresh Python process on it, since a bad library kills the process that loads it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import gatedrnn
from gatedrnn.cli import main
from gatedrnn.engine import _build

SRC = str(Path(gatedrnn.__file__).resolve().parents[1])
PROBE = """
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from gatedrnn.engine import backend_info
    print("ready", flush=True)
    sys.stdin.readline()
    info = backend_info()
print(json.dumps({"info": info, "warnings": [str(w.message) for w in caught if "gatedrnn" in str(w.message)]}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The folder holding this build key's library, built from this checkout's sources.

    A copy only relinks when its build.ninja names the same source and torch paths. The build key hashes the
    sources' contents, not their path, so the shared cache may hold a library built from another checkout (or
    another venv); its copies would each recompile everything (~1.5 min) into a different binary (__FILE__
    strings). Then one private build is made here instead, once."""
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"
    folder = _build.cache_dir() / f"fused-{_build.build_key()}"
    ninja = folder / "build" / "build.ninja"
    wanted = (str(_build.CSRC), cpp_extension.include_paths()[0])
    if ninja.is_file() and all(path in ninja.read_text() for path in wanted):
        return folder
    root = tmp_path_factory.mktemp("own-build") / "cache"
    root.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "build"], env=cache_env(root), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"the private build failed: {done.stderr[-2000:]}"
    return root / folder.name


def copy_cache(built: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(cache root, library) of a private copy of the cache."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    shutil.copytree(built, root / built.name, symlinks=True)  # copy2: keeps mtimes, so ninja relinks only
    return root, root / built.name / f"gatedrnn_fused_{_build.build_key()}.so"


def cache_env(root: Path) -> dict[str, str]:
    """This process's environment for a child on cache `root`, importing this checkout, default backend."""
    env = {**os.environ, "GATEDRNN_CACHE_DIR": str(root), "PYTHONPATH": SRC}
    env.pop("GATEDRNN_BACKEND", None)
    return env


def start_probe(root: Path, *, path: str | None = None, setup: str = "") -> subprocess.Popen:
    env = cache_env(root)
    if path is not None:
        env["PATH"] = path
        env.pop("CXX", None)
    return subprocess.Popen([sys.executable, "-c", setup + PROBE], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def probe(root: Path, **kwargs) -> tuple[int, dict, str]:
    """Run backend_info() in a new process on cache `root`: (exit code, its answer, stderr)."""
    process = start_probe(root, **kwargs)
    out, err = process.communicate("go\n", timeout=300)
    lines = out.splitlines()
    return process.returncode, (json.loads(lines[-1]) if process.returncode == 0 else {}), err


def test_truncated_library_is_rebuilt_not_loaded(built: Path, tmp_path: Path) -> None:
    root, library = copy_cache(built, tmp_path)
    size = library.stat().st_size
    os.truncate(library, size // 2)
    code, answer, err = probe(root)
    assert code == 0, f"the process died (exit {code}; -7 is SIGBUS): {err[-2000:]}"
    assert answer["info"]["backend"] == "fused" and answer["warnings"] == []
    assert library.stat().st_size > size // 2 and _build.intact(library)  # rebuilt, and recorded
    assert err.count("compiling the fused C++ engine") == 1 and "once per machine" in err


def test_a_killed_builds_leftover_baton_does_not_hang_the_next_build(built: Path, tmp_path: Path) -> None:
    """torch.utils.cpp_extension leaves its baton (build/lock) when a build is killed, and waits for it forever;
    under gatedrnn's exclusive lock a baton can only be stale, so it is removed and the build goes on."""
    root, library = copy_cache(built, tmp_path)
    library.unlink()
    (root / built.name / "build").mkdir(exist_ok=True)
    (root / built.name / "build" / "lock").touch()
    code, answer, err = probe(root)
    assert code == 0, f"the process died (exit {code}): {err[-2000:]}"
    assert answer["info"]["backend"] == "fused" and _build.intact(library)


def test_a_library_being_written_is_waited_for(built: Path, tmp_path: Path) -> None:
    """A builder holds the lock while the library is half written; a second process waits for it."""
    root, library = copy_cache(built, tmp_path)
    whole = library.read_bytes()
    os.truncate(library, len(whole) // 2)
    with open(root / f"{built.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = start_probe(root)
        assert process.stdout.readline().strip() == "ready"
        process.stdin.write("go\n")
        process.stdin.flush()
        time.sleep(1.5)  # the probe reaches the library now, while it is half written
        tmp = library.with_name("finished")
        tmp.write_bytes(whole)
        os.replace(tmp, library)  # the builder finishes
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"the process died (exit {process.returncode}): {err[-2000:]}"
    answer = json.loads(out.splitlines()[-1])
    assert answer["info"]["backend"] == "fused" and answer["warnings"] == [], answer
    assert "compiling" not in err, "the finished library should have been loaded, not rebuilt"


def test_threads_wait_for_the_first_build(built: Path, tmp_path: Path) -> None:
    root, library = copy_cache(built, tmp_path)
    library.unlink()
    setup = """
import threading, time
from gatedrnn.engine import _build, backend_info as _info
_compile = _build._compile
def slow_compile(*args):
    time.sleep(1.0)
    return _compile(*args)
_build._compile = slow_compile
barrier, answers = threading.Barrier(2), []
def call():
    barrier.wait()
    answers.append(_info())
threads = [threading.Thread(target=call) for _ in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
assert [a["backend"] for a in answers] == ["fused", "fused"], answers
"""
    code, answer, err = probe(root, setup=setup)
    assert code == 0, err[-2000:]
    assert answer["warnings"] == [] and err.count("compiling the fused C++ engine") == 1


@pytest.mark.parametrize("how", ["writable by others", "another owner"])
def test_an_unsafe_cache_folder_is_refused(built: Path, tmp_path: Path, how: str) -> None:
    root, library = copy_cache(built, tmp_path)  # the planted library: it would load and run
    if how == "writable by others":
        root.chmod(0o777)
    elif os.geteuid() == 0:
        os.chown(root / built.name, 12345, -1)
    else:
        pytest.skip("changing a folder's owner needs root")
    code, answer, err = probe(root)
    assert code == 0, err[-2000:]
    assert answer["info"]["backend"] == "reference", "a library from an unsafe folder was loaded"
    expected = "writable by other users" if how == "writable by others" else "belongs to another user"
    assert len(answer["warnings"]) == 1 and expected in answer["warnings"][0]
    assert "GATEDRNN_CACHE_DIR" in answer["warnings"][0] and expected in answer["info"]["reason"]


def test_the_lock_file_is_not_followed(built: Path, tmp_path: Path) -> None:
    root, library = copy_cache(built, tmp_path)
    library.unlink()  # so that the build takes the lock
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (root / f"{built.name}.lock").symlink_to(victim)
    code, answer, err = probe(root)
    assert code == 0, err[-2000:]
    assert victim.read_text() == "precious", "the lock followed a symbolic link and truncated its target"
    assert answer["info"]["backend"] == "reference" and "symbolic link" in answer["warnings"][0]


def test_a_failed_build_quotes_the_compiler_error_and_keeps_the_log(built: Path, tmp_path: Path) -> None:
    root, library = copy_cache(built, tmp_path)
    library.unlink()
    tools = tmp_path / "bin"  # ninja, but no C++ compiler
    tools.mkdir()
    (tools / "ninja").symlink_to(shutil.which("ninja"))
    code, answer, err = probe(root, path=str(tools))
    assert code == 0, err[-2000:]
    assert answer["info"]["backend"] == "reference"
    (message,) = answer["warnings"]
    assert "c++" in message and "not found" in message and "install a C++ compiler" in message, message
    log = library.parent / "build.log"
    assert str(log) in message and "ninja: build stopped" in log.read_text()
    assert len(log.read_text().splitlines()) > 2, "the whole log is kept, not its last line"


def test_an_unwritable_cache_folder_is_not_blamed_on_the_compiler(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GATEDRNN_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(_build, "_module", None)
    monkeypatch.setattr(_build, "_error", None)
    monkeypatch.setattr(_build, "_attempted", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.load() is None
    (message,) = [str(w.message) for w in caught if "fused C++ engine" in str(w.message)]
    assert "cannot create the cache folder" in message and "GATEDRNN_CACHE_DIR" in message
    assert "compiler" not in message


def test_gatedrnn_build_prints_where_and_how_long(built: Path, tmp_path: Path) -> None:
    root, library = copy_cache(built, tmp_path)
    library.unlink()
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "build"], env=cache_env(root), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"fused C++ engine ready: {library} (") and done.stdout.strip().endswith(" s)")
    assert _build.intact(library)


def test_gatedrnn_build_failure_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GATEDRNN_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(_build, "_module", None)  # restored afterwards
    monkeypatch.setattr(_build, "_attempted", False)
    monkeypatch.setattr(_build, "_error", None)
    assert main(["build"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatedrnn: error: could not build the fused C++ engine: cannot create")


@pytest.mark.parametrize("value", ["refrence", "fused2"])
def test_an_unknown_backend_value_raises(value: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GATEDRNN_BACKEND", value)
    with pytest.raises(ValueError, match="expected one of auto, fused, reference, triton"):
        gatedrnn.backend_info()
    with pytest.raises(ValueError, match=f"GATEDRNN_BACKEND='{value}'"):
        gatedrnn.GRU(2, 3)(torch.randn(4, 1, 2))
    assert main(["tasks"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "GATEDRNN_BACKEND" in lines[0]


@pytest.mark.parametrize("value", ["", "auto", "fused", " Reference "])
def test_the_accepted_backend_values(value: str, monkeypatch) -> None:
    monkeypatch.setenv("GATEDRNN_BACKEND", value)
    expected = "reference" if value.strip().lower() == "reference" else "fused"
    assert gatedrnn.backend_info()["backend"] == expected


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_infinite_input_gives_nan_gradients_like_torch(cell: str) -> None:
    """A gate saturated by an infinite input has derivative 0, and 0 * inf = NaN in the weight gradient,
    as in torch.nn (the fast float32 sigmoid used to stop just short of 0 and give +-inf)."""
    torch.manual_seed(0)
    ours = getattr(gatedrnn, cell)(3, 4)
    theirs = getattr(torch.nn, cell)(3, 4)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3)
    x[1, 0, 0], x[3, 1, 2] = float("inf"), float("-inf")
    assert gatedrnn.backend_info()["backend"] == "fused"
    grads = []
    for module in (ours, theirs):
        output, _ = module(x)
        grads.append(torch.autograd.grad(output.sum(), list(module.parameters())))
    for got, want in zip(*grads):
        assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-4, atol=1e-5)
