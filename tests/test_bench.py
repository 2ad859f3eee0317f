"""The benchmark harness (`gatedrnn bench`), run once in --quick mode on tiny sizes: the JSON it writes,
the ratios it derives from the raw times, the tables it renders, and that it never overwrites a result.
No timing is asserted: only structure and arithmetic."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time

import pytest
import torch

import gatedrnn
from gatedrnn.bench import cases as bench_cases
from gatedrnn.bench.cases import BEST_PEER, ORT, OURS, TORCH, Case, Shape, Target, flop_count
from gatedrnn.bench.render import README_BEGIN, README_END, render_markdown, render_terminal, update_readme
from gatedrnn.bench.runner import calibrate, time_interleaved
from gatedrnn.bench.suite import free_path
from gatedrnn.cli import CLIError
from gatedrnn.cli import bench as bench_cli

REPEATS = 4
EXISTING = '{"an earlier result": true}\n'


def _cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = bench_cli.run(parser.parse_args(list(argv)))
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run whose --out already exists: (the existing path, the path written, the JSON, stdout)."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "result.json"
    out.write_text(EXISTING)
    with torch.no_grad():  # a step GEMM (batch 8) chosen in this process, so the run has a decision to record
        gatedrnn.GRU(4, 32)(torch.zeros(3, 8, 4))
    code, printed = _cli("--quick", "--repeats", str(REPEATS), "--threads", "2", "--out", str(out))
    assert code == 0
    written = folder / "result-2.json"
    return out, written, json.loads(written.read_text()), printed


def test_existing_output_is_not_overwritten(quick_run):
    out, written, _, printed = quick_run
    assert out.read_text() == EXISTING
    assert written.exists() and str(written) in printed


def test_json_records_the_environment(quick_run):
    result = quick_run[2]
    env = result["environment"]
    for key in ("torch_version", "onnxruntime_version", "cpu_model", "cpu", "blas", "threads", "backend_info",
                "load_average"):
        assert key in env, key
    assert env["threads"] == 2 and env["backend_info"]["backend"] in ("fused", "reference")
    cpu = env["cpu"]
    assert cpu["arch"] and cpu["family"].startswith(cpu["arch"]) and isinstance(cpu["isa"], list)
    if cpu["arch"] == "x86_64":
        assert "sse4_2" in cpu["isa"] and cpu["vendor"] in cpu["family"]
    assert env["git"]["commit"] is None or len(env["git"]["commit"]) == 40
    assert result["schema"] == 1 and result["date"][:4].isdigit() and result["config"]["repeats"] == REPEATS
    sgemm = result["sgemm"]
    assert len(sgemm["times_s"]) >= REPEATS
    assert sgemm["gflops"] == pytest.approx(sgemm["flops"] / statistics.median(sgemm["times_s"]) / 1e9)


def test_json_records_the_gemm_decisions_made_by_the_end_of_the_run(quick_run):
    recorded = quick_run[2]["gemm_decisions"]
    if gatedrnn.backend_info()["backend"] == "fused":
        assert recorded, "the GRU at batch 8 before the run chose a step GEMM"
    assert recorded == gatedrnn.backend_info()["gemm"]["decisions"][: len(recorded)]  # (later tests may add more)
    for decision in recorded:
        assert decision["choice"] in ("blas", "own")


def test_every_case_is_measured_with_the_requested_repeats(quick_run):
    result = quick_run[2]
    names = [case["name"] for case in result["cases"]]
    assert names == [case.name for case in bench_cases.make_cases(quick=True)]
    assert len(set(names)) == len(names)
    for case in result["cases"]:
        impls = case["impls"]
        assert impls[TORCH]["status"] == "ok", case["name"]
        expected = {OURS, TORCH, ORT} if case["kind"] == "infer" else {OURS, TORCH}
        if case["variant"] in bench_cases.LAYER_VARIANTS:  # a variant is also timed against our plain cell
            expected = {OURS, bench_cases.PLAIN, TORCH}
            if "layer" in bench_cases.LAYER_VARIANTS[case["variant"]]:  # and against its own Python loop
                expected.add(bench_cases.LOOP)
        assert set(impls) == expected, case["name"]
        if case["kind"] != "stream":  # streaming needs LSTM.step, which may not exist yet
            assert impls[OURS]["status"] == "ok", (case["name"], impls[OURS])
        if case["kind"] == "infer":
            assert impls[ORT]["status"] == "ok", (case["name"], impls[ORT])
        for impl in impls.values():
            if impl["status"] == "ok":
                times = impl["times_s"]
                assert len(times) >= REPEATS and all(t > 0 for t in times)
                assert impl["median_s"] == pytest.approx(statistics.median(times))
                assert impl["min_s"] == min(times) and impl["iqr_s"] >= 0
                assert impl["gflops"] == pytest.approx(case["flops"] / impl["median_s"] / 1e9)
                if case["kind"] == "stream":  # times are per step, a call ran STREAM_STEPS_PER_CALL steps
                    assert impl["inner_iterations"] % bench_cases.STREAM_STEPS_PER_CALL == 0
            else:
                assert impl["reason"]
        for impl, diff in case["max_abs_diff"].items():  # same weights, same outputs
            assert diff < 1e-4, (case["name"], impl, diff)


def test_ratios_come_from_the_medians(quick_run):
    for case in quick_run[2]["cases"]:
        impls = case["impls"]
        if impls[OURS]["status"] != "ok":
            assert case["ratio"] is None and case["met"] is None
            continue
        medians = {name: statistics.median(r["times_s"]) for name, r in impls.items() if r["status"] == "ok"}
        for peer, ratio in case["ratios"].items():
            assert ratio == pytest.approx(medians[peer] / medians[OURS])
        peers = {name: m for name, m in medians.items() if name != OURS}
        assert case["best_peer"] == min(peers, key=peers.get)
        if case["kind"] == "infer":  # inference is judged against the faster of torch.nn and onnxruntime
            assert case["ratio"] == pytest.approx(min(peers.values()) / medians[OURS])
        elif case["target"] is not None and case["target"]["against"] == bench_cases.PLAIN:  # a regulariser
            assert case["ratio"] == pytest.approx(medians[bench_cases.PLAIN] / medians[OURS])
        else:
            assert case["ratio"] == pytest.approx(medians[TORCH] / medians[OURS])
        target = case["target"]
        if target is None:
            assert case["met"] is None
        elif target["metric"] == "max_us_per_step":
            assert case["met"] == (medians[OURS] * 1e6 <= target["value"])
        else:
            assert case["met"] == (case["ratio"] >= target["value"])


def test_targets_are_the_issues(quick_run):
    targets = {case["name"]: case["target"] for case in quick_run[2]["cases"]}
    assert targets["lstm/train/B2-T6-I4-H8"] == {"metric": "ratio_min", "value": 1.25, "against": TORCH,
                                                 "description": ">= 1.25x vs torch.nn"}
    assert targets["gru/infer/B2-T6-I4-H8"]["against"] == BEST_PEER
    assert [bench_cases.gru_training_target(b) for b in (1, 16, 64)] == [3.0, 2.0, 1.2]
    full = {c.name: c.target for c in bench_cases.make_cases(quick=False)}
    assert full["lstm/stream/H256"] == Target("max_us_per_step", 3.0)
    assert full["lstm-packed/train/B64-T100-I64-H128"] == Target("ratio_min", 3.0, TORCH)
    assert full["lstm/stream/H64"] == Target("ratio_min", 4.0, TORCH)
    # regularisers: <= 1.15x our plain cell's time, LSTM and GRU, at the issue's two sizes
    assert full["gru-zoneout/train/B16-T100-I64-H128"] == Target("ratio_min", 1 / 1.15, bench_cases.PLAIN)
    assert full["lstm-weight_drop/train/B64-T100-I256-H256"] == Target("ratio_min", 1 / 1.15, bench_cases.PLAIN)
    assert full["lstm-layernorm/train/B64-T100-I256-H256"] == Target("ratio_min", 1 / 1.3, bench_cases.PLAIN)
    assert full["mingru/train/B16-T1024-I256-H256"] == Target("ratio_min", 5.0, TORCH)
    # short calls over large weights: inference of each cell at three sizes, no target (the README's own table)
    assert all(full[f"{cell}/infer/{bench_cases.Shape(*size).label()}"] is None
               for cell in ("lstm", "gru", "rnn") for size in bench_cases.SHORT_SIZES)
    assert len(full) == 4 * 6 + 3 * 3 + 2 + 1 + 2 + 2 * (3 * 2 + 2 + 2) + 1


def test_peak_memory_is_measured_for_both(quick_run):
    memory = quick_run[2]["memory"]
    assert [m["name"] for m in memory] == ["lstm/memory/B2-T6-I4-H8"]
    for entry in memory:
        ours, peer = entry["impls"][OURS], entry["impls"][TORCH]
        assert ours["status"] == peer["status"] == "ok", entry
        assert ours["peak_delta_bytes"] >= 0 and peer["peak_delta_bytes"] >= 0
        assert entry["ratio"] == pytest.approx(peer["peak_delta_bytes"] / max(ours["peak_delta_bytes"], 1))
        assert entry["met"] == (entry["ratio"] >= 1.0)


def test_tables_name_every_case(quick_run):
    result, printed = quick_run[2], quick_run[3]
    markdown, terminal = render_markdown(result), render_terminal(result)
    for case in result["cases"] + result["memory"]:
        assert f"| {case['name']} |" in markdown
        assert case["name"] in terminal and case["name"] in printed
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(rows) == len(result["cases"]) + len(result["memory"]) + 2  # + two header rows
    assert "targets met:" in terminal


def test_render_only_prints_an_existing_result(quick_run):
    code, printed = _cli("--render", str(quick_run[1]), "--format", "markdown")
    assert code == 0 and printed == render_markdown(quick_run[2])


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(CLIError, match="--repeats should be >= 7"):
        _cli("--repeats", "3", "--out", str(tmp_path / "x.json"))
    with pytest.raises(CLIError, match="matches no case"):
        _cli("--quick", "--only", "no-such-case", "--out", str(tmp_path / "x.json"))
    with pytest.raises(CLIError, match="could not read"):
        _cli("--render", str(tmp_path / "missing.json"))
    assert not (tmp_path / "x.json").exists()


def test_flop_count_of_the_gate_gemms():
    # forward 2*T*B*G*H*(I+P): LSTM G=4, (B,T,I,H) = (1,100,64,64)
    assert flop_count(Case("lstm", "infer", Shape(1, 100, 64, 64))) == 2 * 100 * 4 * 64 * 128
    assert flop_count(Case("gru", "train", Shape(16, 100, 64, 128))) == 3 * 2 * 1600 * 3 * 128 * 192
    # projection: the gate GEMMs see P, plus the projection itself 2*T*B*H*P
    proj = Shape(16, 100, 256, 256, P=128)
    assert flop_count(Case("lstm", "infer", proj, "proj")) == 2 * 1600 * 4 * 256 * 384 + 2 * 1600 * 256 * 128
    packed = Shape(64, 100, 64, 128)
    lengths = bench_cases.packed_lengths(packed)
    assert max(lengths) == 100 and min(lengths) >= 25 and len(lengths) == 64
    assert flop_count(Case("lstm", "train", packed, "packed")) == 3 * 2 * sum(lengths) * 4 * 128 * 192
    assert flop_count(Case("lstm", "stream", Shape(1, 1, 256, 256))) == 2 * 4 * 256 * 512


def test_free_path_and_readme_block(tmp_path):
    path = tmp_path / "2026-01-01.json"
    assert free_path(path) == path
    path.write_text("{}")
    (tmp_path / "2026-01-01-2.json").write_text("{}")
    assert free_path(path) == tmp_path / "2026-01-01-3.json"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    assert update_readme(readme, "| new |\n", source="x.json")
    text = readme.read_text()
    assert "old table" not in text and "| new |" in text and text.startswith("intro\n") and text.endswith("after\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, "| new |\n", source="x.json") and plain.read_text() == "no markers\n"


def test_slow_first_calls_do_not_set_the_block_size():
    """Like oneDNN's first training steps: a few slow calls, then fast ones. The warm-up (3 calls and at
    least warmup_s) must absorb them, even when they outnumber the 3 calls, so that k fits the fast calls."""
    calls = []

    def first_calls_slow() -> None:
        calls.append(None)
        time.sleep(0.01 if len(calls) <= 5 else 0.0002)

    k = calibrate(first_calls_slow, min_sample_s=0.01, warmup=3, warmup_s=0.08)
    # A slow call would give k = 0.01 / 0.01 = 1; fast calls give 50 (fewer on a busy machine, where a
    # 0.2 ms sleep overshoots, but not as few as 3 unless it lasts 3 ms).
    assert k >= 3, k


def test_an_implementation_that_raises_is_reported_not_fatal():
    def broken() -> None:
        raise RuntimeError("kernel exploded")

    samples, blocks, failures = time_interleaved({"ok": lambda: None, "broken": broken}, repeats=3,
                                                 min_sample_s=0.0005, warmup=1, warmup_s=0.0)
    assert len(samples["ok"]) == 3 and "broken" not in samples
    assert failures == {"broken": "RuntimeError: kernel exploded"}
