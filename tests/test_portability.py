"""The engine builds for the CPUs users have: per-architecture flags (no x86-only flag on ARM), a cross
compile of the sources for aarch64, and the parity checks on every x86-64 code path this machine can run
(GATEDRNN_ISA builds: AVX2 on an AVX-512 machine, the SSE2 baseline)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from gatedrnn.engine import _build
from gatedrnn.engine._flags import AMD_DEFINES, COMMON, X86_LEVELS, ISASettingError, compile_flags, cpu_features

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


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 vendors")
def test_amd_divides_for_the_reciprocal_at_every_level(monkeypatch):
    monkeypatch.delenv("GATEDRNN_ISA", raising=False)
    from gatedrnn.engine import _flags

    monkeypatch.setattr(_flags, "cpu_vendor", lambda: "AuthenticAMD")
    assert "-DGATEDRNN_RECIPROCAL_DIVIDE" in compile_flags("x86_64")
    assert "-DGATEDRNN_RECIPROCAL_DIVIDE" in compile_flags("x86_64", "baseline")
    assert "-DGATEDRNN_RECIPROCAL_DIVIDE" not in compile_flags("aarch64")
    monkeypatch.setattr(_flags, "cpu_vendor", lambda: "GenuineIntel")
    assert "-DGATEDRNN_RECIPROCAL_DIVIDE" not in compile_flags("x86_64")


FASTMATH_CHECK = r"""#include <cmath>
#include <cstdio>
#include "fastmath.h"
// reciprocal_newton against the correctly rounded 1 / d, at every exponent and many mantissas of d in [1, 8.5e37]
// (where 1 / d is a normal float; beyond, subnormal results may be a few subnormal steps off); σ and tanh against
// double precision, through the reciprocal this build takes and through the Newton steps (the cells' formula)
int main() {
  long checked = 0, off = 0;
  for (float d = 1.0f; d <= 8.5e37f; d = std::nextafter(d * 1.0009765625f, 2e38f), ++checked) {
    const float want = 1.0f / d, got = gatedrnn::reciprocal_newton(d);
    if (got != want && got != std::nextafter(want, 0.0f) && got != std::nextafter(want, 1.0f)) ++off;
  }
  double worst = 0;
  for (float x = -30.0f; x <= 30.0f; x += 0.001f) {
    const double sigma = 1.0 / (1.0 + std::exp(-(double)x));
    const float newton = x < -88.0f ? 0.0f : gatedrnn::reciprocal_newton(1.0f + gatedrnn::exp_approx(-x));
    worst = std::fmax(worst, std::fabs(gatedrnn::sigmoid(x) - sigma));
    worst = std::fmax(worst, std::fabs(newton - sigma));
    worst = std::fmax(worst, std::fabs(gatedrnn::tanh_(x) - std::tanh((double)x)));
  }
  std::printf("%ld %ld %.3g %d\n", checked, off, worst, gatedrnn::reciprocal_newton(1.0f) == 1.0f);
}
"""


def test_reciprocal_newton_is_exact_to_an_ulp(tmp_path):
    """The Newton steps run on every machine, whichever path the engine's build takes here (AMD and x86 without
    AVX-512 divide; Intel's AVX-512 builds and aarch64 take the Newton steps), with FMA where the CPU has it
    (the form every AVX2 and AVX-512 build compiles)."""
    source = tmp_path / "check.cpp"
    source.write_text(FASTMATH_CHECK)
    binary = tmp_path / "check"
    csrc = ROOT / "src" / "gatedrnn" / "engine" / "csrc"
    fma = ["-mfma"] if platform.machine().lower() in ("x86_64", "amd64") and "fma" in cpu_features().split() else []
    done = subprocess.run(["g++", "-std=c++20", "-O2", "-fno-trapping-math", *fma, f"-I{csrc}", str(source),
                           "-o", str(binary)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    checked, off, worst, one_is_one = subprocess.run([str(binary)], capture_output=True, text=True,
                                                     check=True).stdout.split()
    assert int(checked) > 80000 and int(off) == 0
    assert float(worst) < 5e-7 and one_is_one == "1"


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 levels")
@pytest.mark.parametrize("flags,divides", [(("-march=x86-64-v4",), False),
                                           (("-march=x86-64-v4", "-DGATEDRNN_RECIPROCAL_DIVIDE"), True),
                                           (("-march=x86-64-v3",), True), (("-march=x86-64",), True)],
                         ids=["avx512", "avx512-amd", "avx2", "baseline"])
def test_each_build_takes_its_reciprocal(tmp_path, flags, divides):
    """Which reciprocal fastmath.h compiles for each level (compile only: this CPU need not run AVX-512)."""
    source = tmp_path / "path.cpp"
    source.write_text('#include "fastmath.h"\n'
                      f"static_assert(gatedrnn::kReciprocalDivides == {str(divides).lower()});\n")
    csrc = ROOT / "src" / "gatedrnn" / "engine" / "csrc"
    done = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", *flags, f"-I{csrc}", str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


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


def aarch64_compile_command(output: Path) -> list[str] | None:
    """The cross compile of engine.cpp to `output` with the flags compile_flags gives on aarch64 (-mcpu=native
    becomes a named core: a cross compiler cannot detect one), or None without the cross compiler. conftest.py
    starts it in the background at collection, after the ISA builds (PREBUILT_AARCH64)."""
    compiler = _cross_compiler()
    if compiler is None:
        return None
    flags = [("-mcpu=neoverse-n1" if f == "-mcpu=native" else f) for f in compile_flags("aarch64", "native")]
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    source = ROOT / "src" / "gatedrnn" / "engine" / "csrc" / "engine.cpp"
    return [compiler, "-std=c++20", "-fPIC", "-DTORCH_EXTENSION_NAME=gatedrnn_fused", "-DTORCH_API_INCLUDE_EXTENSION_H",
            *flags, *includes, "-c", str(source), "-o", str(output)]


# Set by conftest.py when it queued the cross compile in the background: (process, folder, stderr file). Whichever
# side first makes folder/claim compiles; the background writes the compiler's exit status last, as "rc=N" on its
# own line of the stderr file, and its object to folder/engine.o.
PREBUILT_AARCH64: tuple | None = None


def test_engine_sources_compile_for_aarch64(tmp_path):
    """What an ARM user's first use runs. Compile only: linking needs an aarch64 libtorch."""
    if _cross_compiler() is None:
        message = "aarch64-linux-gnu-g++ is not installed (Debian: apt-get install g++-aarch64-linux-gnu)"
        if IN_CI:
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    output, status = tmp_path / "engine.o", None
    if PREBUILT_AARCH64 is not None:
        process, folder, log = PREBUILT_AARCH64
        try:
            (folder / "claim").mkdir()  # the background has not started it (still on the ISA builds): compile here
        except FileExistsError:
            try:
                process.wait(timeout=900)
            except subprocess.TimeoutExpired:
                pass
            lines = log.read_text().splitlines() if log.is_file() else []
            if lines and lines[-1].startswith("rc="):  # the background compile ran to its end: its verdict
                status = (int(lines[-1][3:]), "\n".join(lines[:-1]))
                output = folder / "engine.o"
    if status is None:  # not started, or stopped before its end: compile here
        done = subprocess.run(aarch64_compile_command(output), capture_output=True, text=True, timeout=600)
        status = (done.returncode, done.stderr)
    assert status[0] == 0, status[1][-3000:]
    header = output.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


