"""What a result depends on besides the code under test: machine, library versions, threads, commit."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),  # other work on the machine skews every number
        "nice": os.nice(0),
        "autogroup": _autogroup(),
        "backend_info": gatedrnn.backend_info(),
    }
