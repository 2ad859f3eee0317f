"""Suite-wide set-up: when the ISA parity tests are selected, their engine builds (GATEDRNN_ISA=avx2, baseline:
a full compile each, ~1.5 min) start in the background at collection, on the core the mostly single-threaded
tests leave idle, instead of one after the other when those tests run. The tests then load the cached library,
or wait on the build lock for a build still running (gatedrnn.engine._build); a build that fails here is
simply repeated by the test, which reports its error."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

# Most tests compare against torch.nn or count gatedrnn's operators, so a plain LSTM must run our engine, not
# torch's kernel chosen by measurement (gatedrnn.layers.torch_floor); tests/test_kernel_choice.py sets its own.
os.environ.setdefault("GATEDRNN_TORCH_FLOOR", "off")

_PREBUILD: list[subprocess.Popen] = []


def pytest_collection_finish(session) -> None:
    if not any("test_parity_on_every_isa_path" in item.nodeid for item in session.items):
        return
    from gatedrnn.engine._flags import cpu_features

    features = set(cpu_features().split())
    levels = [level for level, needs in (("avx2", {"avx2", "fma"}), ("baseline", {"sse2"})) if needs <= features]
    if not levels:
        return
    script = "; ".join(f"GATEDRNN_ISA={level} {sys.executable} -m gatedrnn build" for level in levels)
    _PREBUILD.append(subprocess.Popen(["nice", "-n", "10", "sh", "-c", script], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True))


def pytest_sessionfinish(session, exitstatus) -> None:
    for process in _PREBUILD:  # a run that ended early (-x, -k) does not leave a compiler behind
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the shell and the compiler it started
            process.wait(timeout=30)
