"""The torch floor (gatedrnn.layers.torch_floor): a plain LSTM runs torch's kernel where it measured faster.

Forced "torch" must give the engine's numbers through torch's op; ineligible layers never leave the engine; the
measurement is cached in memory and on disk, leaves the module untouched, and is skipped where it must be.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.layers import torch_floor
from op_counter import GatedrnnOps

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture
def floor(monkeypatch, tmp_path):
    """Sets the policy (GATEDRNN_TORCH_FLOOR) and puts the cache file in tmp_path, fresh in memory; returns
    the setter. The measurements made are counted in floor.measured (a list of bucket keys)."""
    path = tmp_path / "kernel-choice.json"
    monkeypatch.setattr(torch_floor, "cache_file", lambda: path)
    torch_floor.reset()
    measured: list = []
    real = torch_floor._measure

    def counting(layer, input, grad):
        measured.append(torch_floor.bucket_key(layer, input, grad))
        return real(layer, input, grad)

    monkeypatch.setattr(torch_floor, "_measure", counting)

    def set_policy(value: str) -> None:
        monkeypatch.setenv(torch_floor.ENV_VAR, value)

    set_policy.path, set_policy.measured = path, measured
    yield set_policy
    torch_floor.reset()


def run(module, x, hx=None):
    """module(x, hx) and every gradient of a loss on output and states: (output, states, grads, ops, profile)."""
    module.zero_grad(set_to_none=True)
    leaf = x.detach().requires_grad_()
    with torch.profiler.profile() as profile, GatedrnnOps() as ops:
        output, (h, c) = module(leaf, hx)
        (output.sum() + h.square().sum() + c.sum()).backward()
    names = {event.name for event in profile.events()}
    grads = [leaf.grad] + [p.grad for p in module.parameters()]
    return output, (h, c), grads, ops.total, names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options, shape", [
    (dict(), (7, 3, 5)),
    (dict(num_layers=2, bidirectional=True, batch_first=True), (3, 7, 5)),
    (dict(num_layers=2, bias=False), (7, 5)),  # unbatched
])
def test_forced_torch_gives_the_engine_numbers_through_torch_op(floor, dtype, options, shape):
    torch.manual_seed(0)
    module = gatedrnn.LSTM(5, 6, dtype=dtype, **options)
    x = torch.randn(*shape, dtype=dtype)
    layers = module.num_layers * module.num_directions
    hx = tuple(torch.randn(layers, *([3] if len(shape) == 3 else []), 6, dtype=dtype) for _ in range(2))
    floor("off")
    ours = run(module, x, hx)
    floor("torch")
    theirs = run(module, x, hx)
    assert ours[3] > 0 and "aten::lstm" not in ours[4]  # the engine ran
    assert theirs[3] == 0 and "aten::lstm" in theirs[4]  # torch's op ran, no gatedrnn operator
    torch.testing.assert_close(theirs[0], ours[0], **TOLERANCE[dtype])
    torch.testing.assert_close(theirs[1], ours[1], **TOLERANCE[dtype])
    for mine, torchs in zip(ours[2], theirs[2]):
        torch.testing.assert_close(torchs, mine, **TOLERANCE[dtype])
    assert floor.measured == []  # "torch" forces, it does not measure


@pytest.mark.parametrize("name, make, call", [
    ("proj_size", lambda: gatedrnn.LSTM(4, 6, proj_size=3), lambda m, x: m(x)),
    ("packed", lambda: gatedrnn.LSTM(4, 6),
     lambda m, x: m(pack_padded_sequence(x, torch.tensor([5, 3]), enforce_sorted=False))),
    ("GRU", lambda: gatedrnn.GRU(4, 6), lambda m, x: m(x)),
    ("RNN", lambda: gatedrnn.RNN(4, 6), lambda m, x: m(x)),
    ("trace", lambda: gatedrnn.LSTM(4, 6), lambda m, x: m._run(x, None, trace=True)),
    ("variant", lambda: gatedrnn.LSTM(4, 6, variant="peephole"), lambda m, x: m(x)),
    ("zoneout", lambda: gatedrnn.LSTM(4, 6, zoneout=0.1), lambda m, x: m(x)),
    ("recurrent_dropout", lambda: gatedrnn.LSTM(4, 6, recurrent_dropout=0.2), lambda m, x: m(x)),
    ("layer dropout", lambda: gatedrnn.LSTM(4, 6, num_layers=2, dropout=0.3), lambda m, x: m(x)),
    ("LayerNormLSTM", lambda: gatedrnn.LayerNormLSTM(4, 6), lambda m, x: m(x)),
])
def test_ineligible_layers_stay_on_the_engine_even_when_forced(floor, name, make, call):
    floor("torch")
    module = make()
    x = torch.randn(5, 2, 4)
    with torch.profiler.profile() as profile, GatedrnnOps() as ops:
        call(module, x)
    assert ops.total > 0, f"{name}: no gatedrnn operator ran"
    assert "aten::lstm" not in {event.name for event in profile.events()}
    if name not in ("packed", "trace"):
        answer = gatedrnn.kernel_choice(module, x)
        assert answer["kernel"] == "gatedrnn" and answer["reason"].startswith("not eligible"), answer


def test_measure_writes_the_file_and_reuses_it(floor):
    floor("measure")
    torch.manual_seed(1)
    module = gatedrnn.LSTM(4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)  # bucket L8, N4
    module(x)
    with torch.no_grad():
        module(x)
    train_key = "train-float32-layers2-uni-bias-I4-H6-N4-L8-threads%d" % torch.get_num_threads()
    infer_key = train_key.replace("train", "infer")
    assert floor.measured == [train_key, infer_key]
    record = json.loads(floor.path.read_text())
    assert set(record["buckets"]) == {train_key, infer_key}
    for bucket in record["buckets"].values():
        assert bucket["kernel"] == torch_floor.decide(bucket)
        assert 0 < bucket["torch_min_s"] <= bucket["torch_s"] and 0 < bucket["gatedrnn_min_s"] <= bucket["gatedrnn_s"]
        assert bucket["repetitions"] >= torch_floor.MIN_REPETITIONS

    module(torch.randn(7, 4, 4))  # same bucket: L 7 -> 8, N 4
    assert len(floor.measured) == 2
    torch_floor.reset()  # as a fresh process: the file is read, nothing is measured again
    module(x)
    assert len(floor.measured) == 2
    assert gatedrnn.backend_info()["kernel_choice"]["buckets"] == record["buckets"]
    module(torch.randn(9, 3, 4))  # L 9 -> 16: a new bucket
    assert floor.measured[2:] == [train_key.replace("L8", "L16")]
    assert len(json.loads(floor.path.read_text())["buckets"]) == 3


def test_the_recorded_choice_decides_which_kernel_runs(floor):
    floor("measure")
    module = gatedrnn.LSTM(4, 6)
    x = torch.randn(5, 3, 4)
    key = torch_floor.bucket_key(module, x, grad=True)
    for kernel, expected_ops in (("torch", 0), ("gatedrnn", 1)):
        floor.path.write_text(json.dumps({"format": torch_floor.FILE_FORMAT, "buckets": {
            key: {"kernel": kernel, **times(2.0, 1.0 if kernel == "torch" else 3.0)}}}))
        torch_floor.reset()
        with GatedrnnOps() as ops:
            module(x)
        assert ops.total == expected_ops
        assert gatedrnn.kernel_choice(module, x)["kernel"] == kernel
    assert floor.measured == []


def times(ours: float, theirs: float, ours_best=None, theirs_best=None) -> dict:
    return {"gatedrnn_s": ours, "torch_s": theirs, "gatedrnn_min_s": ours if ours_best is None else ours_best,
            "torch_min_s": theirs if theirs_best is None else theirs_best}


def test_decide_needs_a_margin_on_the_best_time_and_the_median():
    assert torch_floor.decide(times(1.0, 0.94)) == "torch"
    assert torch_floor.decide(times(1.0, 0.96)) == "gatedrnn"  # within 5%: a tie stays ours
    assert torch_floor.decide(times(1.0, 1.5)) == "gatedrnn"
    assert torch_floor.decide(times(1.0, 1.1, 0.8, 0.5)) == "gatedrnn"  # best faster, median slower: ours
    assert torch_floor.decide(times(1.0, 0.5, 0.5, 0.49)) == "gatedrnn"  # median faster, best a tie: ours


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "buckets": {}}),
                                     json.dumps({"format": 1, "buckets": {"b": {"kernel": "fast"}}})])
def test_a_corrupt_or_foreign_file_warns_once_and_is_rewritten(floor, content):
    floor("measure")
    floor.path.write_text(content)
    module = gatedrnn.LSTM(3, 4)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        module(torch.randn(4, 2, 3))
        module(torch.randn(4, 2, 3))
    ours = [w for w in caught if "kernel-choice cache" in str(w.message)]
    assert len(ours) == 1 and str(floor.path) in str(ours[0].message)
    assert len(floor.measured) == 1
    assert len(json.loads(floor.path.read_text())["buckets"]) == 1  # rewritten, readable


def test_measuring_leaves_the_module_gradients_and_rng_untouched(floor):
    floor("measure")
    torch.manual_seed(2)
    module = gatedrnn.LSTM(4, 6, bidirectional=True).train()
    for p in module.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(5, 2, 4, requires_grad=True)
    rng = torch.get_rng_state()
    output, _ = module(x)
    assert floor.measured, "nothing was measured"
    assert torch.equal(torch.get_rng_state(), rng)
    assert x.grad is None and module.training
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in module.parameters())
    output.sum().backward()  # the call's own graph is intact
    assert x.grad is not None


def test_no_measurement_under_compile_a_dispatch_mode_or_a_transform(floor):
    floor("measure")
    module = gatedrnn.LSTM(3, 4)
    x = torch.randn(4, 2, 3)
    targets: list = []

    def backend(graph, example_inputs):
        targets.extend(str(node.target) for node in graph.graph.nodes)
        return graph

    torch._dynamo.reset()
    torch.compile(module, backend=backend)(x)
    assert any("gatedrnn.scan" in t for t in targets) and not any("lstm" in t for t in targets)
    with GatedrnnOps() as ops:  # a dispatch mode: the engine runs, the bucket waits
        module(x)
        choice = torch_floor.choose(module, x)
    assert ops.total == 1 and choice.kernel == "gatedrnn" and "TorchDispatchMode" in choice.reason
    seen = []
    torch.func.grad(lambda t: (seen.append(torch_floor.choose(module, t)), module(t)[0].sum())[1])(x)
    assert seen[0].kernel == "gatedrnn" and "torch.func" in seen[0].reason
    assert floor.measured == []


def test_off_and_bad_values(floor):
    module = gatedrnn.LSTM(3, 4)
    x = torch.randn(4, 2, 3)
    floor("off")
    with GatedrnnOps() as ops:
        module(x)
    assert ops.total == 1 and floor.measured == []
    assert gatedrnn.kernel_choice(module, x) == {"kernel": "gatedrnn", "reason": "GATEDRNN_TORCH_FLOOR=off"}
    assert gatedrnn.backend_info()["kernel_choice"]["policy"] == "GATEDRNN_TORCH_FLOOR=off"
    floor("fastest")
    with pytest.raises(ValueError, match="GATEDRNN_TORCH_FLOOR='fastest'.*measure, off, torch"):
        module(x)


FRESH_PROCESS = """
import sys, torch, gatedrnn
from pathlib import Path
from gatedrnn.layers import torch_floor
from op_counter import GatedrnnOps
torch_floor.cache_file = lambda: Path(sys.argv[1])
def refuse(*args):
    raise AssertionError("measured again")
