"""The v1g construction pipeline (pointcopy.pipeline.{inputs,decompose,filter,build}): the shapes decomposer inverts
the text-only traces, every filter rule fires on the case it names, the ground-truth build reproduces the shapes
builder's records, an LLM run against a real local OpenAI-compatible server records every failure and costs no
request when rerun, a `kill -9` resumes without loss or duplicates, and shards merge to the one-process output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pointcopy.data.shapes.build import build_split, read_items
from pointcopy.data.shapes.scene import Scene, SceneConfig
from pointcopy.data.shapes.traces import describe, text_only
from pointcopy.pipeline.build import BuildOptions, build
from pointcopy.pipeline.decompose import (Decomposition, LLMDecomposer, ShapesDecomposer, load_examples,
                                          parse_answer)
from pointcopy.pipeline.filter import FilterOptions, check_boxes, check_decomposition
from pointcopy.pipeline.inputs import InputError, read_inputs, shapes_inputs, write_inputs
from pointcopy.llm import LLMSettings
from pointcopy.pipeline.replay import ReplayServer

REPO = Path(__file__).resolve().parents[2]
MODEL = str(REPO / "src/pointcopy/embedded/assets/shapes-tiny")
CONFIG = SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO / "src")}
QUIET = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    build_split(root / "train", 24, seed=7, config=CONFIG, progress=False)
    return root / "train"


@pytest.fixture(scope="module")
def inputs(split, tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "inputs.jsonl"
    write_inputs(shapes_inputs(split), path)
    return path


def _copy_rows(split: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (split / "copy.jsonl").read_text().splitlines())}


def _v1g(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "v1g.jsonl").read_text().splitlines()]


# ---- decomposition -----------------------------------------------------------------------------------------------
def test_shapes_decomposer_inverts_the_text_only_trace(split):
    copy = _copy_rows(split)
    for item in read_items(split):
        scene = Scene.from_dict(item["scene"])
        trace = copy[item["id"]]["conversations"][1]["value"]
        plain = text_only(trace, scene)
        assert "detect(" not in plain and "<obj" not in plain and "region" not in plain
        dec = ShapesDecomposer.decompose(plain)
        assert dec.reasoning == trace
        assert [o["description"] for o in dec.objects.values()] == [describe(o) for o in scene.objects]


def test_parse_answer_is_strict_json_with_a_fence_tolerated():
    good = {"reasoning": 'detect(query="bar", objects=["<obj1>"]) The <obj1> is 4.', "obj_list": {"<obj1>": "a bar"}}
    assert parse_answer(json.dumps(good)).objects == {"<obj1>": {"description": "a bar", "type": None}}
    assert parse_answer("```json\n" + json.dumps(good) + "\n```").reasoning.startswith("detect(")
    listed = dict(good, obj_list=[{"id": "obj1", "type": "bar", "description": "a bar"}])
    assert parse_answer(json.dumps(listed)).objects == {"<obj1>": {"description": "a bar", "type": "bar"}}
    for bad, why in [("Sure! Here it is: " + json.dumps(good), "not a JSON object"),
                     (json.dumps({"reasoning": "x"}), "lacks 'obj_list'"),
                     (json.dumps(dict(good, obj_list={"first": "a bar"})), "not an object id"),
                     (json.dumps(dict(good, obj_list=[{"id": "<obj1>", "description": "a"},
                                                      {"id": "<obj1>", "description": "b"}])), "twice"),
                     (json.dumps([good]), "expected a JSON object")]:
        with pytest.raises(ValueError, match=why):
            parse_answer(bad)


def test_shipped_fewshot_examples_pass_the_rules_and_a_bad_one_is_named(tmp_path):
    assert len(load_examples()) >= 3
    row = {"question": "q", "reasoning": "r", "output": {"reasoning": 'detect(query="a", objects=["<obj1>"])',
                                                         "obj_list": {"<obj2>": "the a"}}}
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: mismatch"):
        load_examples(tmp_path / "bad.jsonl")


# ---- the filter rules --------------------------------------------------------------------------------------------
def _dec(reasoning: str, **objects) -> Decomposition:
    return Decomposition(reasoning, {k.replace("o", "<obj") + ">": {"description": v} for k, v in objects.items()})


GOOD = 'detect(query="a", objects=["<obj1>"]) detect(query="b", objects=["<obj2>"]) <obj1> and ' \
       'detect(query="c", objects=["<obj3>"]) <obj3>'


@pytest.mark.parametrize("dec, rule", [
    (_dec(GOOD, o1="red bar", o2="blue bar", o3="axis"), None),
    (_dec('detect(query="a, objects=["<obj1>"])', o1="x"), "ill_formed"),
    (_dec(GOOD.replace('"<obj2>"', '"<obj2><region><|copy_1|></region>"'), o1="a", o2="b", o3="c"), "ill_formed"),
    (_dec(GOOD, o1="a", o2="b"), "mismatch"),  # <obj3> detected, not listed
    (_dec(GOOD, o1="a", o2="b", o3="c", o4="d"), "mismatch"),  # <obj4> listed, never detected
    (_dec("<obj1> first, " + GOOD, o1="a", o2="b", o3="c"), "mismatch"),  # mentioned before its detect
    (_dec(GOOD, o1="a", o2=" ", o3="c"), "empty_description"),
    (_dec(GOOD, o1="the Red  bar", o2="the red bar", o3="c"), "non_unique"),
    (_dec('detect(query="a", objects=["<obj1>"]) detect(query="b", objects=["<obj2>"])', o1="a", o2="b"),
     "too_few_objects"),
])
def test_each_decomposition_rule_fires_on_its_case(dec, rule):
    drops = check_decomposition(dec, FilterOptions(min_objects=3))
    assert [d.rule for d in drops][:1] == ([rule] if rule else [])


def test_box_rules():
    ok = {"box": [10, 10, 30, 30], "contrast": 2.0}
    opts = FilterOptions(min_contrast=1.5, min_box_px=2)
    assert check_boxes({"<obj1>": ok}, (100, 80), opts) == []
    cases = {"grounding_error": {"box": None, "error": {"field": "image", "reason": "unreadable"}},
             "degenerate_box": {"box": [10, 10, 11, 30], "contrast": 2.0},
             "box_outside_image": {"box": [90, 10, 120, 30], "contrast": 2.0},
             "low_contrast": {"box": [10, 10, 30, 30], "contrast": 1.2}}
    for rule, row in cases.items():
        drops = check_boxes({"<obj1>": ok, "<obj2>": row}, (100, 80), opts)
        assert [d.rule for d in drops] == [rule] and "<obj2>" in drops[0].detail


# ---- inputs ------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named_and_the_rest_is_read(tmp_path, inputs):
    rows = [json.loads(x) for x in inputs.read_text().splitlines()[:2]]
    (tmp_path / "junk.png").write_text("not an image")
    lines = [json.dumps(rows[0]), "{not json", json.dumps(dict(rows[1], id=rows[0]["id"])),
             json.dumps(dict(rows[1], id="noimg", image="missing.png")),
             json.dumps(dict(rows[1], id="junk", image=str(tmp_path / "junk.png"))),
             json.dumps(dict(rows[1], id="empty", reasoning="  ")), json.dumps(dict(rows[1], id="ok"))]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    got = read_inputs(tmp_path / "in.jsonl")
    errors = [(e.record_id, e.field) for e in got if isinstance(e, InputError)]
    assert errors == [("line2", "<line>"), (rows[0]["id"], "id"), ("noimg", "image"), ("junk", "image"),
                      ("empty", "reasoning")]
    assert [r.id for r in got if not isinstance(r, InputError)] == [rows[0]["id"], "ok"]


# ---- the build ---------------------------------------------------------------------------------------------------
def test_ground_truth_build_reproduces_the_shapes_records(split, inputs, tmp_path):
    """Decomposed from text only and boxed with the true boxes, the pipeline writes exactly the builder's copy
    records; it drops exactly the scenes where two objects share a description (the grounder could not tell them
    apart), and the rest passes strict v1g validation with the images checked."""
    from pointcopy.data.v1g import read_v1g

    out = tmp_path / "gt"
    report = build(BuildOptions(str(inputs), str(out), grounder="ground-truth"), ShapesDecomposer(), **QUIET)
    copy = _copy_rows(split)
    shared = {it["id"] for it in read_items(split)
              if len({describe(o) for o in Scene.from_dict(it["scene"]).objects}) < it["n_objects"]}
    written = _v1g(out)
    assert {r["id"] for r in written} == set(copy) - shared and shared
    for row in written:
        ref = copy[row["id"]]
        assert row["conversations"] == ref["conversations"] and row["image_size"] == ref["image_size"]
        assert json.loads(row["regions"]) == json.loads(ref["regions"])
    assert len(read_v1g(out / "v1g.jsonl", strict=True, check_image=True).records) == len(written)
    assert report["drops"]["first_reason"]["non_unique"] == len(shared)
    assert report["records_out"] == len(written) and report["objects_per_trace"]["min"] >= 3
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert {d["id"] for d in dropped} == shared and all(d["reasons"][0]["rule"] == "non_unique" for d in dropped)


def test_attention_build_trains_as_it_is(inputs, tmp_path):
    """The attention grounder's boxes (fractional pixels) make records `pointcopy train` reads without a bad
    record; the report scores them against the inputs' true boxes."""
    from pointcopy.training.run import TrainOptions, train

    out = tmp_path / "att"
    report = build(BuildOptions(str(inputs), str(out), model=MODEL, limit=6, threads=1), ShapesDecomposer(),
                   **QUIET)
    assert report["records_out"] >= 3 and report["grounding"]["model_all"]["n"] > 0
    summary = train(TrainOptions(model="tiny", train_data=[str(out / "v1g.jsonl")], output_dir=str(tmp_path / "t"),
                                 batch_size=2, max_steps=2, save_steps=1000, progress=False, resume=False))
    assert summary["global_step"] == 2
    bad = tmp_path / "t" / "bad_records.jsonl"
    assert not bad.exists() or not bad.read_text().strip()


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "pointcopy.cli", "pipeline", "build", *args]


