"""`pointcopy eval` end to end with tiny local models: generation -> predictions.jsonl -> scoring, resume after a
real `kill -9`, settings mismatch, pointing switch, plain Qwen2.5-VL baseline, missing and unreadable images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
import torch

from pointcopy.cli import main as cli_main
from pointcopy.eval import data
from pointcopy.eval.runner import PredictionLog

REPO = Path(__file__).resolve().parents[2]
TIMING = ("batch_seconds",)  # the only fields allowed to differ between two runs of the same settings


def _make_pointing_model(directory: Path) -> Path:
    """Tiny random pointcopy model with sharpened pointer heads, so greedy decoding mixes text and pointers (an
    unscaled random model never points, which would leave the pointer bookkeeping and --no-pointing untested)."""
    from pointcopy.presets import build_tiny_processor, tiny_model

    processor = build_tiny_processor()
    model = tiny_model(0, processor.tokenizer)
    with torch.no_grad():
        model.pointer.q_proj.weight.mul_(3)
        model.pointer.k_proj.weight.mul_(3)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _make_pointing_model(tmp_path_factory.mktemp("pointing") / "m")


@pytest.fixture(scope="module")
def mathv(benchmarks_path) -> Path:
    root = benchmarks_path / "mathvision"
    assert root.is_dir(), f"missing {root}"
    return root


def _eval(benchmark, model, data_dir, out, *extra) -> int:
    return cli_main(["eval", benchmark, "--model", str(model), "--data", str(data_dir), "--out", str(out),
                     "--max-new-tokens", "16", "--no-progress", *map(str, extra)])


def _preds(out: Path, key: str = "id") -> list[dict]:
    return data.read_jsonl(out / "predictions.jsonl")


def _strip(rows: list[dict]) -> dict[str, dict]:
    return {str(r["id"]): {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def test_end_to_end_mathvision(model_dir, mathv, tmp_path):
    out = tmp_path / "run"
    assert _eval("mathvision", model_dir, mathv, out, "--split", "testmini", "--limit", 6, "--batch-size", 4) == 0
    expected = list(data.load_mathvision(mathv, "testmini").items)[:6]
    preds = _preds(out)
    assert [r["id"] for r in preds] == expected  # benchmark order, each exactly once
    for r in preds:
        assert isinstance(r["response"], str) and "error" not in r
        assert "\\boxed{}" in r["prompt"]  # the MATH-V CoT prompt
        assert r["n_copies"] == r["response"].count("<|copy_") == len(r["copied_cells"])
        assert 1 <= r["n_tokens"] <= 16
    assert sum(r["n_copies"] for r in preds) > 0  # this model points: the pointer path was exercised
    assert [r["batch_size"] for r in preds] == [4] * 4 + [2] * 2
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["model_kind"] == "pointcopy" and run["settings"]["max_new_tokens"] == 16
    assert run["settings"]["decoding"] == "greedy" and run["info"]["batch_size"] == 4

    items = data.read_jsonl(out / "items.jsonl")
    assert [it["id"] for it in items] == expected and all("error" not in it for it in items)
    summary = json.loads((out / "summary.json").read_text())
    n_correct = sum(it["correct"] for it in items)
    assert summary["-all"].startswith(f"{n_correct}/6=")
    levels = [v for k, v in summary.items() if k.startswith("-level") and "_" not in k]
    assert sum(int(v.split("/")[1].split("=")[0]) for v in levels) == 6  # every item in exactly one level
    assert json.loads((out / "summary_strict.json").read_text())["-all"].endswith("%")
    report = (out / "report.md").read_text()
    assert "mathvision score report" in report and "/6 = " in report

    # a rerun of a finished run generates nothing and leaves the file byte for byte unchanged
    before = (out / "predictions.jsonl").read_bytes()
    assert _eval("mathvision", model_dir, mathv, out, "--split", "testmini", "--limit", 6, "--batch-size", 4) == 0
    assert (out / "predictions.jsonl").read_bytes() == before

    # other settings: refused, naming the setting; nothing written
    code = _eval("mathvision", model_dir, mathv, out, "--split", "testmini", "--limit", 6, "--prompt", "direct")
    assert code == 2 and (out / "predictions.jsonl").read_bytes() == before


def test_settings_mismatch_message(model_dir, mathv, tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval("mathvision", model_dir, mathv, out, "--split", "testmini", "--limit", 2) == 0
    capsys.readouterr()
    assert _eval("mathvision", model_dir, mathv, out, "--split", "testmini", "--limit", 2, "--max-new-tokens",
                 8) == 2  # the later --max-new-tokens wins
    err = capsys.readouterr().err
    assert "max_new_tokens: run.json has 16, this run has 8" in err and "refusing to resume" in err


_SLOW_CLI = """
import sys, time
import pointcopy.inference as inference
_generate = inference.generate
def slow(*a, **k):  # widen the window between batch writes so the parent can kill mid-run
    out = _generate(*a, **k)
    time.sleep(0.4)
    return out
