"""Resume guard (a resumed run must be the same run) and checkpoint fallback (a damaged newest checkpoint is passed
over for the previous complete one), with real tiny runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pointcopy.training.run import (RUN_OPTIONS_FILE, ResumeMismatchError, TrainOptions, checkpoint_problem,
                                    find_resume_checkpoint, train)

from toy_grounded import write_toy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("toy") / "train.jsonl", 16, seed=0)


def _options(data, out, **kw):
    base = dict(model="tiny", train_data=[str(data)], output_dir=str(out), batch_size=4, learning_rate=3e-3,
                max_steps=2, save_steps=2, logging_steps=1, progress=False, resume=True)
    return TrainOptions(**{**base, **kw})


def test_damaged_newest_checkpoints_fall_back_to_the_previous_complete_one(data, tmp_path, caplog):
    out = tmp_path / "run"
    train(_options(data, out, max_steps=4))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short, as by a full disk
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-6")  # newer still, with a malformed config.json
    (out / "checkpoint-6" / "config.json").write_text('{"model_type": "pointcopy", ')
    caplog.set_level("WARNING")
    summary = train(_options(data, out, max_steps=4))
    assert summary["resumed_from"] == str(out / "checkpoint-2") and summary["global_step"] == 4
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped_checkpoints"]}
    assert skipped.keys() == {"checkpoint-6", "checkpoint-4"}
    assert skipped["checkpoint-6"].startswith("config.json is not valid JSON")
    assert skipped["checkpoint-4"].startswith("model.safetensors: ") and "truncated" in skipped["checkpoint-4"]
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not resuming from")]
    assert len(warned) == 2 and str(out / "checkpoint-6") in warned[0] and str(out / "checkpoint-4") in warned[1]


def test_checkpoint_problem_checks_every_file_cheaply(tmp_path):
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    assert checkpoint_problem(ckpt) == "no trainer_state.json (the save did not finish)"
    (ckpt / "trainer_state.json").write_text("{}")
    assert checkpoint_problem(ckpt) == "no weights file (*.safetensors)"
    save_file({"w": torch.zeros(4, 4)}, ckpt / "model.safetensors")
    (ckpt / "config.json").write_text("{}")
    torch.save({"state": {}}, ckpt / "optimizer.pt")
    assert checkpoint_problem(ckpt) is None
    assert find_resume_checkpoint(tmp_path) == (str(ckpt), [])
    opt = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(opt[:-30])
    assert checkpoint_problem(ckpt).startswith("optimizer.pt is unreadable (BadZipFile")
    (ckpt / "optimizer.pt").write_bytes(opt)
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 16)
    assert "header of" in checkpoint_problem(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00002.safetensors"}}))
    save_file({"w": torch.zeros(4, 4)}, ckpt / "model.safetensors")
    assert checkpoint_problem(ckpt) == "model.safetensors.index.json names missing shard(s) model-00002.safetensors"
    (tmp_path / "checkpoint-best").mkdir()  # not a step: ignored, not a crash
    assert find_resume_checkpoint(tmp_path) == (None, [(str(ckpt), checkpoint_problem(ckpt))])


def test_resume_with_changed_options_or_data_is_refused_naming_each_change(data, tmp_path):
    out = tmp_path / "run"
    train(_options(data, out))
    saved = json.loads((out / RUN_OPTIONS_FILE).read_text())
    assert saved["learning_rate"] == 3e-3 and saved["train_data_records"] == 16 and saved["world_size"] == 1
    again = train(_options(data, out))  # the same run resumes; it was finished, so no step is added
    assert again["resumed_from"].endswith("checkpoint-2") and again["global_step"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    with pytest.raises(ResumeMismatchError) as err:
        train(_options(data, out, learning_rate=1e-3, seed=7))
    message = str(err.value)
    assert "\n" not in message and str(out / "checkpoint-2") in message
    assert "learning_rate: 0.003 -> 0.001" in message and "seed: 42 -> 7" in message
    assert "--allow-resume-mismatch" in message and [c[0] for c in err.value.changes] == ["learning_rate", "seed"]
    # other data under the same path: the content fingerprint changes
    changed = tmp_path / "train.jsonl"
    rows = data.read_text().splitlines()
    changed.write_text("\n".join(rows[:-1]) + "\n")
    (tmp_path / "images").symlink_to(data.parent / "images")
    with pytest.raises(ResumeMismatchError, match=r"train_data: .*; train_data_fingerprint: '[0-9a-f]+' -> "
                                                  r"'[0-9a-f]+'; train_data_records: 16 -> 15"):
        train(_options(changed, out))
    with pytest.raises(ResumeMismatchError, match="batch_size: 4 -> 8"):
        train(_options(data, out, batch_size=8))
    # told to continue: resumes, reports the change, and the saved options take the new values
    summary = train(_options(data, out, learning_rate=1e-3, allow_resume_mismatch=True))
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert summary["resume_changes"] == [{"option": "learning_rate", "old": 3e-3, "new": 1e-3}]
    assert json.loads((out / RUN_OPTIONS_FILE).read_text())["learning_rate"] == 1e-3
    # a fresh start (--no-resume) is never refused
    assert train(_options(data, out, learning_rate=5e-4, resume=False))["resumed_from"] is None


def test_cli_flags_for_the_new_options():
    import argparse

    from pointcopy.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    need = ["--model", "tiny", "--train-data", "a.jsonl", "--output-dir", "out"]
    default = parser.parse_args(need)
    assert (default.check_images, default.allow_resume_mismatch) == (True, False)
    flipped = parser.parse_args(need + ["--no-check-images", "--allow-resume-mismatch"])
    assert (flipped.check_images, flipped.allow_resume_mismatch) == (False, True)