def _outputs(out: Path) -> tuple[str, str, dict]:
    report = json.loads((out / "report.json").read_text())
    return (out / "v1g.jsonl").read_text(), (out / "dropped.jsonl").read_text(), report


@pytest.mark.slow
def test_kill_9_during_grounding_then_rerun_loses_and_repeats_nothing(inputs, tmp_path):
    args = ["--input", str(inputs), "--decomposer", "shapes", "--model", MODEL, "--threads", "1",
            "--no-progress", "--batch-size", "2"]
    subprocess.run(_cli("--out", str(tmp_path / "clean"), *args), check=True, env=ENV, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("--out", str(out), *args), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    boxes = out / "shards" / "0-of-1" / "ground" / "boxes.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not boxes.exists() or len(boxes.read_text().splitlines()) < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(boxes.read_text().splitlines())
    assert 5 <= n_before and not (out / "v1g.jsonl").exists(), "the kill must land during grounding"
    subprocess.run(_cli("--out", str(out), *args), check=True, env=ENV, capture_output=True)
    ids = [json.loads(x)["id"] for x in boxes.read_text().splitlines()]
    assert len(ids) == len(set(ids)) > n_before
    a, b = _outputs(tmp_path / "clean"), _outputs(out)
    assert a[0] == b[0] and a[1] == b[1] and a[2]["drops"] == b[2]["drops"]


@pytest.mark.slow
def test_two_shard_processes_merge_to_the_one_process_output(inputs, tmp_path):
    """`--shard 0/2` and `--shard 1/2` run at once in two processes; the last to finish merges; the result is
    byte for byte the one-process result."""
    args = ["--input", str(inputs), "--decomposer", "shapes", "--model", MODEL, "--threads", "1", "--no-progress",
            "--limit", "12"]
    subprocess.run(_cli("--out", str(tmp_path / "one"), *args), check=True, env=ENV, capture_output=True)
    procs = [subprocess.Popen(_cli("--out", str(tmp_path / "two"), *args, "--shard", f"{i}/2"), env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for i in range(2):
        rows = (tmp_path / "two" / "shards" / f"{i}-of-2" / "decomposed.jsonl").read_text().splitlines()
        assert {json.loads(x)["index"] % 2 for x in rows} == {i}
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert one[0] == two[0] and one[1] == two[1]
    assert {k: v for k, v in one[2].items() if k != "shards"} == {k: v for k, v in two[2].items() if k != "shards"}


@pytest.mark.slow
def test_torchrun_ranks_ground_their_shards_and_rank_0_merges(inputs, tmp_path):
    args = ["--input", str(inputs), "--decomposer", "shapes", "--model", MODEL, "--threads", "1", "--no-progress",
            "--limit", "8"]
    subprocess.run(_cli("--out", str(tmp_path / "one"), *args), check=True, env=ENV, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", "0"]
    res = subprocess.run(torchrun + ["-m", "pointcopy.cli", "pipeline", "build", "--out", str(tmp_path / "tr"),
                                     *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "tr" / "shards" / "1-of-2" / "DONE").exists()
    assert _outputs(tmp_path / "one")[0] == _outputs(tmp_path / "tr")[0]


# ---- the LLM decomposer against a real local OpenAI-compatible server ---------------------------------------------
def _answer(reasoning: str, objects: dict) -> str:
    return json.dumps({"reasoning": reasoning, "obj_list": {k: {"type": "object", "description": v}
                                                            for k, v in objects.items()}})


def _scene_inputs(tmp_path: Path) -> tuple[Path, dict]:
    """Four shapes scenes as hand-written records (the LLM's answers are scripted per question) + bad inputs."""
    split = tmp_path / "s"
    build_split(split, 12, seed=11, config=CONFIG, progress=False)
    rows = [r for r in shapes_inputs(split) if not check_decomposition(ShapesDecomposer.decompose(r["reasoning"]))]
    script, records = [], []
    kinds = ["good", "repair", "prose", "miscount", "throttled", "server_error"]
    for row, kind in zip(rows, kinds):
        question = f"[{kind}] {row['question']}"
        dec = ShapesDecomposer.decompose(row["reasoning"])
        good = _answer(dec.reasoning, {k: o["description"] for k, o in dec.objects.items()})
        actions = {"good": [{"content": good}],
                   "repair": [{"content": good[:-5]}, {"content": good}],
                   "prose": [{"content": "Sure! Here is the grounded reasoning: " + dec.reasoning}],
                   "miscount": [{"content": _answer(dec.reasoning, {k: o["description"] for k, o in
                                                                    list(dec.objects.items())[:-1]})}],
                   "throttled": [{"status": 429, "headers": {"Retry-After": "0"}}, {"content": good}],
                   "server_error": [{"status": 500}, {"content": good}]}[kind]
        script.append({"match": f"[{kind}]", "actions": actions})
        records.append(dict(row, id=kind, question=question))
    records.append(dict(records[0], id="noimage", image=str(tmp_path / "nope.png")))
    records.append(dict(records[1]))  # a duplicate id
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, {"rules": script}


def test_llm_build_records_every_failure_and_a_rerun_sends_nothing(tmp_path):
    path, script = _scene_inputs(tmp_path)
    with ReplayServer(script["rules"]) as server:
        settings = LLMSettings(server.base_url, "replay", max_retries=2, backoff=0.0, concurrency=3)
        opts = BuildOptions(str(path), str(tmp_path / "out"), grounder="ground-truth")
        report = build(opts, LLMDecomposer(settings, cache_dir=tmp_path / "cache"), **QUIET)
        sent = len(server.requests)
        assert {r["id"] for r in _v1g(tmp_path / "out")} == {"good", "repair", "throttled", "server_error"}
        dropped = [json.loads(x) for x in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
        assert [(d["id"], d["reasons"][0]["rule"]) for d in dropped] == [
            ("prose", "decompose_failed"), ("miscount", "mismatch"), ("noimage", "bad_input"),
            ("repair", "bad_input")]  # the last: the duplicate id
        assert "duplicate id" in dropped[-1]["reasons"][0]["detail"]
        assert report["decompose_failures"] == {"llm_unparseable": 1}
        # one request each for good/miscount, 2 for repair, throttled, server_error; 3 for prose (2 retries)
        assert sent == 1 + 1 + 2 + 2 + 2 + 3
        first = (tmp_path / "out" / "v1g.jsonl").read_text()
        # a second pipeline run on the same inputs (new output folder, same cache): no request at all
        build(BuildOptions(str(path), str(tmp_path / "out2"), grounder="ground-truth"),
              LLMDecomposer(settings, cache_dir=tmp_path / "cache"), **QUIET)
        assert len(server.requests) == sent + 3  # only the never-answered prose record is asked again (3 tries)
        assert (tmp_path / "out2" / "v1g.jsonl").read_text() == first


def test_llm_timeout_is_retried_and_a_dead_endpoint_is_a_recorded_failure(tmp_path):
    path, script = _scene_inputs(tmp_path)
    rows = [json.loads(x) for x in path.read_text().splitlines()][:1]
    path.write_text(json.dumps(rows[0]) + "\n")
    good = script["rules"][0]["actions"][0]["content"]
    with ReplayServer([{"match": "*", "actions": [{"delay": 1.0, "content": good}, {"content": good}]}]) as server:
        settings = LLMSettings(server.base_url, "replay", timeout=0.3, max_retries=2, backoff=0.0)
        report = build(BuildOptions(str(path), str(tmp_path / "o"), grounder="ground-truth"),
                       LLMDecomposer(settings), **QUIET)
        assert report["records_out"] == 1 and len(server.requests) == 2
    dead = LLMSettings(server.base_url, "replay", timeout=0.3, max_retries=1, backoff=0.0)  # the server is gone
    report = build(BuildOptions(str(path), str(tmp_path / "dead"), grounder="ground-truth"), LLMDecomposer(dead),
                   **QUIET)
    assert report["records_out"] == 0 and report["decompose_failures"] == {"llm_connection": 1}


# ---- the shipped hand-made example (examples/pipeline) -----------------------------------------------------------
def test_handmade_chart_and_geometry_example_runs_as_its_readme_says(tmp_path):
    """The real-looking chart/geometry records with their recorded LLM answers, served by the replay server and
    built by the command: the records and drop rules examples/pipeline/README.md lists."""
    from pointcopy.cli import main
    from pointcopy.pipeline.replay import load_script

    example = REPO / "examples" / "pipeline"
    with ReplayServer(load_script(example / "llm_script.jsonl")) as server:
        argv = ["pipeline", "build", "--input", str(example / "records.jsonl"), "--out", str(tmp_path / "o"),
                "--decomposer", "llm", "--llm-base-url", server.base_url, "--llm-model", "replay",
                "--llm-retries", "2", "--model", MODEL, "--threads", "1", "--no-progress"]
        assert main(argv) == 0
        assert len(server.requests) == 13
        assert main(argv) == 0 and len(server.requests) == 13  # resumed in place: every record has its row
    assert [r["id"] for r in _v1g(tmp_path / "o")] == ["chart-bar", "chart-line", "geo-triangle", "scene-shapes"]
    dropped = [json.loads(x) for x in (tmp_path / "o" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["id"], d["reasons"][0]["rule"]) for d in dropped] == [
        ("chart-pie", "too_few_objects"), ("geo-circle", "mismatch"), ("table-shop", "non_unique"),
        ("chart-line-mean", "decompose_failed"), ("chart-histogram", "bad_input"), ("geo-triangle", "bad_input"),
        ("geo-circle-angle", "bad_input")]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["grounding"]["model_all"]["n"] == 18
