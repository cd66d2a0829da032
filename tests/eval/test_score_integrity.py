"""A score cannot be inflated or corrupted by its inputs: repeated ids, gold fields in prediction rows, an empty
file, text UTF-8 cannot encode, a crash while writing, a second run into the same directory, and a judge endpoint
that would leak a key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pointcopy import files
from pointcopy.cli import main as cli_main
from pointcopy.eval import data, judge as judge_mod

MODEL_FILE = "open-source/LLavA/LLaVA-v1.5-7B.jsonl"


def _score(*argv) -> int:
    return cli_main(["score", *map(str, argv)])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def official_rows(mathv_root):
    return data.read_jsonl(mathv_root / "outputs" / MODEL_FILE)


def _pct(out) -> float:
    s = json.loads((out / "summary.json").read_text())["-all"]  # "c/n=xx.xx%"
    c, n = s.split("=")[0].split("/")
    return int(c) / int(n)


def test_repeated_ids_cannot_inflate_the_score(mathv_root, official_rows, tmp_path, capsys):
    """The probe: wrong rows replaced by copies of right ones. Before: counted again (accuracy roughly doubled)."""
    right = [r for r in official_rows if r["correct"]]
    wrong_ids = {r["id"] for r in official_rows if not r["correct"]}
    forged = [r for r in official_rows if r["id"] not in wrong_ids] + [right[n % len(right)] for n in range(500)]
    preds = _write_jsonl(tmp_path / "forged.jsonl", forged)
    assert _score("mathvision", preds, "--data", mathv_root, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "500 rows repeat an id" in err and "--keep-first" in err
    assert not (tmp_path / "o" / "summary.json").exists()
    # --keep-first scores each id once and says so in summary.json itself
    assert _score("mathvision", preds, "--data", mathv_root, "--out", tmp_path / "k", "--keep-first") == 0
    assert "duplicate rows dropped" in capsys.readouterr().err
    cover = json.loads((tmp_path / "k" / "summary.json").read_text())["coverage"]
    n_unique = len(official_rows) - len(wrong_ids)
    assert cover["duplicate_rows_dropped"] == 500 and cover["predictions"] == n_unique
    assert cover["items_in_split"] == 3040 and cover["complete"] is False
    assert _pct(tmp_path / "k") == 1.0  # only the right rows remain, each counted once
    assert "duplicate rows dropped" in (tmp_path / "k" / "report.md").read_text()


def test_gold_fields_come_from_the_benchmark(mathv_root, mathvista_root, mathvista_testmini, tmp_path):
    bench = data.load_mathvision(mathv_root)
    item = bench.items["1"]
    fake = "999" if item["answer"] != "999" else "998"
    preds = _write_jsonl(tmp_path / "p.jsonl", [
        {"id": "1", "response": f"\\boxed{{{fake}}}", "model_answer": fake, "answer": fake, "options": []}])
    assert _score("mathvision", preds, "--data", mathv_root, "--out", tmp_path / "o") == 0
    row = data.read_jsonl(tmp_path / "o" / "items.jsonl")[0]
    assert row["correct"] is False and row["strict_correct"] is False
    assert set(row["gold_mismatch"]) >= {"answer"}
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["coverage"]["rows_with_gold_mismatch"] == 1
    assert "gold fields that differ" in (tmp_path / "o" / "report.md").read_text()
    # MathVista: a row turning a multiple-choice item into a free-form one with its own answer
    pid, mc = next((k, v) for k, v in mathvista_testmini.items.items() if v["question_type"] == "multi_choice")
    preds = tmp_path / "v.json"
    preds.write_text(json.dumps({pid: {"pid": pid, "response": "7", "extraction": "7", "answer": "7",
                                       "question_type": "free_form", "answer_type": "integer", "choices": None}}))
    assert _score("mathvista", preds, "--data", mathvista_root, "--out", tmp_path / "v") == 0
    row = data.read_jsonl(tmp_path / "v" / "items.jsonl")[0]
    assert row["correct"] is False and {"answer", "question_type", "answer_type", "choices"} <= set(
        row["gold_mismatch"])


def test_subset_coverage_and_empty_file(mathv_root, official_rows, tmp_path, capsys):
    preds = _write_jsonl(tmp_path / "p.jsonl", official_rows[:40])
    assert _score("mathvision", preds, "--data", mathv_root, "--out", tmp_path / "o") == 0
    cover = json.loads((tmp_path / "o" / "summary.json").read_text())["coverage"]
    assert (cover["predictions"], cover["items_in_split"], cover["fraction"], cover["complete"]) == (
        40, 3040, round(40 / 3040, 4), False)
    assert json.loads((tmp_path / "o" / "summary_strict.json").read_text())["coverage"] == cover
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit) as exc:  # refused while parsing the arguments
        _score("mathvision", empty, "--data", mathv_root, "--out", tmp_path / "e")
    assert exc.value.code == 2 and "empty file" in capsys.readouterr().err
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    assert _score("mathvision", blank, "--data", mathv_root, "--out", tmp_path / "e") == 2
    assert "no prediction rows" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _score("mathvision", preds, "--data", mathv_root, "--out", empty)
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err


def test_lone_surrogates_are_written_and_read_back(mathv_root, official_rows, tmp_path):
    """A lone surrogate in an extracted answer (legal in a JSON input file) used to raise UnicodeEncodeError half-way
    through items.jsonl, leaving it torn beside the previous run's summary.json."""
    out = tmp_path / "o"
    assert _score("mathvision", _write_jsonl(tmp_path / "a.jsonl", official_rows[:5]), "--data", mathv_root,
                  "--out", out) == 0
    text = "so the answer is \\boxed{5\ud800}"
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "1", "response": text}) + "\n")  # json escapes it: a legal input file
    assert _score("mathvision", preds, "--data", mathv_root, "--out", out) == 0
    for name in ("items.jsonl", "summary.json", "summary_strict.json", "report.md"):
        (out / name).read_bytes().decode("utf-8")  # valid UTF-8
    rows = data.read_jsonl(out / "items.jsonl")
    assert len(rows) == 1 and rows[0]["model_answer"] == "5\ud800"  # the escape round-trips exactly
    assert json.loads((out / "summary.json").read_text())["coverage"]["predictions"] == 1


