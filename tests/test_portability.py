"""The engine builds for the CPUs users have: per-architecture flags (no x86-only flag on ARM), a cross
compile of the sources for aarch64, and the parity checks on every x86-64 code path this machine can run
(GATEDRNN_ISA builds: AVX2 on an AVX-512 machine, the SSE2 baseline)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from gatedrnn.engine import _build
from gatedrnn.engine._flags import ISASettingError, compile_flags, cpu_features

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
X86_ONLY = ("-march=native", "-mprefer-vector-width", "-march=x86-64", "-mtune=generic", "-mavx")


def test_flags_per_architecture(monkeypatch):
    monkeypatch.delenv("GATEDRNN_ISA", raising=False)
    arm = compile_flags("aarch64")
    assert "-mcpu=native" in arm and "-O3" in arm and "-fopenmp" in arm
    assert not [flag for flag in arm if flag.startswith(X86_ONLY)], arm
    assert compile_flags("x86_64")[:2] == ("-march=native", "-mprefer-vector-width=512")
    assert compile_flags("x86_64", "avx2")[0] == "-march=x86-64-v3"
    assert "-march" not in " ".join(compile_flags("ppc64le"))
    with pytest.raises(ISASettingError, match="avx2, baseline"):
        compile_flags("x86_64", "avx3")
    with pytest.raises(ISASettingError, match="x86-64 only"):
        compile_flags("aarch64", "avx2")
    monkeypatch.setenv("GATEDRNN_ISA", "avx2")
    assert compile_flags("x86_64")[0] == "-march=x86-64-v3"


def test_a_level_this_cpu_cannot_run_is_refused(monkeypatch):
    """A library built above the CPU's level would die with SIGILL at first use: refuse it, naming the flags."""
    monkeypatch.setattr("gatedrnn.engine._flags.platform.machine", lambda: "x86_64")
    monkeypatch.setattr("gatedrnn.engine._flags.cpu_features", lambda: "flags : fpu sse sse2 avx")
    assert compile_flags("x86_64", "baseline")[0] == "-march=x86-64"
    with pytest.raises(ISASettingError, match="needs avx2, fma"):
        compile_flags("x86_64", "avx2")
    with pytest.raises(ISASettingError, match="avx512f"):
        compile_flags("x86_64", "avx512")


def test_the_isa_level_is_part_of_the_cache_key(monkeypatch):
    monkeypatch.delenv("GATEDRNN_ISA", raising=False)
    native = _build.build_key()
    monkeypatch.setenv("GATEDRNN_ISA", "avx2")
    assert _build.build_key() != native


def _cross_compiler() -> str | None:
    return shutil.which("aarch64-linux-gnu-g++")


def test_engine_sources_compile_for_aarch64(tmp_path):
    """What an ARM user's first use runs, with the flags compile_flags gives there (-mcpu=native becomes a
    named core: a cross compiler cannot detect one). Compile only: linking needs an aarch64 libtorch."""
    compiler = _cross_compiler()
    if compiler is None:
        message = "aarch64-linux-gnu-g++ is not installed (Debian: apt-get install g++-aarch64-linux-gnu)"
        if IN_CI:
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    flags = [("-mcpu=neoverse-n1" if f == "-mcpu=native" else f) for f in compile_flags("aarch64", "native")]
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    source = ROOT / "src" / "gatedrnn" / "engine" / "csrc" / "engine.cpp"
    output = tmp_path / "engine.o"
    done = subprocess.run(
        [compiler, "-std=c++20", "-fPIC", "-DTORCH_EXTENSION_NAME=gatedrnn_fused", "-DTORCH_API_INCLUDE_EXTENSION_H",
         *flags, *includes, "-c", str(source), "-o", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    header = output.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def _runnable_levels() -> list[str]:
    """The x86-64 levels below native that this CPU runs (each a different lowering of the kernels)."""
    features = set(cpu_features().split())
    if not {"sse2"} <= features:
        return []
    levels = ["baseline"]
    if {"avx2", "fma"} <= features:
        levels.append("avx2")
    return levels


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_parity_on_every_isa_path(isa):
    """Build the engine at `isa` and run the fused-vs-reference-vs-torch.nn parity checks and streaming on it."""
    if isa not in _runnable_levels():
        pytest.skip(f"this CPU does not run the {isa} level (features: {cpu_features()[:80]}...)")
    env = dict(os.environ, GATEDRNN_ISA=isa)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/test_engine_fused.py", "tests/test_streaming.py", "-k", "fused_equals or gradcheck or stepping"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
    check = subprocess.run(
        [sys.executable, "-c", "from gatedrnn.engine import _build; import sys; "
         "sys.exit(0 if _build.load() is not None and _build.compile_flags()[0] == sys.argv[1] else 1)",
         {"avx2": "-march=x86-64-v3", "baseline": "-march=x86-64"}[isa]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert check.returncode == 0, check.stderr[-2000:]