CELLS_H = ROOT / "src" / "gatedrnn" / "engine" / "csrc" / "cells.h"
# Every float cell the engine dispatches to (engine.cpp), instantiated in a unit of its own (cells.h needs no torch).
CELL_INSTANCES = """#include "cells.h"
namespace gatedrnn {
template struct LSTMCell<float>;
template struct GRUCell<float>;
template struct RNNCell<float, false>;
template struct RNNCell<float, true>;
template struct FGRLSTMCell<float>;
template struct LayerNormLSTMCell<float>;
template struct LayerNormGRUCell<float>;
template struct SLSTMCell<float, false>;
template struct SLSTMCell<float, true>;
""" + "".join(f"template struct PeepholeLSTMCell<float, Greff::{v}>;\n"
              for v in ("kVanilla", "kNIG", "kNFG", "kNOG", "kNIAF", "kNOAF", "kCIFG")) + "}\n"
# Where a select or a conditional load/store has no masked vector form (SSE2, NEON), these cells' loops are
# unswitched by hand (with_row_flags); the other variants' loops still are not (listed in the csrc README).
VECTORISED_EVERYWHERE = ("LSTMCell", "GRUCell", "RNNCell", "PeepholeLSTMCell", "SLSTMCell")


def _cell_loops() -> dict[int, str]:
    """{line where GCC reports each loop under `#pragma GCC ivdep` or `#pragma omp simd` in cells.h: its struct}"""
    loops, owner, lines = {}, "helpers", CELLS_H.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if line.startswith("struct "):
            owner = line.split()[1]
        elif line.startswith("};"):
            owner = "helpers"
        elif line.strip().startswith("#pragma GCC ivdep"):
            loops[number + 1] = owner
        elif line.strip().startswith("#pragma omp simd"):
            loops[number] = owner  # GCC reports an OpenMP simd loop at its pragma
    return loops


