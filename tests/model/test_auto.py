"""Hugging Face conventions: after `import pointcopy` (which stays free of torch) transformers' Auto classes load
pointcopy checkpoints as our classes; every save writes a model card with Hub metadata (never over a user's
README); the shipped checkpoint carries one; the ten-line example runs and draws the copied regions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ASSET = REPO / "src/pointcopy/embedded/assets/shapes-tiny"


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_import_pointcopy_registers_the_auto_classes_without_importing_torch():
    out = _python(f"""
import sys
import pointcopy
print("torch" in sys.modules)
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
p = {str(ASSET)!r}
print(type(AutoConfig.from_pretrained(p)).__name__, type(AutoModelForImageTextToText.from_pretrained(p)).__name__,
      type(AutoProcessor.from_pretrained(p)).__name__)
""")
    lines = out.strip().splitlines()
    assert lines[0] == "False"
    assert lines[-1] == "PointCopyConfig PointCopyForConditionalGeneration PointCopyProcessor"


def test_auto_classes_also_when_transformers_or_the_model_package_came_first():
    # every first import: a pointcopy module that imports transformers half-way through its own import must not
    # make the registration import it again half-initialised (it once did: `import pointcopy.processing` failed)
    for first in ("import transformers; import pointcopy", "import pointcopy.model", "import pointcopy.processing",
                  "import pointcopy.collate", "import pointcopy.training.run"):
        out = _python(f"""
{first}
from transformers import AutoProcessor
print(type(AutoProcessor.from_pretrained({str(ASSET)!r})).__name__)
""")
        assert out.strip().splitlines()[-1] == "PointCopyProcessor", first


def test_save_writes_a_model_card_and_keeps_a_users_readme(tmp_path):
    from pointcopy.model import PointCopyForConditionalGeneration
    from pointcopy.presets import build_preset

    model, _ = build_preset("tiny")
    model.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["pipeline_tag"] == "image-text-to-text" and "pointcopy" in meta["tags"]
    assert f"{model.config.copy_token_num:,} pointer slots" in card and "pipeline(" in card
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my own card\n")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my own card\n"
    # a base Qwen2.5-VL checkpoint converted on load: the card names it as base_model
    from pointcopy.presets import build_tiny_processor, plain_qwen_twin

    plain_qwen_twin(model).save_pretrained(tmp_path / "qwen")
    build_tiny_processor().save_pretrained(tmp_path / "qwen")
    PointCopyForConditionalGeneration.from_pretrained(tmp_path / "qwen").save_pretrained(tmp_path / "c")
    assert _front_matter((tmp_path / "c" / "README.md").read_text())["base_model"] == str(tmp_path / "qwen")


def test_shipped_checkpoint_carries_a_card_with_its_results():
    card = (ASSET / "README.md").read_text()
    meta = _front_matter(card)
    values = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    reported = json.loads((REPO / "docs/results/shapes-tiny-heldout300.json").read_text())
    assert values["answer_accuracy"] == round(reported["answer_accuracy"], 4)
    assert "shapes world" in card and "RECIPE.json" in card


def test_example_answers_and_draws_the_copied_regions(tmp_path):
    from pointcopy.data.shapes.scene import SceneConfig, generate_scene, render

    scene = generate_scene(5, SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True))
    render(scene).save(tmp_path / "scene.png")
    out = subprocess.run([sys.executable, "examples/answer_and_draw.py", str(ASSET), str(tmp_path / "scene.png"),
                          "How many red things are there?", str(tmp_path / "answer.png")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Answer:" in out.stdout and "<|copy_" in out.stdout
    drawn = np.asarray(Image.open(tmp_path / "answer.png").convert("RGB"))
    plain = np.asarray(Image.open(tmp_path / "scene.png").convert("RGB").resize(drawn.shape[1::-1]))
    changed = int((drawn != plain).any(-1).sum())
    assert changed > 0.01 * drawn.shape[0] * drawn.shape[1]  # the boxes and labels of the copied regions
