"""Compiler flags of the fused engine, per CPU architecture, and the instruction-set level it targets.

The engine's kernels are portable C++ (GCC vector extensions, no intrinsics but one guarded AVX-512 lane
sum), so one source builds on x86-64 and aarch64. By default it is built for the CPU at hand (-march=native
on x86-64, -mcpu=native on aarch64). GATEDRNN_ISA picks another x86-64 level, e.g. to run the AVX2 code
path on an AVX-512 machine (the tests do, so every path the machine can run is checked):

    native    the CPU at hand (default)
    avx512    x86-64-v4: AVX-512 F/BW/CD/DQ/VL
    avx2      x86-64-v3: AVX2 + FMA (AMD Zen, Intel since Haswell)
    baseline  x86-64: SSE2 only

The flags are part of the cache key (`_build.build_key`), so each level is its own build.
"""
from __future__ import annotations

import os
import platform
from typing import Optional

# -fno-trapping-math: the cells' selects (the clamps in exp_approx, tanh's two branches) become vector blends only
# when a comparison may not trap. Without it GCC if-converts them with AVX-512's masks alone: on AVX2 (AMD Zen,
# Intel before AVX-512), SSE2 and NEON every pointwise pass stayed scalar ("control flow in loop"; an LSTM's
# inference at B = 16 took 2x as long on a Zen 3). No result changes: only floating-point exception flags, which
# nothing reads.
COMMON = ("-O3", "-fno-trapping-math", "-fopenmp", "-DNDEBUG")
LDFLAGS = ("-fopenmp",)
X86_LEVELS = {
    "native": ("-march=native", "-mprefer-vector-width=512"),
    "avx512": ("-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512"),
    "avx2": ("-march=x86-64-v3", "-mtune=generic"),
    "baseline": ("-march=x86-64", "-mtune=generic"),
}
# What each level needs from the CPU (as /proc/cpuinfo names it): a library built for more dies with SIGILL.
X86_REQUIRES = {
    "avx512": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"),
    "avx2": ("avx2", "fma", "bmi1", "bmi2", "movbe", "f16c"),
    "baseline": (),
}
# On AMD (Zen) the reciprocal in σ and tanh divides at every level, AVX-512 included (fastmath.h `reciprocal`):
# a Zen 4 issues a 512-bit divide every ~5 cycles on a unit of its own beside the FMA pipes, and its no-grad
# forwards ran 1.01-1.05x faster with it than with Newton steps (csrc/README.md); Intel's 512-bit divide is
# slower (~10 cycles), so its AVX-512 builds keep the Newton steps.
AMD_DEFINES = ("-DGATEDRNN_RECIPROCAL_DIVIDE",)
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")
ARM_MACHINES = ("aarch64", "arm64")


class ISASettingError(ValueError):
    """GATEDRNN_ISA holds a value this machine cannot build for."""


def requested_isa() -> str:
    """GATEDRNN_ISA, read now ("native" when unset or empty)."""
    return os.environ.get("GATEDRNN_ISA", "").strip().lower() or "native"


def compile_flags(machine: Optional[str] = None, isa: Optional[str] = None) -> tuple[str, ...]:
    """The C++ flags for `machine` (default: this one) at level `isa` (default: GATEDRNN_ISA)."""
    machine = (machine or platform.machine()).lower()
    isa = requested_isa() if isa is None else isa
    if machine in X86_MACHINES:
        if isa not in X86_LEVELS:
            raise ISASettingError(f"GATEDRNN_ISA={isa!r} is not understood on {machine}; expected one of "
                                  f"{', '.join(X86_LEVELS)}")
        if machine == platform.machine().lower():  # building for this CPU: it must run what is built
            missing = [flag for flag in X86_REQUIRES.get(isa, ()) if flag not in cpu_features().split()]
            if missing:
                raise ISASettingError(f"GATEDRNN_ISA={isa!r} needs {', '.join(missing)}, which this CPU lacks "
                                      f"({cpu_model()}); use a lower level or unset GATEDRNN_ISA")
            if cpu_vendor() == "AuthenticAMD":
                return X86_LEVELS[isa] + COMMON + AMD_DEFINES
        return X86_LEVELS[isa] + COMMON
    if isa != "native":
        raise ISASettingError(f"GATEDRNN_ISA={isa!r} applies to x86-64 only; on {machine} use native (or unset)")
    if machine in ARM_MACHINES:
        return ("-mcpu=native",) + COMMON  # NEON always; SVE where the CPU has it
    return COMMON  # another architecture: the compiler's defaults, still vectorised at -O3


def cpuinfo_field(*names: str) -> str:
    """The value of the first /proc/cpuinfo line whose key is one of `names`, or "" (no such line, no file)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in names:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_vendor() -> str:
    """The x86 vendor as /proc/cpuinfo names it ("AuthenticAMD", "GenuineIntel"), or "" where none is listed."""
    return cpuinfo_field("vendor_id")


def cpu_features() -> str:
    """The CPU's instruction-set flags as /proc/cpuinfo lists them (x86 "flags", aarch64 "Features")."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()