def test_a_crash_while_writing_leaves_the_previous_outputs(mathv_root, official_rows, tmp_path, monkeypatch,
                                                           capsys):
    out = tmp_path / "o"
    assert _score("mathvision", _write_jsonl(tmp_path / "a.jsonl", official_rows[:30]), "--data", mathv_root,
                  "--out", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:  # the third of the four output files: disk full
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code = _score("mathvision", _write_jsonl(tmp_path / "b.jsonl", official_rows[:60]), "--data", mathv_root,
                  "--out", out)
    assert code == 2 and "No space left on device" in capsys.readouterr().err and len(calls) == 3
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # no torn file, no new file beside old ones, no temp files left behind


def test_a_second_run_into_a_locked_directory_is_refused(mathv_root, official_rows, tmp_path, capsys):
    out = tmp_path / "o"
    preds = _write_jsonl(tmp_path / "p.jsonl", official_rows[:10])
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pointcopy.files import DirLock; DirLock(sys.argv[1], 'pointcopy eval').acquire(); "
        "print('locked', flush=True); time.sleep(600)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _score("mathvision", preds, "--data", mathv_root, "--out", out) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} (pointcopy eval)" in err and "in use" in err
        # `pointcopy eval` checks the lock before it loads a model (the path need not even exist)
        assert cli_main(["eval", "mathvision", "--model", str(tmp_path / "no-model"), "--data", str(mathv_root),
                         "--out", str(out), "--no-progress"]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.05)
    assert _score("mathvision", preds, "--data", mathv_root, "--out", out) == 0  # a killed holder frees it


# --------------------------------------------------------------------------------------------- judge endpoint
ENV = {"POINTCOPY_JUDGE_MODEL": "m", "OPENAI_API_KEY": "sk-generic"}


def test_generic_openai_key_goes_only_to_openai():
    cfg = judge_mod.JudgeConfig.from_env({**ENV, "POINTCOPY_JUDGE_BASE_URL": "https://judge.example.org/v1"})
    assert cfg.api_key is None
    cfg = judge_mod.JudgeConfig.from_env({**ENV, "POINTCOPY_JUDGE_BASE_URL": "https://api.openai.com/v1"})
    assert cfg.api_key == "sk-generic"
    cfg = judge_mod.JudgeConfig.from_env({**ENV, "POINTCOPY_JUDGE_BASE_URL": "https://judge.example.org/v1",
                                          "POINTCOPY_JUDGE_API_KEY": "sk-own"})
    assert cfg.api_key == "sk-own"


@pytest.mark.parametrize("url, ok", [("http://127.0.0.1:8000/v1", True), ("http://localhost:8000/v1", True),
                                     ("http://[::1]:8000/v1", True), ("https://judge.example.org/v1", True),
                                     ("http://judge.example.org/v1", False), ("http://10.0.0.5:8000/v1", False),
                                     ("ftp://127.0.0.1/v1", False)])
def test_plain_http_only_to_loopback(url, ok):
    env = {**ENV, "POINTCOPY_JUDGE_BASE_URL": url}
    if ok:
        judge_mod.JudgeConfig.from_env(env)
        return
    with pytest.raises(judge_mod.JudgeError, match="http"):
        judge_mod.JudgeConfig.from_env(env)
    if url.startswith("http://"):
        judge_mod.JudgeConfig.from_env({**env, "POINTCOPY_JUDGE_ALLOW_HTTP": "1"})  # told to: allowed


def test_judge_does_not_follow_redirects_with_the_key(tmp_path):
    """urllib would resend the Authorization header to a redirect target; the judge stops at the 30x."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
            self.end_headers()

        do_GET = do_POST  # noqa: N815

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = judge_mod.JudgeConfig(base_url=f"http://127.0.0.1:{srv.server_port}/v1", model="m", api_key="sk-x",
                                    timeout_s=5)
        with pytest.raises(judge_mod.JudgeError, match="302"):
            judge_mod.ChatJudge(cfg, tmp_path, retries=0).ask("hi")
    finally:
        srv.shutdown()
    assert seen == [("/v1/chat/completions", "Bearer sk-x")]


def test_mathverse_judge_free_report_says_it_is_not_the_official_scoring(benchmarks_path, tmp_path):
    root = benchmarks_path / "mathverse"
    bench = data.load_mathverse(root, "testmini_text_only")
    sid = next(iter(bench.items))
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"sample_index": sid, "response": "So the answer is B."}])
    assert _score("mathverse", preds, "--data", root, "--split", "testmini_text_only", "--out", tmp_path / "o") == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "not the official `--quick_match`" in report
