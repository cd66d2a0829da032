"""`pointcopy analyze` under torchrun: two real CPU processes each generate and analyse their round-robin share of
the batches, rank 0 merges, and the per-model files are the bytes a one-process run writes (the report's numbers
equal too); a rerun finds every item done."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testsupport import torchrun_cli
from pointcopy.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
SHAPES_TINY = REPO / "src" / "pointcopy" / "embedded" / "assets" / "shapes-tiny"
MODEL_FILES = ("traces.jsonl", "items.jsonl", "skipped.jsonl", "model.json")
pytestmark = pytest.mark.slow


def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    return torchrun_cli(["analyze", *args], port)


def _items(tmp_path: Path) -> Path:
    """Five shapes items, one whose image is missing (refused at load) and one whose image is cut short (refused
    when its trace is generated), as a JSONL of image + question + box."""
    from pointcopy.data.shapes.build import build_split, read_items
    from pointcopy.data.shapes.scene import SceneConfig

    split = tmp_path / "split"
    build_split(split, 5, seed=5, config=SceneConfig(min_objects=3, max_objects=6, exclusive_cells=True),
                progress=False)

    def line(row, image=None, rid=None) -> dict:
        return {"id": rid or row["id"], "image": str(image or split / "images" / f"{row['id']}.png"),
                "question": row["question"], "box": row["scene"]["objects"][0]["box"], "answer": row["answer"]}

    rows = read_items(split)
    cut = tmp_path / "cut.png"
    whole = (split / "images" / f"{rows[0]['id']}.png").read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    lines = [line(rows[0]), line(rows[1]), line(rows[2], tmp_path / "missing.png", "no-image"), line(rows[2]),
             line(rows[3]), line(rows[0], cut, "cut-image"), line(rows[4])]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _report(out: Path) -> dict:
    result = json.loads((out / "focus.json").read_text())
    for entry in result["models"].values():
        entry.pop("seconds")  # wall time: the only value allowed to differ
    return result


def test_two_ranks_merge_to_the_one_process_files(tmp_path):
    """Catches: ranks that analyse the same items twice or leave some out, batches formed differently from one
    process (padding changes the numbers), a merge out of item order or missing the skipped items (of either
    kind), a rank 1 that writes the report, and a rerun that generates or analyses again."""
    items = _items(tmp_path)
    args = ["focus", "--items", str(items), "--model", str(SHAPES_TINY), "--batch-size", "2", "--max-new-tokens",
            "48", "--threads", "1", "--no-progress"]
    assert cli_main(["analyze", *args, "--out", str(tmp_path / "one")]) == 0
    res = _torchrun([*args, "--out", str(tmp_path / "two")], 29631)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "rank 1/2: share done" in res.stdout and res.stdout.count("# Focus decay") == 1  # rank 0 reports

    one, two = tmp_path / "one" / "models" / "shapes-tiny-1", tmp_path / "two" / "models" / "shapes-tiny-1"
    for name in MODEL_FILES:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    ids = [json.loads(x)["id"] for x in (one / "items.jsonl").read_text().splitlines()]
    skipped = [json.loads(x)["id"] for x in (one / "skipped.jsonl").read_text().splitlines()]
    assert len(ids) == 5 and skipped == ["no-image", "cut-image"]  # load-time refusal first, then in item order
    assert _report(tmp_path / "two") == _report(tmp_path / "one")

    # batches [0 1] [2 3] [cut 4] of the six loaded items: rank 0 gets the first and the last, rank 1 the middle
    shares = [two / "ranks" / f"{k}-of-2" for k in range(2)]
    traced = [[json.loads(x)["id"] for x in (s / "traces.jsonl").read_text().splitlines()] for s in shares]
    assert traced == [[ids[0], ids[1], ids[4]], [ids[2], ids[3]]]

    before = {p: p.read_bytes() for p in sorted((tmp_path / "two" / "models").rglob("*.jsonl"))}
    again = _torchrun([*args, "--out", str(tmp_path / "two")], 29632)  # resumed: every item done in its rank
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert {p: p.read_bytes() for p in before} == before
    assert _report(tmp_path / "two") == _report(tmp_path / "one")