inference.generate = slow
from pointcopy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_9(model_dir, mathv, tmp_path):
    args = ["mathvision", "--model", str(model_dir), "--data", str(mathv), "--split", "testmini", "--limit", "12",
            "--batch-size", "2", "--max-new-tokens", "16", "--no-progress"]
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, "eval", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pred = out / "predictions.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if pred.exists() and pred.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"eval finished or died before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    survived = pred.read_bytes()
    n_survived = survived.count(b"\n")
    assert 2 <= n_survived < 12, "the kill must land mid-run"
    with open(pred, "ab") as f:  # a torn write: half a line, no newline
        f.write(b'{"id": "999", "prompt": "Please solve')

    assert cli_main(["eval", *args, "--out", str(out)]) == 0
    final = pred.read_bytes()
    assert final.startswith(survived)  # lines written before the kill were kept, not regenerated
    resumed = _preds(out)
    ids = [r["id"] for r in resumed]
    assert len(ids) == len(set(ids)) == 12 and "999" not in ids
    assert ids == list(data.load_mathvision(mathv, "testmini").items)[:12]
    assert len(data.read_jsonl(out / "items.jsonl")) == 12

    ref = tmp_path / "uninterrupted"
    assert cli_main(["eval", *args, "--out", str(ref)]) == 0
    assert _strip(resumed) == _strip(_preds(ref))


def test_no_pointing(model_dir, mathv, tmp_path):
    out = tmp_path / "np"
    assert _eval("mathvision", model_dir, mathv, out, "--split", "testmini", "--limit", 4, "--no-pointing") == 0
    preds = _preds(out)
    assert len(preds) == 4 and all(r["n_copies"] == 0 and "<|copy_" not in r["response"] for r in preds)
    assert all(r["n_tokens"] == 16 for r in preds)  # it did generate: text instead of pointers
    assert json.loads((out / "run.json").read_text())["settings"]["model_kind"] == "pointcopy-no-pointing"


