"""What a result depends on besides the code under test: machine, library versions, threads, commit."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

from gatedrnn.engine._flags import cpu_model, cpuinfo_field


# The instruction-set extensions a kernel's speed depends on, as /proc/cpuinfo names them (x86 "flags",
# aarch64 "Features").
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")


def cpu_description() -> dict:
    """{"model", "vendor", "arch", "isa": the ISA_FLAGS present, "family": e.g. "x86-64 AVX-512 (GenuineIntel)"}:
    what the README's speed tables are grouped by (one table per CPU family measured)."""
    arch = platform.machine() or "unknown"
    flags = set(cpuinfo_field("flags", "Features").split())
    isa = [flag for flag in ISA_FLAGS if flag in flags]
    vendor = cpuinfo_field("vendor_id") or cpuinfo_field("CPU implementer") or "unknown"
    if "avx512f" in flags:
        level = "AVX-512"
    elif "avx2" in flags:
        level = "AVX2"
    elif "sve" in flags:
        level = "SVE"
    elif "asimd" in flags:
        level = "NEON"
    else:
        level = "baseline"
    return {"model": cpu_model(), "vendor": vendor, "arch": arch, "isa": isa, "family": f"{arch} {level} ({vendor})"}


def blas_description() -> dict:
    """The BLAS and the CPU RNN library torch was built with (the peers' kernels depend on them)."""
    import torch

    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    blas = match.group(1) if match else "unknown"
    return {"torch_blas": blas, "mkl": torch.backends.mkl.is_available(), "onednn": torch.backends.mkldnn.is_available()}


def _autogroup() -> Optional[str]:
    """The scheduler group and its nice value ("/autogroup-66 nice -15"): with autogroups on, a process's
    own nice value only ranks it within its session, this one ranks the session against the others."""
    try:
        with open("/proc/self/autogroup") as file:
            return file.read().strip()
    except OSError:
        return None


def git_commit(folder: Path) -> dict:
    """{"commit": sha or None, "dirty": bool or None, "modified": tracked files under src/ that differ from
    the commit (the code measured is not exactly the commit's when this is not empty)}."""

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    modified = [line[3:] for line in (status or "").splitlines() if line[3:].startswith("src/")]
    return {"commit": commit, "dirty": None if status is None else bool(status.strip()), "modified": modified}


def environment(*, threads: int) -> dict:
    import numpy
    import torch

    import gatedrnn

    try:
        import onnxruntime

        onnxruntime_version: Optional[str] = onnxruntime.__version__
    except ImportError:
        onnxruntime_version = None
    source = Path(gatedrnn.__file__).resolve().parent
    return {
        "git": git_commit(source),
        "gatedrnn_version": gatedrnn.__version__,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime_version,
        "numpy_version": numpy.__version__,
        "python_version": platform.python_version(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu": cpu_description(),
        "blas": blas_description(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),  # other work on the machine skews every number
        "nice": os.nice(0),
        "autogroup": _autogroup(),
        "backend_info": gatedrnn.backend_info(),
    }
