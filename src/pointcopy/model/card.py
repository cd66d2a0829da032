"""Model cards: the README.md (Hugging Face metadata + a short text) that every saved pointcopy checkpoint carries.

    write_model_card(directory, config, results=None)   # called by `save_pretrained`; never replaces a README
                                                         # that is already there (a user's own card wins)

Metadata: `library_name: transformers`, `pipeline_tag: image-text-to-text`, `tags: [pointcopy, point-and-copy, v1]`
and `base_model` when the config records where the backbone came from. The text says what the pointer slots are,
how to load and run the checkpoint (transformers' `pipeline()` cannot: it has no pointer decoding), where the
checkpoint came from (the shapes recipe, from RECIPE.json beside the weights; a conversion of an official v1
release) and its evaluation results when known (`results`: {"benchmark", "metric", "value", "source"} dicts).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["model_card", "write_model_card"]

CARD = "README.md"


def _yaml_list(items) -> str:
    return "".join(f"\n  - {json.dumps(str(x))}" for x in items)


def model_card(config, provenance: str = "", results: list[dict] | None = None) -> str:
    base = getattr(config, "base_model_name_or_path", None) or None
    meta = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
            "tags:" + _yaml_list(["pointcopy", "point-and-copy", "v1", "grounded-reasoning"])]
    if base:
        meta.append(f"base_model: {json.dumps(str(base))}")
    if results:
        meta.append("model-index:\n  - name: " + json.dumps(str(getattr(config, "_name_or_path", "") or "pointcopy"))
                    + "\n    results:" + "".join(
                        f"\n      - task: {{type: image-text-to-text}}\n        dataset: {{name: {json.dumps(r['benchmark'])}, "
                        f"type: {json.dumps(r['benchmark'])}}}\n        metrics:\n          - {{type: "
                        f"{json.dumps(r['metric'])}, value: {r['value']}}}" for r in results))
    meta.append("---")
    slots = f"{config.copy_token_num:,} pointer slots (ids {config.copy_token_start:,} onwards)"
    text = [
        f"# {getattr(config, 'model_type', 'pointcopy')} point-and-copy checkpoint",
        "",
        "A vision-language model that, while it writes its reasoning, points at image patches and copies their "
        "embeddings back into its input (v1, arXiv 2505.18842), made with pointcopy. Its output vocabulary is the text vocabulary plus "
        f"{slots}: `<|copy_k|>` copies the k-th image token of the sample.",
        "",
        "## Use",
        "",
        "```python",
        "import pointcopy  # registers the Auto classes",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "from pointcopy.inference import generate",
        "",
        "model = AutoModelForImageTextToText.from_pretrained(PATH).eval()",
        "processor = AutoProcessor.from_pretrained(PATH)",
        "(answer,) = generate(model, processor, [\"How many objects are there?\"], [[image]])",
        "print(answer.text)",
        "```",
        "",
        "transformers' `pipeline(\"image-text-to-text\")` cannot run it: it has no pointer decoding (copy memory, "
        "pointer logits next to the vocabulary, a copied embedding as the next input). Use "
        "`pointcopy.inference.generate`, `pointcopy run` or `pointcopy app`.",
    ]
    if provenance:
        text += ["", "## Where it came from", "", provenance]
    if results:
        text += ["", "## Results", "", "| benchmark | metric | value | source |", "|---|---|---|---|"]
        text += [f"| {r['benchmark']} | {r['metric']} | {r['value']} | {r.get('source', '')} |" for r in results]
    return "\n".join(meta) + "\n\n" + "\n".join(text) + "\n"


def _provenance(directory: Path, config) -> str:
    recipe = directory / "RECIPE.json"
    if recipe.is_file():
        stored = json.loads(recipe.read_text())
        r = stored.get("recipe", {})
        training = r.get("training", {})
        return (f"Trained from scratch by pointcopy's embedded shapes recipe (`pointcopy shapes train`): the "
                f"`{stored.get('variant')}` traces, seed {stored.get('seed')}, {r.get('train_items')} training "
                f"scenes, {training.get('max_steps')} steps of batch {training.get('batch_size')}. It knows only "
                f"the synthetic shapes world. The full recipe is in RECIPE.json.")
    if getattr(config, "converted_from", None):
        return f"Converted from the official v1 release format ({config.converted_from})."
    return ""


def write_model_card(directory, config, results: list[dict] | None = None) -> Path | None:
    """Write README.md into a saved checkpoint unless one is there; returns its path (None if kept)."""
    directory = Path(directory)
    path = directory / CARD
    if path.exists():
        return None
    path.write_text(model_card(config, _provenance(directory, config), results), encoding="utf-8")
    return path