torch_floor._measure = refuse
torch.set_num_threads(int(sys.argv[2]))  # the parent's: the thread count is part of the bucket
module = gatedrnn.LSTM(4, 6)
with GatedrnnOps() as ops:
    module(torch.randn(5, 3, 4))
print(gatedrnn.kernel_choice(module, torch.randn(5, 3, 4))["kernel"], ops.total)
"""


def test_a_fresh_process_reads_the_file_without_measuring(floor):
    floor("measure")
    module = gatedrnn.LSTM(4, 6)
    module(torch.randn(5, 3, 4))
    assert len(floor.measured) == 1
    (record,) = json.loads(floor.path.read_text())["buckets"].values()
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(gatedrnn.__file__).parents[1]), tests])}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(floor.path), str(torch.get_num_threads())],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    kernel, ops = done.stdout.split()
    assert kernel == record["kernel"] and int(ops) == (1 if kernel == "gatedrnn" else 0)


def test_a_bad_isa_setting_does_not_reach_forward_through_the_floor(floor, monkeypatch):
    """The floor's bucket lookup needs the engine's build key; a GATEDRNN_ISA the build rejects must not make
    every forward raise (the engine's own load reports it, and the reference path runs)."""
    from gatedrnn.layers import torch_floor

    from gatedrnn.engine import _build, _flags

    floor("measure")
    monkeypatch.setenv("GATEDRNN_ISA", "no-such-isa")
    with pytest.raises(_flags.ISASettingError):
        _build.build_key()
    monkeypatch.setattr(torch_floor, "cache_file", _build.build_key)  # what the real cache_file calls first
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    for module in (gatedrnn.LSTM(4, 6), gatedrnn.GRU(4, 6)):
        output, _ = module(torch.randn(5, 3, 4))
        assert output.shape == (5, 3, 6)
