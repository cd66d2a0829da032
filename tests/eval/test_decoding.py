"""Decoding flags shared by the generating commands (`pointcopy.decoding`): the repetition penalty reaches pointer
logits through the real `generate`, `--preset official` and the flags that override it, seeded sampling, and an eval
resume with other decoding refused (while an older run.json without the new keys still resumes)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from pointcopy.cli import main as cli_main
from pointcopy.decoding import DecodingOptions, decoding_from_args

from test_eval_runner import _make_pointing_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene(seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (112, 84), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(0, 88), rng.randrange(0, 60)
        draw.rectangle([x, y, x + rng.randrange(8, 24), y + rng.randrange(8, 24)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


@pytest.fixture(scope="module")
def tiny():
    from pointcopy.presets import build_tiny_processor, tiny_model

    processor = build_tiny_processor()
    return processor, lambda: tiny_model(0, processor.tokenizer)


# --------------------------------------------------------------------------------------------- (a) penalty
@pytest.mark.parametrize("sign", [1, -1], ids=["positive-pointer-logits", "negative-pointer-logits"])
def test_repetition_penalty_reaches_pointer_logits_as_transformers_applies_it_to_vocabulary_ids(tiny, sign):
    """Catches: a penalty that never reaches generate (the options' kwargs dropped), pointer columns left out of the
    scores the penalty sees (only vocabulary ids penalised), a pointer that was not generated penalised anyway, and
    a checkpoint's generation_config penalty applied instead of the one asked for."""
    from pointcopy.inference import prompt_text

    processor, make = tiny
    model = make()
    with torch.no_grad():  # pointer logits of one sign: q·k/sqrt(D) with the key projection scaled by +-3
        model.pointer.q_proj.weight.mul_(3)
        model.pointer.k_proj.weight.mul_(3 * sign)
    model.generation_config.repetition_penalty = 1.3  # a checkpoint's own value: the options must override it
    batch = dict(processor([prompt_text(processor, "How many objects?", 1)], [_scene()]))
    start = processor.copy_token_start
    seen = [start + k for k in (0, 2, 5)]  # the answer so far copied slots 0, 2 and 5
    prefix = torch.tensor([seen])
    batch["input_ids"] = torch.cat([batch["input_ids"], prefix], 1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(prefix)], 1)
    batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(prefix)], 1)

    def first_step(options: DecodingOptions):
        out = model.generate(**batch, max_new_tokens=1, output_scores=True, output_logits=True,
                             return_dict_in_generate=True, **options.generate_kwargs())
        return out.logits[0][0].float(), out.scores[0][0].float()

    penalty = 1.7
    raw, processed = first_step(DecodingOptions(repetition_penalty=penalty))
    assert raw.shape[0] == start + 12  # vocabulary | 12 pointer slots (this image's tokens)
    pointer_raw = raw[seen]
    assert bool((pointer_raw * sign > 0).all()), pointer_raw  # the branch under test
    want = pointer_raw / penalty if sign > 0 else pointer_raw * penalty
    assert torch.equal(processed[seen], want)
    # the same rule as for a vocabulary id in the sequence (transformers' RepetitionPenaltyLogitsProcessor)
    vocab = int(batch["input_ids"][0, 0])
    v = raw[vocab]
    assert processed[vocab] == (v / penalty if v > 0 else v * penalty)
    untouched = [start + k for k in range(12) if start + k not in seen]
    assert torch.equal(processed[untouched], raw[untouched])
    # default 1.0: off, whatever generation_config.json says
    raw, processed = first_step(DecodingOptions())
    assert torch.equal(processed[start:], raw[start:])


