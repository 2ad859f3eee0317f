"""Suite-wide set-up: when the ISA parity tests are selected, their engine builds (GATEDRNN_ISA=avx2, baseline:
a full compile each, ~1.5 min), and then the aarch64 cross compile, start in the background at collection, on
the core the mostly single-threaded tests leave idle, instead of one after the other when those tests run. The
tests then load the cached library, or wait on the build lock for a build still running
(gatedrnn.engine._build); a build that fails here is simply repeated by the test, which reports its error. The
cross compile's test reads its verdict (test_portability.PREBUILT_AARCH64), or compiles itself when it did
not run to its end."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# Most tests compare against torch.nn or count gatedrnn's operators, so a plain LSTM must run our engine, not
# torch's kernel chosen by measurement (gatedrnn.layers.torch_floor); tests/test_kernel_choice.py sets its own.
os.environ.setdefault("GATEDRNN_TORCH_FLOOR", "off")
# Without a GPU, the GPU engine's Triton kernels run on CPU tensors in Triton's interpreter (tests/test_triton.py);
# Triton reads this when a kernel is defined, so it is set before anything imports gatedrnn.engine.triton_cells.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_PREBUILD: list[subprocess.Popen] = []
_FOLDERS: list[str] = []  # the cross compile's output, removed when the session ends


def pytest_collection_finish(session) -> None:
    commands = []
    if any("test_parity_on_every_isa_path" in item.nodeid for item in session.items):
        from gatedrnn.engine._flags import cpu_features

        features = set(cpu_features().split())
        commands += [f"GATEDRNN_ISA={level} {shlex.quote(sys.executable)} -m gatedrnn build >/dev/null 2>&1"
                     for level, needs in (("avx2", {"avx2", "fma"}), ("baseline", {"sse2"})) if needs <= features]
    # then the aarch64 cross compile (~1.3 min), whose verdict test_engine_sources_compile_for_aarch64 reads
    cross = next((item for item in session.items if item.name == "test_engine_sources_compile_for_aarch64"), None)
    module = getattr(cross, "module", None)
    command = None
    if module is not None:
        folder = tempfile.mkdtemp(prefix="gatedrnn-aarch64-")
        _FOLDERS.append(folder)
        command = module.aarch64_compile_command(Path(folder) / "engine.o")
    if command is not None:
        log = Path(folder) / "stderr"
        claim = shlex.quote(str(Path(folder) / "claim"))  # whichever side makes it first compiles
        commands.append(f"mkdir {claim} 2>/dev/null && {{ {shlex.join(command)} 2>{shlex.quote(str(log))}; "
                        f"echo rc=$? >>{shlex.quote(str(log))}; }}")
    if not commands:
        return
    process = subprocess.Popen(["nice", "-n", "10", "sh", "-c", "; ".join(commands)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True)
    _PREBUILD.append(process)
    if command is not None:
        module.PREBUILT_AARCH64 = (process, Path(folder), log)


def pytest_sessionfinish(session, exitstatus) -> None:
    for process in _PREBUILD:  # a run that ended early (-x, -k) does not leave a compiler behind
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the shell and the compiler it started
            process.wait(timeout=30)
    for folder in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)