@pytest.mark.parametrize("machine,isa", [("x86_64", "avx512"), ("x86_64", "avx512-amd"), ("x86_64", "avx2"),
                                         ("x86_64", "baseline"), ("aarch64", "native")])
def test_cell_passes_are_vectorised(machine, isa, tmp_path):
    """The pointwise passes are plain loops that GCC must vectorise with the engine's own flags: a select it
    cannot if-convert, or a call it does not inline, leaves a whole pass scalar with no error (an LSTM's
    inference took 2x as long on AVX2 for that, while AVX-512 was fine)."""
    if machine == "aarch64":
        compiler = _cross_compiler()
        if compiler is None:
            if IN_CI:
                pytest.fail("aarch64-linux-gnu-g++ is not installed; .ci/run installs it")
            pytest.skip("aarch64-linux-gnu-g++ is not installed")
    else:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("an x86-64 target needs an x86-64 host compiler")
        compiler = shutil.which("g++")  # GCC's vectoriser report (-fopt-info); the engine builds with GCC here
        if compiler is None:
            pytest.skip("g++ is not installed")
    # compile_flags(machine, isa) itself, but for a level this CPU may not run (only compiled here, never run)
    # (avx512-amd: the AVX-512 level with the divide an AMD CPU's build takes, _flags.AMD_DEFINES)
    x86 = X86_LEVELS[isa.removesuffix("-amd")] + COMMON + (AMD_DEFINES if isa.endswith("-amd") else ())
    flags = [("-mcpu=neoverse-n1" if f == "-mcpu=native" else f)
             for f in (x86 if machine == "x86_64" else compile_flags(machine, isa))]
    source = tmp_path / "cells.cpp"
    source.write_text(CELL_INSTANCES)
    report = tmp_path / "vec.txt"
    done = subprocess.run([compiler, "-std=c++20", *flags, f"-I{CELLS_H.parent}", f"-fopt-info-vec-all={report}",
                           "-c", str(source), "-o", str(tmp_path / "cells.o")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = report.read_text().splitlines()
    loops = _cell_loops()
    assert len(loops) >= 20 and {"LSTMCell", "GRUCell", "helpers"} <= set(loops.values())
    wanted = {line: owner for line, owner in loops.items()
              if machine == "x86_64" and isa != "baseline" or owner in VECTORISED_EVERYWHERE}

    def says(line: int, what: str) -> bool:
        return any(f"cells.h:{line}:" in entry and what in entry for entry in lines)

    scalar = [f"cells.h:{line} ({owner})" for line, owner in wanted.items()
              if not says(line, "loop vectorized") or says(line, "couldn't vectorize loop")]
    assert not scalar, f"loops left scalar at {machine}/{isa}: {scalar}"


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
