"""vLLM serving equals our `generate`: greedy ids on 50 demo scenes (batched, one by one, chunked prefill with mixed
batches, repetition penalty) and on the official-format oracle (case B ids and raw logits).

The reference runs here (this environment's transformers); vLLM runs in its own environment (`.venv-vllm`, made
by scripts/setup_vllm, which CI runs) through `vllm_side.py`, once for the module. Without that environment the
tests are skipped locally and fail under CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testsupport import REPO, oracles_dir, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SHAPES = REPO / "src/pointcopy/embedded/assets/shapes-tiny"
SCENES, STEPS = 50, 200
SINGLE = [0, 7, 19, 33, 49]
PENALTY, PENALTY_ROWS = 1.3, list(range(8))
CHUNKED_ROWS = list(range(12))


def vllm_python() -> Path:
    path = Path(os.environ.get("POINTCOPY_VLLM_PYTHON", REPO / ".venv-vllm/bin/python"))
    if not path.exists():
        message = f"{path} missing: run scripts/setup_vllm (vLLM lives in its own environment)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _hf_reference(rows, **generate_kwargs) -> list[list[int]]:
    from pointcopy.model import PointCopyForConditionalGeneration
    from pointcopy.processing import PointCopyProcessor

    model = PointCopyForConditionalGeneration.from_pretrained(SHAPES).eval()
    processor = PointCopyProcessor.from_pretrained(SHAPES)
    eos = model.generation_config.eos_token_id
    out = []
    for start in range(0, len(rows), 25):
        chunk = rows[start:start + 25]
        batch = processor.pad([r["prompt"] for r in chunk])
        enc, _ = processor.encode_images([Image.open(r["image"]).convert("RGB") for r in chunk])
        with torch.no_grad():
            ids = model.generate(**batch, **enc, max_new_tokens=STEPS, do_sample=False, **generate_kwargs)
        for row in ids[:, batch["input_ids"].shape[1]:].tolist():
            out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def _shapes_rows(tmp: Path) -> list[dict]:
    from pointcopy.data.shapes.build import make_item
    from pointcopy.data.shapes.scene import render
    from pointcopy.embedded.demo import DEMO_SEED
    from pointcopy.embedded.recipe import load_recipe
    from pointcopy.inference import prompt_text
    from pointcopy.processing import PointCopyProcessor

    processor = PointCopyProcessor.from_pretrained(SHAPES)
    scenes = load_recipe(SHAPES).scenes
    rows = []
    for s in range(SCENES):
        item = make_item(DEMO_SEED, s, scenes)
        image = render(item.scene)
        path = tmp / f"scene{s}.png"
        image.save(path)
        batch = processor([prompt_text(processor, item.question.text, 1)], [image])
        rows.append({"image": str(path), "prompt": batch["input_ids"][0].tolist()})
    return rows


def oracle_checkpoint(tmp: Path) -> Path:
    """The official-format oracle checkpoint plus what vLLM's processor needs and the oracle never had: a
    tokenizer whose special tokens sit at the oracle's ids, and the image processor settings the oracle used."""
    from tokenizers import Tokenizer, models

    src = oracles_dir() / "official-v1-tiny"
    dst = tmp / "official-v1-tiny"
    dst.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    special = {1980: "<|im_start|>", 1981: "<|im_end|>", 1984: "<|endoftext|>", 1985: "<|eos|>",
               1987: "<|fim_pad|>", 1988: "<|vision_start|>", 1989: "<|vision_end|>", 1990: "<|image_pad|>",
               1991: "<|video_pad|>"}
    vocab = {special.get(i, f"t{i}"): i for i in range(2048)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=[v for v in special.values()
                                                              if v not in ("<|eos|>", "<|endoftext|>")])
    fast.save_pretrained(dst)
    (dst / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True}))
    return dst


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    python = vllm_python()
    tmp = tmp_path_factory.mktemp("vllm")
    rows = _shapes_rows(tmp)
    case = np.load(oracles_dir() / "official-v1-tiny" / "case_B.npz")
    Image.fromarray(case["image1_uint8"]).save(tmp / "oracle.png")
    job = {"shapes": {"model": str(SHAPES), "rows": rows, "max_new_tokens": STEPS, "single": SINGLE,
                      "penalty": PENALTY, "penalty_rows": PENALTY_ROWS, "chunked_rows": CHUNKED_ROWS},
           "oracle": {"model": str(oracle_checkpoint(tmp)), "prompt": case["input_ids"][0].tolist(),
                      "image": str(tmp / "oracle.png"), "max_new_tokens": 40, "top": 5}}
    (tmp / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(REPO / "src"),
           "XDG_CACHE_HOME": str(tmp / "cache")}  # the official checkpoint's view folder
    proc = subprocess.run([str(python), str(Path(__file__).with_name("vllm_side.py")), str(tmp / "job.json"),
                           str(tmp / "out.json")], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return {"vllm": json.loads((tmp / "out.json").read_text()), "rows": rows, "case": case,
            "hf": _hf_reference(rows),
            "hf_penalty": _hf_reference([rows[i] for i in PENALTY_ROWS], repetition_penalty=PENALTY)}


def _pointers(seqs) -> int:
    start = json.loads((SHAPES / "config.json").read_text())["copy_token_start"]
    return sum(i >= start for s in seqs for i in s)


def test_fifty_scenes_batched_equal_hf_generate(run):
    hf, vllm = run["hf"], run["vllm"]["batched"]
    assert _pointers(hf) > 200  # the scenes exercise copying, not just text
    mismatched = [n for n, (a, b) in enumerate(zip(hf, vllm)) if a != b]
    assert len(vllm) == SCENES and not mismatched, f"scenes {mismatched} differ"


def test_one_by_one_equals_batched(run):
    assert run["vllm"]["single"] == [run["vllm"]["batched"][i] for i in SINGLE]


def test_chunked_prefill_and_mixed_batches_equal_hf(run):
    assert run["vllm"]["chunked"] == [run["hf"][i] for i in CHUNKED_ROWS]


def test_repetition_penalty_covers_pointer_ids_as_hf_does(run):
    penalised, plain = run["vllm"]["penalty"], [run["vllm"]["batched"][i] for i in PENALTY_ROWS]
    assert penalised != plain  # the penalty changes decoding here
    assert _pointers(penalised) > 0
    assert penalised == run["hf_penalty"]


def test_official_oracle_case_b_ids_and_raw_logits(run):
    case, out = run["case"], run["vllm"]
    assert out["oracle_ids"] == case["generated_ids"][0].tolist()  # 2 text ids, then copy id 2014 x 38
    worst = 0.0
    for step, top in enumerate(out["oracle_top"]):
        for token, logit in top.items():
            worst = max(worst, abs(logit - float(case["scores"][step, 0, int(token)])))
    assert worst < 2e-6, worst  # measured 7.2e-7


def _eval_in_vllm_env(python: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    from testsupport import benchmarks_dir

    args = ["eval", "mathvision", "--model", str(SHAPES), "--data", str(benchmarks_dir() / "mathvision"),
            "--split", "testmini", "--limit", "6", "--batch-size", "4", "--max-new-tokens", "48", "--no-progress",
            "--no-score", "--out", str(out), *extra]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(python), "-m", "pointcopy.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)


def test_eval_engine_vllm_writes_the_transformers_predictions(tmp_path):
    """`pointcopy eval --engine vllm` on real benchmark images (resized, up to 242 image tokens, batched 4 at a
    time) writes what the transformers engine writes, in the same environment."""
    python = vllm_python()
    hf = _eval_in_vllm_env(python, tmp_path / "hf")
    assert hf.returncode == 0, hf.stderr[-3000:]
    vl = _eval_in_vllm_env(python, tmp_path / "vllm", "--engine", "vllm")
    assert vl.returncode == 0, vl.stderr[-3000:]
    timing = {"batch_seconds"}
    rows = [[{k: v for k, v in json.loads(line).items() if k not in timing}
             for line in (tmp_path / run / "predictions.jsonl").read_text().splitlines()] for run in ("hf", "vllm")]
    assert len(rows[0]) == 6 and sum(r["n_copies"] for r in rows[0]) > 0
    assert rows[1] == rows[0]
    info = json.loads((tmp_path / "vllm" / "run.json").read_text())["info"]
    assert info["engine"] == "vllm" and "vllm" in info["versions"]


def test_eval_engine_vllm_without_vllm_says_how_to_get_it(tmp_path, capsys):
    """In the main environment (no vLLM) the command stops before loading anything, naming the setup script."""
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is importable here")
    from testsupport import benchmarks_dir
    from pointcopy.cli import main as cli_main

    code = cli_main(["eval", "mathvision", "--model", str(SHAPES), "--data", str(benchmarks_dir() / "mathvision"),
                     "--limit", "1", "--out", str(tmp_path / "o"), "--engine", "vllm", "--no-progress"])
    assert code == 2 and "scripts/setup_vllm" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chat(port: int, question: str, image_path: Path) -> dict:
    import base64
    import urllib.request

    url = "data:image/png;base64," + base64.b64encode(image_path.read_bytes()).decode()
    body = {"model": "shapes-tiny", "max_tokens": STEPS, "temperature": 0, "skip_special_tokens": False,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_serve_answers_chat_requests_as_generate_does(tmp_path):
    """`pointcopy serve`: two concurrent OpenAI chat requests with different scenes get the text our `generate`
    writes (pointers as <|copy_k|>), and `copied_regions` locates its pointers as `Generation.cells` does."""
    import time
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from pointcopy.data.shapes.build import make_item
    from pointcopy.data.shapes.scene import render
    from pointcopy.embedded.demo import DEMO_SEED
    from pointcopy.embedded.recipe import load_recipe
    from pointcopy.inference import generate
    from pointcopy.model import PointCopyForConditionalGeneration
    from pointcopy.processing import PointCopyProcessor
    from pointcopy.serving.client import copied_regions

    python, port = vllm_python(), _free_port()
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(REPO / "src"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(python), "-m", "pointcopy.cli", "serve", str(SHAPES), "--port", str(port),
                               "--max-num-seqs", "4"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        scenes = load_recipe(SHAPES).scenes
        items = [make_item(DEMO_SEED, s, scenes) for s in (3, 4)]
        images = [render(item.scene) for item in items]
        for n, image in enumerate(images):
            image.save(tmp_path / f"{n}.png")
        model = PointCopyForConditionalGeneration.from_pretrained(SHAPES).eval()
        processor = PointCopyProcessor.from_pretrained(SHAPES)
        expected = generate(model, processor, [i.question.text for i in items], [[im] for im in images],
                            max_new_tokens=STEPS)
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.time() < deadline, "server did not come up"
                time.sleep(2)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda n: _chat(port, items[n].question.text, tmp_path / f"{n}.png"), range(2)))
        for answer, gen, image in zip(answers, expected, images):
            text = answer["choices"][0]["message"]["content"]
            assert text == gen.text
            assert gen.cells
            assert [(r["pointer"], r["image"], r["row"], r["col"]) for r in copied_regions(text, [image], processor)] \
                == [(c.slot, c.image, c.row, c.col) for c in gen.cells]
    finally:
        stop_process(server)
        log.close()
