"""Numbers a user reads are computed: the README's generated blocks equal what `python -m gatedrnn.bench.readme`
renders from the committed result files, the demo prints what its results say (and only that), and the task
descriptions hard-code no number that `baselines()` computes."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from gatedrnn.bench import readme
from gatedrnn.cli import main
from gatedrnn.cli.demo import transcript

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_blocks_equal_their_result_files() -> None:
    text = (ROOT / "README.md").read_text()
    found = readme.blocks_in(text)
    assert set(found) == set(readme.BLOCKS), "a generated block is missing from README.md"
    rendered = readme.blocks_in(readme.render(text, ROOT))
    for name in readme.BLOCKS:
        assert found[name] == rendered[name], f"README's {name} block is stale: run `make readme`"


def test_the_check_fails_when_a_result_file_changes(tmp_path: Path) -> None:
    for part in ("README.md", "docs/results", "benchmarks/results"):
        source, target = ROOT / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.write_text(source.read_text()) if source.is_file() else
         __import__("shutil").copytree(source, target))
    assert readme.main(["--check", "--root", str(tmp_path)]) == 0
    demo = tmp_path / readme.DEMO_RESULTS
    summary = json.loads(demo.read_text())
    summary["rows"][0]["test_mse"] += 0.5
    demo.write_text(json.dumps(summary))
    assert readme.main(["--check", "--root", str(tmp_path)]) == 1
    assert readme.main(["--root", str(tmp_path)]) == 0  # rewrites the block
    assert readme.main(["--check", "--root", str(tmp_path)]) == 0


def test_timings_state_their_cpu() -> None:
    blocks = readme.blocks_in((ROOT / "README.md").read_text())
    demo = json.loads((ROOT / readme.DEMO_RESULTS).read_text())
    assert demo["machine"].split(",")[0] in blocks["demo"]
    for path in sorted((ROOT / readme.TASK_RESULTS).glob("*.json")):
        assert json.loads(path.read_text())["environment"]["cpu_model"] in blocks["tasks"]
    init = json.loads((ROOT / readme.INIT_RESULTS).read_text())
    assert init["environment"]["cpu_model"] in blocks["init"]
    for path, _ in readme.SPEED_RUNS:
        environment = json.loads((ROOT / path).read_text())["environment"]
        assert str(path) in blocks["speed"] and environment["cpu_model"] in blocks["speed"]
        assert f"load {environment['load_average'][0]:.2f}" in blocks["speed"]


def summary(rnn_mse: float, rnn_vowels: float) -> dict:
    return {"settings": {"seq_len": 50, "steps": 2000, "batch_size": 64, "hidden_size": 32}, "out_dir": "out/demo",
            "backend": {"backend": "fused", "reason": ""}, "machine": "Some CPU, 1 thread", "load_average": 0.3,
            "baseline_mse": 0.17, "total_seconds": 50.0, "report": None,
            "rows": [{"cell": "rnn", "parameters": 1, "test_mse": rnn_mse, "accuracy": 0.1, "seconds": 1.0},
                     {"cell": "lstm", "parameters": 2, "test_mse": 0.002, "accuracy": 0.9, "seconds": 2.0}],
            "vowels": {"steps": 300, "classes": 9, "channels": 12, "lengths": [7, 29], "published": "someone 0.99",
                       "rows": [{"cell": "rnn", "parameters": 1, "test_accuracy": rnn_vowels, "seconds": 1.0},
                                {"cell": "lstm", "parameters": 2, "test_accuracy": 0.95, "seconds": 1.0}]}}


def test_the_demo_readings_follow_the_results() -> None:
    weak = "\n".join(transcript(summary(rnn_mse=0.168, rnn_vowels=0.70)))
    assert "LSTM solved it" in weak and "RNN stayed at the baseline" in weak
    assert "falls behind LSTM by 0.250" in weak and "keeps up" not in weak
    assert "chance 0.111 (9 classes)" in weak and "total 50 s (Some CPU, 1 thread; load average 0.3" in weak
    strong = "\n".join(transcript(summary(rnn_mse=0.001, rnn_vowels=0.94)))
    assert "RNN, LSTM solved it" in strong and "the plain RNN keeps up (0.940 vs LSTM 0.950)" in strong
    five = copy.deepcopy(summary(0.001, 0.9))
    five["vowels"]["classes"] = 5
    assert "chance 0.200 (5 classes)" in "\n".join(transcript(five))


def test_the_demo_prints_its_transcript(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--no-report", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert printed.splitlines() == "\n".join(transcript(results)).splitlines()


@pytest.mark.parametrize("module", ["sunspots", "charlm"])
def test_task_descriptions_do_not_restate_computed_baselines(module: str) -> None:
    from gatedrnn.tasks import TASKS

    info = TASKS[module].info
    source = (ROOT / "src" / "gatedrnn" / "tasks" / f"{module}.py").read_text()
    baseline_lines = [line for line in source.split('"""')[1].splitlines() if "aseline" in line]
    numbers = re.findall(r"\d+\.\d+", " ".join([info.baseline, *baseline_lines]))
    published = {"1.36"}  # BN-LSTM on text8, a citation
    assert set(numbers) <= published, f"{module}: numbers that baselines() computes: {numbers}"


def test_tasks_baselines_prints_computed_numbers(capsys) -> None:
    from gatedrnn.tasks import get_task

    assert main(["tasks", "temporal_order", "--baselines", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["baselines"] == get_task("temporal_order").baselines()
