"""Training end to end on a toy grounded data set (real v1g files, real Trainer, real processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pointcopy.collate import GroundedCollator
from pointcopy.data.v1g import read_v1g
from pointcopy.model import PointCopyForConditionalGeneration
from pointcopy.processing import PointCopyProcessor
from pointcopy.training.run import TrainOptions, train

from toy_grounded import write_toy

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return write_toy(root / "train.jsonl", 256, seed=0), write_toy(root / "test.jsonl", 64, seed=1)


def _options(toy, out, **kw):
    base = dict(model="tiny", train_data=[str(toy[0])], output_dir=str(out), batch_size=8, learning_rate=3e-3,
                save_steps=1000, logging_steps=10, progress=False, resume=False)
    return TrainOptions(**{**base, **kw})


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pointcopy.cli", "train", *args], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=900)


def _held_out_copy_accuracy(model_dir, test_file) -> float:
    model = PointCopyForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = PointCopyProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        out = model(**GroundedCollator(processor)(read_v1g(test_file).records))
    return out.copy_accuracy.item()


def test_learns_to_point_on_held_out_scenes(toy, tmp_path):
    """Chance is 1/16 (uniform over the 16 cells); always picking one of the two coloured squares gives 0.5;
    0.75 requires matching the square's colour to the question."""
    summary = train(_options(toy, tmp_path, max_steps=THRESHOLD_STEPS))
    logged = [h for h in summary["log_history"] if "copy_acc" in h]
    assert {"gen_loss", "copy_loss", "z_loss", "copy_acc"} <= set(logged[-1])
    assert _held_out_copy_accuracy(tmp_path / "final", toy[1]) >= 0.75


THRESHOLD_STEPS = 600  # the toy run reaches held-out copy accuracy 1.0 at ~400 steps (lr 3e-3)


