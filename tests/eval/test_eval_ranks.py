"""`pointcopy eval` under torchrun: two real CPU processes each generate their round-robin share of the batches,
rank 0 merges and scores, and the merged predictions (and scores) equal a one-process run's item for item;
rerun, every rank finds its items done."""

from __future__ import annotations

import json
import subprocess

import pytest

from testsupport import torchrun_cli
from pointcopy.cli import main as cli_main
from pointcopy.eval import data

from test_eval_runner import _make_pointing_model, _strip

pytestmark = pytest.mark.slow


def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    return torchrun_cli(["eval", *args], port)


def test_two_ranks_merge_to_the_one_process_predictions(benchmarks_path, tmp_path):
    model = _make_pointing_model(tmp_path / "m")
    mathv = benchmarks_path / "mathvision"
    args = ["mathvision", "--model", str(model), "--data", str(mathv), "--split", "testmini", "--limit", "11",
            "--batch-size", "2", "--max-new-tokens", "16", "--no-progress"]
    assert cli_main(["eval", *args, "--out", str(tmp_path / "one")]) == 0
    res = _torchrun([*args, "--out", str(tmp_path / "two")], 29611)
    assert res.returncode == 0, res.stderr[-3000:]
    one = data.read_jsonl(tmp_path / "one" / "predictions.jsonl")
    two = data.read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert [r["id"] for r in two] == [r["id"] for r in one] == list(data.load_mathvision(mathv, "testmini").items)[:11]
    assert _strip(two) == _strip(one)
    shares = [data.read_jsonl(tmp_path / "two" / "ranks" / f"{k}-of-2" / "predictions.jsonl") for k in range(2)]
    assert [len(s) for s in shares] == [6, 5]  # batches 0, 2, 4 (the last a single item) and 1, 3
    assert json.loads((tmp_path / "two" / "summary.json").read_text()) == \
        json.loads((tmp_path / "one" / "summary.json").read_text())
    again = _torchrun([*args, "--out", str(tmp_path / "two")], 29612)  # resumed: nothing left to generate
    assert again.returncode == 0 and "generated 0 items" in again.stderr, again.stderr[-2000:]
    assert data.read_jsonl(tmp_path / "two" / "predictions.jsonl") == two
