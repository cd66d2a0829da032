"""`pointcopy score` end to end, the cached judge against a local HTTP server, and the loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pointcopy.cli import main as cli_main
from pointcopy.eval import data, judge as judge_mod, mathverse

REPO = Path(__file__).resolve().parents[2]


def _run(*argv) -> int:
    return cli_main(["score", *map(str, argv)])


def test_mathvision_official_file_end_to_end(mathv_root, tmp_path):
    out = tmp_path / "o"
    name = "closed-source/Qwen/Qwen-VL-Max-CoT.jsonl"
    assert _run("mathvision", mathv_root / "outputs" / name, "--data", mathv_root, "--out", out) == 0
    official = json.loads((mathv_root / "outputs" / name.replace(".jsonl", "_result.json")).read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("coverage") == {"predictions": 3040, "items_in_split": 3040, "fraction": 1.0,
                                       "complete": True, "not_scored": 0, "duplicate_rows_dropped": 0,
                                       "duplicate_ids": [], "rows_with_gold_mismatch": 0}
    assert summary == official
    rows = data.read_jsonl(out / "items.jsonl")
    assert len(rows) == 3040 and {"id", "model_answer", "correct", "strict_extraction", "strict_correct"} <= set(rows[0])
    strict = json.loads((out / "summary_strict.json").read_text())
    assert set(strict) == set(official) | {"coverage"}
    report = (out / "report.md").read_text()
    assert "384/3040 = 12.63%" in report and "strict" in report


def test_mathvision_own_run_with_bad_rows(mathv_root, tmp_path):
    """Our own run file (id + response, no model_answer): extraction runs; bad rows are recorded, not fatal."""
    preds = tmp_path / "run.jsonl"
    rows = [{"id": "1", "response": "... so the answer is \\boxed{60}."},  # gold of item 1 is... looked up below
            {"id": "15", "response": "Wednesday. The answer is A."},
            {"id": "999999", "response": "\\boxed{1}"},
            {"id": "2", "response": None}]
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "o"
    assert _run("mathvision", preds, "--data", mathv_root, "--out", out) == 0
    got = {r["id"]: r for r in data.read_jsonl(out / "items.jsonl")}
    bench = data.load_mathvision(mathv_root)
    assert got["1"]["model_answer"] == "60" and got["1"]["correct"] == (bench.items["1"]["answer"] == "60")
    assert got["15"]["model_answer"] == "a" and got["15"]["correct"] is True
    assert "999999" in got["999999"]["error"] and "'response'" in got["2"]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["-all"].startswith(f"{int(got['1']['correct']) + 1}/2=")
    assert "Items not scored" in (out / "report.md").read_text()


def test_mathvista_official_file_end_to_end(mathvista_root, tmp_path):
    out = tmp_path / "o"
    res = mathvista_root / "results" / "llavar"
    assert _run("mathvista", res / "output_llavar.json", "--data", mathvista_root, "--out", out) == 0  # current
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("coverage")["complete"] is True
    assert summary == json.loads((res / "scores_llavar.json").read_text())
    out2 = tmp_path / "o2"
    res = mathvista_root / "results" / "gpt4"
    assert _run("mathvista", res / "output_gpt4_2shot_code.json", "--data", mathvista_root, "--out", out2,
                "--integer-rule", "legacy") == 0
    assert json.loads((out2 / "summary.json").read_text())["average"] == {"accuracy": "26.0", "correct": 260,
                                                                           "total": 1000}


def test_mathvista_own_run_jsonl(mathvista_root, tmp_path):
    preds = tmp_path / "run.jsonl"
    preds.write_text(json.dumps({"pid": "11", "response": "5"}) + "\n"
                     + json.dumps({"pid": "3", "response": "The correct answer is \\boxed{C}"}) + "\n")
    out = tmp_path / "o"
    assert _run("mathvista", preds, "--data", mathvista_root, "--out", out) == 0
    got = {r["id"]: r for r in data.read_jsonl(out / "items.jsonl")}
    assert got["11"]["extraction"] == "5" and got["11"]["correct"] is True  # integer fast path
    assert got["3"]["extraction"] is None and got["3"]["correct"] is False  # needs an LLM extractor
    assert got["3"]["strict_prediction"] == "145°" and got["3"]["strict_correct"] is True


def test_score_command_does_not_import_torch(mathv_root, tmp_path):
    code = ("import sys; from pointcopy.cli import main; "
            f"rc = main(['score', 'mathvision', {str(mathv_root / 'outputs' / 'Random-Chance.jsonl')!r}, "
            f"'--data', {str(mathv_root)!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "0 False False"


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "1", "response": "1"}\n')
    assert _run("mathvision", preds, "--data", tmp_path, "--out", tmp_path / "o") == 2
    assert "data/test.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- judge
class _FakeJudge(BaseHTTPRequestHandler):
    """OpenAI-compatible /chat/completions: extraction prompts get the boxed answer, judge prompts compare."""

    calls: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        if prompt.endswith("Extracted Answer: "):
            resp = prompt.rsplit("Model response: '", 1)[1]
            reply = "Extracted Answer: " + (resp.split("\\boxed{")[-1].split("}")[0] if "\\boxed{" in resp else "null")
        else:
            tail = prompt.rsplit("[Standard Answer]: ", 1)[1]
            gold, rest = tail.split("\n[Model_answer] : ", 1)
            ext = rest.split("\nJudgement:")[0]
            # first reply to a judge prompt is chatty: the scorer must ask again until it reads 0 or 1
            n_same = sum(1 for c in type(self).calls if c["body"]["messages"][0]["content"] == prompt)
            reply = "I think so" if n_same == 1 else ("Judgement: 1" if gold.strip() == ext.strip() else "0")
        payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        data_ = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data_)))
        self.end_headers()
        self.wfile.write(data_)

    def log_message(self, *a):
        pass


@pytest.fixture()
def fake_judge_server():
    _FakeJudge.calls = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_mathverse_judge_mode_with_cache(benchmarks_path, fake_judge_server, tmp_path, monkeypatch):
    root = benchmarks_path / "mathverse"
    bench = data.load_mathverse(root, "testmini_text_only")
    ids = list(bench.items)[:3]
    rows = [{"sample_index": ids[0], "response": f"so \\boxed{{{bench.items[ids[0]]['answer']}}}"},
            {"sample_index": ids[1], "response": "I cannot tell."},
            {"sample_index": ids[2], "response": "\\boxed{ZZZ}"}]
    preds = tmp_path / "run.jsonl"
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("POINTCOPY_JUDGE_BASE_URL", fake_judge_server)
    monkeypatch.setenv("POINTCOPY_JUDGE_MODEL", "fake-judge")
    monkeypatch.setenv("POINTCOPY_JUDGE_API_KEY", "sk-test")
    out, cache = tmp_path / "o", tmp_path / "cache"
    args = ("mathverse", preds, "--data", root, "--split", "testmini_text_only", "--out", out,
            "--mathverse-mode", "judge", "--judge-cache", cache)
    assert _run(*args) == 0
    got = {r["id"]: r for r in data.read_jsonl(out / "items.jsonl")}
    assert [got[i]["correct"] for i in ids] == [True, False, False]
    assert got[ids[1]]["extraction"] == "null"
    first_calls = len(_FakeJudge.calls)
    assert first_calls == 3 * 3  # 3 extractions + 3 judge prompts asked twice (chatty first reply)
    assert all(c["auth"] == "Bearer sk-test" and c["body"]["model"] == "fake-judge" for c in _FakeJudge.calls)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == {"accuracy": 0.333, "correct": 1, "total": 3}
    assert summary["problem_version"]["Text Only"]["correct"] == 1
    # re-scoring costs nothing: every call comes from the cache
    assert _run(*args[:-4], "--out", tmp_path / "o2", "--mathverse-mode", "judge", "--judge-cache", cache) == 0
    assert len(_FakeJudge.calls) == first_calls
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["judge"]["cache_hits"] == 9


def test_judge_never_answering_is_recorded(fake_judge_server, tmp_path):
    class Stubborn:
        config = None

        def ask(self, prompt, attempt=0):
            return "maybe"

    verdict, attempts = mathverse.llm_judge(Stubborn(), {"question": "q", "answer": "1"}, "1", max_attempts=3)
    assert verdict is None and attempts == 3


def test_judge_config_from_env_requires_model():
    with pytest.raises(judge_mod.JudgeError, match="POINTCOPY_JUDGE_MODEL"):
        judge_mod.JudgeConfig.from_env({"POINTCOPY_JUDGE_BASE_URL": "http://127.0.0.1:1/v1"})


def test_judge_unreachable_endpoint_raises(tmp_path):
    cfg = judge_mod.JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2)
    j = judge_mod.ChatJudge(cfg, tmp_path, retries=0)
    with pytest.raises(judge_mod.JudgeError, match="failed"):
        j.ask("hi")
    assert list(tmp_path.iterdir()) == []  # nothing cached for a failed call


def test_mathverse_deterministic_mode_is_quick_match(benchmarks_path, tmp_path):
    root = benchmarks_path / "mathverse"
    bench = data.load_mathverse(root, "public_subset")
    pid, item = next((k, v) for k, v in bench.items.items() if v["question_type"] == "free_form")
    assert mathverse.score_item(item, f"\\boxed{{{item['answer']}}}")["correct"]
    assert not mathverse.score_item(item, "\\boxed{nonsense}")["correct"]


# --------------------------------------------------------------------------------------------- loaders
def test_mathvision_loader_images_and_missing(mathv_root, tmp_path):
    bench = data.load_mathvision(mathv_root, "testmini")
    assert len(bench) == 304 and bench.missing_images == []
    assert all(Path(it["image_path"]).is_file() for it in bench.items.values())
    # a copy without images: every item reported, nothing raised
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "testmini.jsonl").write_text((mathv_root / "data" / "testmini.jsonl").read_text())
    bare = data.load_mathvision(tmp_path, "testmini")
    assert len(bare.missing_images) == 304


def test_mathverse_loaders(benchmarks_path):
    root = benchmarks_path / "mathverse"
    text_only = data.load_mathverse(root, "testmini_text_only")
    assert len(text_only) == 788 and all(it["image_path"] is None for it in text_only.items.values())
    pub = data.load_mathverse(root, "public_subset")
    assert len(pub) == 726 and pub.missing_images == []
    assert sum(1 for it in pub.items.values() if it["image_path"]) == 605


def test_mathvista_parquet_layout(mathvista_testmini, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = []
    for pid in ("1", "2", "3"):
        it = {k: v for k, v in mathvista_testmini.items[pid].items() if k not in ("image_path", "image_missing")}
        it["metadata"] = json.dumps(it["metadata"])
        it["choices"] = it["choices"] or []
        it["decoded_image"] = {"bytes": b"\x89PNG fake" if pid != "3" else None, "path": None}
        rows.append(it)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "testmini-00000-of-00001.parquet")
    bench = data.load_mathvista(tmp_path)
    assert list(bench.items) == ["1", "2", "3"]
    assert bench.items["1"]["image_bytes"].startswith(b"\x89PNG") and bench.items["1"]["metadata"]["source"]
    assert bench.missing_images == ["3"]