def test_resume_after_kill_matches_uninterrupted_run(toy, tmp_path):
    args = ["--model", "tiny", "--train-data", str(toy[0]), "--batch-size", "4", "--max-steps", "24",
            "--save-steps", "8", "--learning-rate", "3e-3", "--no-progress", "--save-total-limit", "5"]
    straight = _cli(*args, "--output-dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = _cli(*args, "--output-dir", str(tmp_path / "b"), env={**ENV, "POINTCOPY_CRASH_AFTER_STEP": "16"})
    assert crashed.returncode == 137 and not (tmp_path / "b" / "final").exists()
    # a half-written newer checkpoint (no trainer_state.json) must be ignored on resume
    shutil.copytree(tmp_path / "b" / "checkpoint-16", tmp_path / "b" / "checkpoint-20")
    (tmp_path / "b" / "checkpoint-20" / "trainer_state.json").unlink()
    resumed = _cli(*args, "--output-dir", str(tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-16") and summary["global_step"] == 24
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, worst


def test_lora_trains_heads_and_adapters_only(toy, tmp_path):
    summary = train(_options(toy, tmp_path, max_steps=20, lora=True, lora_r=4, merge_lora=False,
                             save_steps=10))
    assert summary["global_step"] == 20
    adapter = load_file(tmp_path / "final" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("pointer" in k for k in adapter)
    assert not any("visual" in k for k in adapter)
    merged_dir = tmp_path / "merged"
    train(_options(toy, merged_dir, max_steps=20, lora=True, lora_r=4, merge_lora=True))
    merged = PointCopyForConditionalGeneration.from_pretrained(merged_dir / "final")
    from pointcopy.presets import build_preset

    fresh, _ = build_preset("tiny", seed=_options(toy, merged_dir).seed)  # the initialisation training started from
    delta = {n: (p - fresh.state_dict()[n]).abs().max().item() for n, p in merged.state_dict().items()}
    assert delta["pointer.q_proj.weight"] > 0 and delta["model.language_model.layers.0.self_attn.q_proj.weight"] > 0
    assert delta["model.visual.patch_embed.proj.weight"] == 0 and delta["lm_head.weight"] == 0


def test_two_process_data_parallel_keeps_ranks_identical(toy, tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu_ddp_2proc.yaml"), "--main_process_port", str(port),
           "-m", "pointcopy.cli", "train",
           "--model", "tiny", "--train-data", str(toy[0]), "--output-dir", str(tmp_path), "--max-steps", "6",
           "--batch-size", "2", "--save-steps", "100", "--no-progress", "--weights-digest"]
    run = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    digests = [(tmp_path / f"weights_digest_rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    from pointcopy.presets import build_preset
    from pointcopy.training.run import weights_digest

    assert digests[0].strip() != weights_digest(build_preset("tiny", seed=42)[0])  # they did train (seed: default)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["global_step"] == 6


def test_train_data_parallel_splits_batch_and_threads(toy, tmp_path):
    from pointcopy.training.parallel import per_rank_options, train_data_parallel

    opts = _options(toy, tmp_path, max_steps=4, batch_size=4, threads=2, weights_digest=True)
    rank = per_rank_options(opts, 2)
    assert (rank.batch_size, rank.threads) == (2, 1)
    with pytest.raises(ValueError, match="not divisible"):
        per_rank_options(_options(toy, tmp_path, batch_size=3), 2)
    summary = train_data_parallel(opts, 2)  # real processes, gloo
    assert summary["global_step"] == 4 and summary["options"]["batch_size"] == 2
    digests = [(tmp_path / f"weights_digest_rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]  # gradients were averaged: both ranks hold the same weights
    model = PointCopyForConditionalGeneration.from_pretrained(tmp_path / "final")
    from pointcopy.training.run import weights_digest

    assert weights_digest(model) == digests[0].strip()


def test_data_parallel_listens_on_loopback_only(toy, tmp_path):
    """The launcher's rendezvous store and gloo's sockets accept connections from this machine only (torchrun's
    store listened on every interface)."""
    import threading
    import time

    import psutil

    from pointcopy.training.parallel import train_data_parallel

    opts = _options(toy, tmp_path, max_steps=3, batch_size=2, threads=2)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(summary=train_data_parallel(opts, 2)))
    worker.start()
    me, listening, ranks_seen = psutil.Process(), set(), set()
    while worker.is_alive():
        for proc in [me] + me.children(recursive=True):
            try:
                conns = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    listening.add((proc.pid, c.laddr.ip, c.laddr.port))
                    if proc.pid != me.pid:
                        ranks_seen.add(proc.pid)
        time.sleep(0.05)
    worker.join()
    assert result["summary"]["global_step"] == 3
    assert all(ip in ("127.0.0.1", "::1") for _, ip, _ in listening), listening
    assert any(pid == me.pid for pid, _, _ in listening)  # the store, in the launching process
    assert ranks_seen  # gloo's listeners in the ranks were observed too


@pytest.mark.parametrize("entry", ["torchrun worker", "pointcopy train"])
@pytest.mark.parametrize("fails", [False, True])
def test_entry_points_close_the_process_group_before_exit(toy, tmp_path, monkeypatch, entry, fails):
    """Both distributed entry points (`train_data_parallel`'s worker, `accelerate launch ... pointcopy.cli train`)
    must destroy the gloo group the Trainer opened, also when training raised: left to interpreter shutdown, gloo
    threads can abort a rank that had already finished (SIGABRT, and the launcher fails the run)."""
    import socket

    import torch.distributed as dist

    from pointcopy.training import parallel, run

    def fake_train(options):  # opens the group as the Trainer does under torchrun
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        if fails:
            raise RuntimeError("training failed")
        return {"global_step": 1, "train_loss": 0.0, "log_history": []}

    monkeypatch.setattr(parallel, "train", fake_train)
    monkeypatch.setattr(run, "train", fake_train)
    options = _options(toy, tmp_path)
    options_file = tmp_path / parallel.OPTIONS_FILE
    options_file.write_text(json.dumps(dataclasses.asdict(options)))
    if entry == "torchrun worker":
        call = lambda: parallel.main([str(options_file)])  # noqa: E731
    else:
        from pointcopy.cli import main as cli_main

        call = lambda: cli_main(["train", "--model", "tiny", "--train-data", str(toy[0]),  # noqa: E731
                                 "--output-dir", str(tmp_path)])
    if fails:
        with pytest.raises(RuntimeError, match="training failed"):
            call()
    else:
        assert call() == 0
    assert not dist.is_initialized()


def test_train_command_parses_every_option_into_train_options():
    """`pointcopy train` has a flag per TrainOptions field; a `bool | None` one is --x / --no-x / unset (None), not
    argparse's `type=bool`, which reads "False" as True."""
    import argparse

    from pointcopy.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    need = ["--model", "tiny", "--train-data", "a.jsonl", "--output-dir", "out"]
    parsed = {k: vars(parser.parse_args(need + extra)) for k, extra in
              {"unset": [], "on": ["--ddp-find-unused-parameters"], "off": ["--no-ddp-find-unused-parameters"]}.items()}
    assert {k: v["ddp_find_unused_parameters"] for k, v in parsed.items()} == {"unset": None, "on": True, "off": False}
    names = {f.name for f in dataclasses.fields(TrainOptions)}
    assert names <= set(parsed["unset"])
    assert TrainOptions(**{k: v for k, v in parsed["unset"].items() if k in names}) == TrainOptions(
        model="tiny", train_data=["a.jsonl"], output_dir="out")


def _pids_with(fragment: str) -> list[int]:
    """Live processes whose command line contains `fragment` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and fragment in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_killing_the_launcher_stops_its_ranks(toy, tmp_path):
    """`kill -9` of the process that called train_data_parallel must not leave its ranks training on (they would
    share the output directory with a resumed run)."""
    import signal
    import time
    from dataclasses import asdict

    from pointcopy.training.parallel import OPTIONS_FILE

    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps(asdict(_options(toy, tmp_path / "out", max_steps=100000, batch_size=4, threads=2))))
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import json, sys; from pointcopy.training.run import TrainOptions; "
         "from pointcopy.training.parallel import train_data_parallel; "
         "train_data_parallel(TrainOptions(**json.load(open(sys.argv[1]))), 2)", str(opts)],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = str(tmp_path / "out" / OPTIONS_FILE)
    try:
        deadline = time.time() + 300
        while len(_pids_with(marker)) < 2 and time.time() < deadline:  # the 2 ranks
            assert launcher.poll() is None, "launcher exited before its ranks started"
            time.sleep(0.5)
        assert len(_pids_with(marker)) >= 2, _pids_with(marker)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 60
        while _pids_with(marker) and time.time() < deadline:
            time.sleep(0.5)
        assert _pids_with(marker) == []
    finally:
        for pid in _pids_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_bad_records_are_logged_and_skipped(toy, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    lines = Path(toy[0]).read_text().splitlines()[:20]
    row = json.loads(lines[0])
    row["id"], row["regions"] = "broken-1", json.dumps({"<obj1>": [90, 90, 500, 500]})
    bad.write_text("\n".join(lines + [json.dumps(row)]) + "\n")
    (tmp_path / "images").symlink_to(Path(toy[0]).parent / "images")
    summary = train(_options((bad,), tmp_path / "run", max_steps=3))
    assert summary["bad_records"] == 1
    logged = [json.loads(l) for l in (tmp_path / "run" / "bad_records.jsonl").read_text().splitlines()]
    assert logged[0]["id"] == "broken-1" and logged[0]["field"] == "regions"


def test_gradient_checkpointing_matches_plain_steps(toy, tmp_path):
    """Activation checkpointing recomputes the forward in backward: same weights after a few steps."""
    a = train(_options(toy, tmp_path / "plain", max_steps=3))
    b = train(_options(toy, tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True))
    assert a["global_step"] == b["global_step"] == 3
    wa = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "ckpt" / "final" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_group_by_length_batches_similar_lengths(tmp_path):
    """`group_by_length` batches records of similar length (less padding) and still visits every record."""
    from transformers import TrainingArguments

    from pointcopy.data.shapes import build_split
    from pointcopy.presets import build_preset
    from pointcopy.training.dataset import V1GDataset
    from pointcopy.training.trainer import PointCopyTrainer

    data = V1GDataset([build_split(tmp_path / "shapes", 96, seed=3, progress=False)["copy"]])
    model, processor = build_preset("tiny")
    spreads = {}
    for strategy in ("random", "group_by_length"):
        args = TrainingArguments(output_dir=str(tmp_path / strategy), per_device_train_batch_size=8, report_to=[],
                                 use_cpu=True, train_sampling_strategy=strategy, seed=0)
        trainer = PointCopyTrainer(model=model, args=args, train_dataset=data,
                                   data_collator=GroundedCollator(processor))
        order = list(trainer._get_train_sampler())
        assert sorted(order) == list(range(len(data)))
        batches = [[data.lengths[i] for i in order[k:k + 8]] for k in range(0, len(order), 8)]
        spreads[strategy] = sum(max(b) - min(b) for b in batches) / len(batches)
    assert spreads["group_by_length"] < 0.5 * spreads["random"], spreads