def test_baseline_qwen_equals_converted_model_without_pointing(mathv, tmp_path):
    """A plain Qwen2.5-VL through --baseline-qwen and the same checkpoint converted to pointcopy (identity heads)
    with pointing disabled have the same vocabulary logits, so greedy runs must agree item for item."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from pointcopy.presets import build_tiny_processor, plain_qwen_config, tiny_config

    processor = build_tiny_processor()
    qwen_cfg = plain_qwen_config(tiny_config(processor.tokenizer))
    torch.manual_seed(1)
    base_dir = tmp_path / "qwen"
    Qwen2_5_VLForConditionalGeneration(qwen_cfg).eval().save_pretrained(base_dir)
    processor.save_pretrained(base_dir)

    a, b = tmp_path / "baseline", tmp_path / "converted"
    assert _eval("mathvision", base_dir, mathv, a, "--split", "testmini", "--limit", 4, "--batch-size", 2,
                 "--baseline-qwen") == 0
    assert _eval("mathvision", base_dir, mathv, b, "--split", "testmini", "--limit", 4, "--batch-size", 2,
                 "--no-pointing") == 0
    assert json.loads((a / "run.json").read_text())["settings"]["model_kind"] == "baseline-qwen"
    base = _preds(a)
    assert len(base) == 4 and all(isinstance(r["response"], str) and r["n_copies"] == 0 for r in base)
    assert _strip(base) == _strip(_preds(b))
    assert len(data.read_jsonl(a / "items.jsonl")) == 4


def test_mathvista_without_images_records_every_item(model_dir, benchmarks_path, tmp_path):
    out = tmp_path / "mv"
    assert _eval("mathvista", model_dir, benchmarks_path / "mathvista", out, "--limit", 5) == 0
    preds = data.read_jsonl(out / "predictions.jsonl")
    assert [r["pid"] for r in preds] == ["1", "2", "3", "4", "5"]
    for r in preds:
        assert r["response"] is None and f"item {r['pid']!r}: image missing: field 'image'" in r["error"]
        assert r["prompt"].startswith("Hint: ")  # the official query was still built and recorded
    items = data.read_jsonl(out / "items.jsonl")
    assert [it["id"] for it in items] == ["1", "2", "3", "4", "5"] and all("image missing" in it["error"] for it in items)
    assert json.loads((out / "summary.json").read_text())["average"]["total"] == 0
    assert "5 items were not generated" in (out / "report.md").read_text()


def test_unreadable_and_missing_images_do_not_stop_the_run(model_dir, mathv, tmp_path):
    """A small MATH-V-layout copy: one good image, one corrupt file, one absent; the good item is generated."""
    root = tmp_path / "mv"
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    rows = data.read_jsonl(mathv / "data" / "testmini.jsonl")[:3]
    shutil.copy(mathv / rows[0]["image"], root / rows[0]["image"])
    (root / rows[1]["image"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data.write_jsonl(root / "data" / "testmini.jsonl", rows)
    out = tmp_path / "run"
    assert _eval("mathvision", model_dir, root, out, "--split", "testmini", "--batch-size", 3) == 0
    preds = {r["id"]: r for r in _preds(out)}
    good, corrupt, absent = (r["id"] for r in rows)
    assert isinstance(preds[good]["response"], str) and preds[good]["batch_size"] == 1
    assert f"item {corrupt!r}: image unreadable: field 'image'" in preds[corrupt]["error"]
    assert f"item {absent!r}: image missing: field 'image'" in preds[absent]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["-all"].split("=")[0].endswith("/1")  # only the generated item is in the official summary
    assert len(data.read_jsonl(out / "items.jsonl")) == 3


def test_prediction_log_torn_tail_and_corruption(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "1", "response": "a"}\n{"id": "2", "response": "b"}\n{"id": "3", "resp')
    log = PredictionLog(path, "id")
    assert list(log.load()) == ["1", "2"]
    assert path.read_bytes().endswith(b'"b"}\n')  # truncated to the last whole line
    log.append([{"id": "3", "response": "c"}])
    assert list(log.load()) == ["1", "2", "3"]
    path.write_bytes(b'{"id": "1"}\n{"id": "2"\n{"id": "3"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: malformed line"):
        log.load()
    path.write_bytes(b'{"id": "1"}\n{"id": "1"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: id '1' appears twice"):
        log.load()


# --------------------------------------------------------------------------------------------- user errors
def test_model_path_and_checkpoint_mistakes_are_one_line(model_dir, mathv, tmp_path, capsys):
    """A mistyped local path went to the hub as an id (retries, then a traceback); a damaged checkpoint failed deep
    inside transformers. Each now ends with one line naming the path, before a model loads."""
    base = ("mathvision", "--data", str(mathv), "--split", "testmini", "--limit", "1", "--no-progress")

    def run(model, out):
        code = cli_main(["eval", base[0], "--model", str(model), *base[1:], "--out", str(tmp_path / out)])
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "runs" / "no-such-model", "a")
    assert code == 2 and "no such model directory" in err and "Traceback" not in err
    bad_json = tmp_path / "bad_json"
    shutil.copytree(model_dir, bad_json)
    (bad_json / "config.json").write_text('{"model_type": "pointcopy",')
    code, err = run(bad_json, "b")
    assert code == 2 and f"{bad_json / 'config.json'}: malformed config.json" in err
    cut = tmp_path / "cut"
    shutil.copytree(model_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run(cut, "c")
    assert code == 2 and f"{weights}: damaged safetensors file" in err and "truncated" in err
    code, err = run(model_dir, "d")  # the intact checkpoint still runs
    assert code == 0, err
    for flag, value in (("--batch-size", "0"), ("--max-new-tokens", "0"), ("--limit", "-1"), ("--timeout", "0")):
        with pytest.raises(SystemExit) as exc:
            cli_main(["eval", base[0], "--model", str(model_dir), *base[1:], "--out", str(tmp_path / "e"),
                      flag, value])
        assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_special_tokens_in_a_prompt_and_prompts_past_the_positions(model_dir):
    from pointcopy import PointCopyForConditionalGeneration
    from pointcopy.inference import generate
    from pointcopy.processing import PointCopyProcessor

    model = PointCopyForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = PointCopyProcessor.from_pretrained(model_dir)
    image = Image.new("RGB", (56, 56), "white")
    for text in ("two <|image_pad|> here", "point <|copy_3|>", "end<|im_end|>\n<|im_start|>assistant\n"):
        with pytest.raises(ValueError, match="special token"):
            generate(model, processor, ["ok", text], [[image], [image]], max_new_tokens=2)
    limit = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"model has {limit} positions"):
        generate(model, processor, ["word " * (limit + 10)], [[image]], max_new_tokens=2)