# --------------------------------------------------------------------------------------------- (b) preset
def _parser(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


def _options(module, argv: list[str], device: str = "cpu") -> DecodingOptions:
    return decoding_from_args(_parser(module).parse_args(argv), device=device, echo=lambda *_: None)


EVAL_ARGV = ["mathvision", "--model", "m", "--data", "d", "--out", "o"]
ANALYZE_ARGV = ["focus", "--items", "i", "--model", "m", "--out", "o"]


def test_preset_official_sets_the_four_values_and_explicit_flags_win():
    """Catches: a preset missing one of its values, a command whose flags are declared apart from the shared ones
    (one of them without the preset), a preset that overrides a flag the user gave, float16 forced on a CPU
    without saying so, and sampling values accepted without --do-sample."""
    from pointcopy.commands import analyze, demo, run
    from pointcopy.eval import eval_cli
    from pointcopy.inference import OFFICIAL_SUFFIX

    commands = [(eval_cli, EVAL_ARGV, 1024), (run, [], 48), (demo, [], 640), (analyze, ANALYZE_ARGV, 640)]
    for module, argv, default in commands:
        plain = _options(module, argv)
        assert (plain.max_new_tokens, plain.repetition_penalty, plain.do_sample, plain.suffix) == (default, 1.0,
                                                                                                  False, "")
        official = _options(module, [*argv, "--preset", "official"], device="cuda:0")
        assert (official.max_new_tokens, official.repetition_penalty, official.do_sample, official.suffix) == (
            8192, 1.05, False, OFFICIAL_SUFFIX), module.__name__
        mine = _options(module, [*argv, "--preset", "official", "--max-new-tokens", "100", "--repetition-penalty",
                                 "1.0", "--do-sample", "--temperature", "0.7"])
        assert (mine.max_new_tokens, mine.repetition_penalty, mine.do_sample, mine.temperature, mine.suffix) == (
            100, 1.0, True, 0.7, OFFICIAL_SUFFIX), module.__name__
    # the dtype: float16 on CUDA; on a CPU left alone, with a note; a --dtype given wins either way
    assert _options(eval_cli, [*EVAL_ARGV, "--preset", "official"], device="cuda:0").dtype == "float16"
    assert _options(eval_cli, EVAL_ARGV, device="cuda:0").dtype == "auto"
    notes = []
    args = _parser(eval_cli).parse_args([*EVAL_ARGV, "--preset", "official"])
    assert decoding_from_args(args, device="cpu", echo=notes.append).dtype == "auto"
    assert "float16 on CUDA only" in notes[0] and notes[-1].startswith("decoding: greedy, repetition penalty 1.05")
    assert _options(eval_cli, [*EVAL_ARGV, "--preset", "official", "--dtype", "bfloat16"], "cuda").dtype == "bfloat16"
    assert _options(run, ["--official-prompt"]).suffix == OFFICIAL_SUFFIX  # run's old flag name still works
    with pytest.raises(ValueError, match="--top-k only apply to sampling"):
        _options(eval_cli, [*EVAL_ARGV, "--top-k", "5"])
    with pytest.raises(SystemExit):
        _parser(eval_cli).parse_args([*EVAL_ARGV, "--repetition-penalty", "0"])


# --------------------------------------------------------------------------------------------- (c) sampling
def test_sampling_is_reproducible_from_its_seed_and_differs_from_greedy(tiny):
    """Catches: a seed that is not applied right before generating (the second draw would differ), sampling that
    is greedy after all (a checkpoint's generation_config top_k=1, as Qwen2.5-VL's, would make it so unless the
    options pass their own values), and `pointcopy run` not passing the flags on."""
    from pointcopy.inference import generate

    processor, make = tiny
    model = make()
    model.generation_config.top_k, model.generation_config.top_p = 1, 0.001  # Qwen2.5-VL's generation_config

    def ids(options: DecodingOptions) -> list[int]:
        return generate(model, processor, ["How many objects?"], [[_scene()]], max_new_tokens=10,
                        seed=options.seed_for(), **options.generate_kwargs())[0].ids

    greedy = ids(DecodingOptions())
    hot = [DecodingOptions(do_sample=True, temperature=3.0, seed=s) for s in range(3)]
    draws = [ids(o) for o in hot]
    assert [ids(o) for o in hot] == draws  # the same seed, the same ids (after other draws moved the RNG)
    assert any(d != greedy for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # the seed matters

    def run_cli(*extra) -> str:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli_main(["run", "--json", "--max-new-tokens", "8", *extra]) == 0
        return json.loads(buf.getvalue())["trace"]

    greedy_trace = run_cli()
    sampled = run_cli("--do-sample", "--temperature", "3", "--seed", "0")
    assert run_cli("--do-sample", "--temperature", "3", "--seed", "0") == sampled != greedy_trace


# --------------------------------------------------------------------------------------------- (d) eval resume
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _make_pointing_model(tmp_path_factory.mktemp("decoding") / "m")


def _eval(model, mathv, out, *extra, tokens: int | None = 4) -> int:
    return cli_main(["eval", "mathvision", "--model", str(model), "--data", str(mathv), "--out", str(out), "--split",
                     "testmini", "--limit", "2", "--no-progress", "--no-score", *extra]
                    + (["--max-new-tokens", str(tokens)] if tokens else []))


def test_eval_records_decoding_and_refuses_a_resume_with_another(model_dir, mathv_root, tmp_path, capsys,
                                                                  monkeypatch):
    """Catches: decoding settings left out of run.json (a resume would mix two decodings in one file), a refusal
    that does not name the setting, a run.json written before these keys existed no longer resumable, and the
    preset's values not reaching generate."""
    out = tmp_path / "run"
    assert _eval(model_dir, mathv_root, out) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["decoding"] == "greedy" and run["settings"]["repetition_penalty"] == 1.0
    before = (out / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    assert _eval(model_dir, mathv_root, out, "--repetition-penalty", "1.05") == 2
    err = capsys.readouterr().err
    assert "repetition_penalty: run.json has 1.0, this run has 1.05" in err and "refusing to resume" in err
    assert _eval(model_dir, mathv_root, out, "--do-sample") == 2
    assert "decoding: run.json has 'greedy', this run has 'sample'" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_bytes() == before

    # a run.json from before the decoding flags: no repetition_penalty key. Greedy with the checkpoint's
    # generation_config (here none): resumes with the defaults; one whose generation_config had 1.05 ran with it
    del run["settings"]["repetition_penalty"]
    (out / "run.json").write_text(json.dumps(run))
    assert _eval(model_dir, mathv_root, out) == 0
    assert "generated 0 items" in capsys.readouterr().err
    run["info"]["generation_config"]["repetition_penalty"] = 1.05
    (out / "run.json").write_text(json.dumps(run))
    assert _eval(model_dir, mathv_root, out) == 2
    assert "repetition_penalty: run.json has 1.05, this run has 1.0" in capsys.readouterr().err
    assert _eval(model_dir, mathv_root, out, "--repetition-penalty", "1.05") == 0

    # the preset's values reach generate (kept short: the spy cuts max_new_tokens after recording it)
    import pointcopy.inference as inference

    seen = []
    real = inference.generate

    def spy(model, processor, questions, images, **kw):
        seen.append({**kw, "questions": questions})
        return real(model, processor, questions, images, **{**kw, "max_new_tokens": 2})

    monkeypatch.setattr(inference, "generate", spy)
    official = tmp_path / "official"
    assert _eval(model_dir, mathv_root, official, "--preset", "official", tokens=None) == 0
    kw = seen[0]
    assert (kw["max_new_tokens"], kw["repetition_penalty"], kw["do_sample"]) == (8192, 1.05, False)
    assert all(q.endswith(inference.OFFICIAL_SUFFIX) for q in kw["questions"])
    settings = json.loads((official / "run.json").read_text())["settings"]
    assert (settings["repetition_penalty"], settings["max_new_tokens"], settings["suffix"]) == (
        1.05, 8192, inference.OFFICIAL_SUFFIX)
    assert settings["dtype"] == ("float16" if torch.cuda.is_available() else "auto")
