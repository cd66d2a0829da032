"""The `shapes-tiny` recipe: data, training and held-out evaluation of the embedded default, in one place.

    build_data(root)            shapes scenes -> v1g records (copy / coord / nocopy variants share images)
    train_variant(root, ...)    pointcopy train on one variant (same data, steps and seed across variants)
    evaluate_model(dir, ...)    greedy generation on held-out scenes -> answer / pointer / region metrics

Everything is deterministic from the recipe's seeds; each stage resumes (data build, checkpoints, predictions).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..data.shapes.scene import SceneConfig
from ..data.shapes.traces import COPY_BOX_TEXT, REGION_RENDER
from ..options import check_minimums
from ..training.options import TrainHyperparameters

PRESET = "shapes-tiny"
RECIPE_FILE = "RECIPE.json"


def recipe_training() -> TrainHyperparameters:
    """The shapes-tiny training hyperparameters (the fields a run sets per call -- seed, progress, save_steps,
    model_overrides, require_object_regions -- are filled in by `train_options`)."""
    return TrainHyperparameters(
        # As many steps as fit the 10 minutes of `shapes train` the embedded default is given (from a fresh root,
        # with the levers below); more steps would still raise accuracy (docs/embedded-world.md#steps).
        max_steps=1100,
        batch_size=16,
        # A higher rate did not rescue a seed that missed the late skills (docs/embedded-world.md#learning-rate).
        learning_rate=3e-3,
        vision_lr_scale=0.5,
        # Freeze the (randomly initialised, then warmed-up) vision tower: trained with the LM, the pointer and
        # answer losses wash colour out of its features; frozen, steps are also cheaper
        # (docs/embedded-world.md#frozen-tower-and-warm-up).
        freeze=r"model\.visual\.",
        warmup_ratio=0.05,
        lr_scheduler="cosine",
        weight_decay=0.0,
        save_total_limit=1,
        logging_steps=50,
        # regions rendered exactly as the shapes world defines them (data.shapes.traces)
        region_key_mode="keep" if REGION_RENDER["keep_key"] else "replace",
        region_occurrences=REGION_RENDER["occurrences"],
        box_text=COPY_BOX_TEXT,
        max_side=None,
        threads=2,  # in total, over all processes
        # Length-grouped batches pad less and step faster, but batches of one scene size (and mostly one family)
        # train much worse here (docs/embedded-world.md#length-grouping-rejected).
        group_by_length=False,
        # Each rank's 8 rows run as 3 length-sorted sub-batches (training/chunks.py): the same batches and
        # gradients with less padding computed, so shorter steps (docs/embedded-world.md#length-chunks).
        length_chunks=3,
        # Deal each global batch of 16 to the two ranks by length (training/sampling.py), so neither waits long
        # for the other (docs/embedded-world.md#rank-balancing).
        balance_ranks=True,
    )


@dataclass(frozen=True)
class ShapesRecipe:
    # Fewer scenes seen more often are read better in training than new scenes are
    # (measurements: docs/embedded-world.md#training-scenes).
    train_items: int = 16000
    test_items: int = 300
    train_seed: int = 1
    test_seed: int = 2
    # The scenes (data.shapes.scene.SceneConfig; each field is a flag of its own, e.g. --max-objects): 3-8 objects;
    # every merged cell shows at most one object (exclusive_cells), so each copy is one object's evidence
    # (measurements: docs/embedded-world.md#cells-of-their-own); no per-cell background tint (position_tint 0): it
    # did not help answers or regions (docs/embedded-world.md#position-tint).
    scenes: SceneConfig = field(default_factory=lambda: SceneConfig(min_objects=3, max_objects=8,
                                                                    exclusive_cells=True))
    # How each variant trains (training.run.TrainHyperparameters; each field is a flag, e.g. --max-steps or --steps):
    # see `recipe_training` for the values and why.
    training: TrainHyperparameters = field(default_factory=lambda: recipe_training())
    # Perception warm-up (embedded.perception) of the vision tower before it is frozen: steps of batch 32 scenes.
    vision_warmup_steps: int = 300
    # Data-parallel ranks (training.parallel, gloo): on 2 cores two ranks of one thread step faster than one rank of
    # two threads (`benchmarks/data_parallel.py`; measurements: docs/embedded-world.md#processes-and-threads).
    # training.threads is the total: with `processes` > 1 each process gets threads / processes.
    processes: int = 2
    # z-loss over the full partition function instead of the official top-40 one: on CPU the top-k is a noticeable
    # part of a step, a logsumexp over all logits far cheaper. Not switched off: late in training it is a sizeable
    # part of the loss, so it shapes the logits (measurements: docs/embedded-world.md#z-loss-over-the-full-partition).
    z_loss_top_k: int = 0
    # Prompt without Qwen's default system block ("You are a helpful assistant."): it only makes every row longer
    # (measurements: docs/embedded-world.md#no-default-system-prompt). The chat template is saved with every
    # checkpoint, so evaluation and the demo prompt alike.
    default_system_prompt: bool = False
    model_seed: int = 0
    eval_batch_size: int = 16
    max_new_tokens: int = 640
    preset_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        check_minimums(self, {"train_items": 1, "test_items": 1, "vision_warmup_steps": 0, "processes": 1,
                              "eval_batch_size": 1, "max_new_tokens": 1})

    def with_(self, **changes) -> "ShapesRecipe":
        """A copy with `changes`; a change may name a field of `scenes` or `training` directly
        (`with_(max_objects=6, max_steps=300)`)."""
        own = {f.name for f in fields(self)}
        nested = {"scenes": {}, "training": {}}
        for k, v in changes.items():
            if k in own:
                continue
            home = next((n for n in nested if k in {f.name for f in fields(getattr(self, n))}), None)
            if home is None:
                raise TypeError(f"ShapesRecipe has no field {k!r} (nor its scenes or training)")
            nested[home][k] = v
        top = {k: v for k, v in changes.items() if k in own}
        for name, sub in nested.items():
            if sub:
                top[name] = replace(top.get(name, getattr(self, name)), **sub)
        return replace(self, **top)

    @classmethod
    def of(cls, **changes) -> "ShapesRecipe":
        """The default recipe with `changes` (see `with_`)."""
        return cls().with_(**changes)

    @classmethod
    def from_dict(cls, stored: dict) -> "ShapesRecipe":
        """A recipe from `asdict` output, also of older versions: unknown fields are ignored, and the fields older
        recipes kept at the top level go into `scenes` / `training` (`steps` is `training.max_steps`)."""
        known = {f.name for f in fields(cls)}
        base = cls()
        parts = {}
        for name, old_names in (("scenes", _FORMERLY_FLAT), ("training", _FORMERLY_FLAT_TRAINING)):
            inner = {f.name for f in fields(getattr(base, name))}
            values = dict(stored.get(name) or {})
            for old in old_names:
                if old in stored:
                    values.setdefault(_RENAMED.get(old, old), stored[old])
            parts[name] = replace(getattr(base, name), **{k: v for k, v in values.items() if k in inner})
        return cls(**{k: v for k, v in stored.items() if k in known and k not in parts}, **parts)

    def flat(self) -> dict:
        """Field -> value with nested fields as `scenes.<name>` / `training.<name>` (what recipes are compared by)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("scenes", "training")}
        out.update({f"scenes.{k}": v for k, v in asdict(self.scenes).items()})
        out.update({f"training.{k}": v for k, v in asdict(self.training).items()})
        return out


# fields that recipes written before `scenes` and `training` were nested stored at the top level
_FORMERLY_FLAT = ("min_objects", "max_objects", "position_tint", "exclusive_cells")
_FORMERLY_FLAT_TRAINING = ("steps", "batch_size", "learning_rate", "vision_lr_scale", "freeze", "warmup_ratio",
                           "lr_scheduler", "threads", "group_by_length", "length_chunks", "balance_ranks")
_RENAMED = {"steps": "max_steps"}


def build_data(root: str | Path, recipe: ShapesRecipe = ShapesRecipe(), progress: bool = True) -> dict[str, dict]:
    """Train and test splits under `root/data/{train,test}`; returns their file paths per variant + items."""
    from ..data.shapes.build import build_split

    root = Path(root)
    return {
        "train": build_split(root / "data" / "train", recipe.train_items, recipe.train_seed, config=recipe.scenes,
                             progress=progress),
        "test": build_split(root / "data" / "test", recipe.test_items, recipe.test_seed, config=recipe.scenes,
                            progress=progress),
    }


def train_options(recipe: ShapesRecipe, data: str | Path, out_dir: str | Path, seed: int, progress: bool = True,
                  require_object_regions: bool = True, model: str | Path = PRESET):
    """The `TrainOptions` of one shapes-tiny run: the recipe's `training` plus what is per run.

    `model` is the preset (fresh weights from `seed`) or a checkpoint to start from (the warmed-up tower)."""
    from ..training.options import TrainOptions

    hyper = {f.name: getattr(recipe.training, f.name) for f in fields(recipe.training)}
    return TrainOptions(**{**hyper, "seed": seed, "progress": progress, "require_object_regions":
                           require_object_regions, "save_steps": max(50, recipe.training.max_steps // 6),
                           "model_overrides": {**(recipe.preset_overrides if model == PRESET else {}),
                                               "z_loss_top_k": recipe.z_loss_top_k}},
                        model=str(model), train_data=[str(data)], output_dir=str(out_dir))


def vision_init(root: str | Path, recipe: ShapesRecipe, seed: int, progress: bool = True) -> Path:
    """`root/runs/vision-init-seed{seed}`: the preset (initialised from `seed`, with the recipe's overrides) after
    the perception warm-up on the train split's scenes. Built once per seed and shared by every variant of that
    seed, so the ablation's conditions differ only in their traces. Written to a temporary folder and renamed,
    so a killed warm-up is redone, never half-read."""
    import shutil

    import torch

    from ..data.shapes.build import read_items
    from ..presets import build_preset, tokenizer_fingerprint
    from .perception import pretrain_vision

    root = Path(root)
    out = root / "runs" / f"vision-init-seed{seed}"
    model, processor = build_preset(PRESET, seed=seed, default_system_prompt=recipe.default_system_prompt,
                                    **recipe.preset_overrides)
    # The warm-up checkpoint carries the tokenizer every variant then trains with, so it must be the preset's
    # current one (the model's vocabulary rows and special-token ids follow it).
    wanted = {"steps": recipe.vision_warmup_steps, "preset_overrides": dict(recipe.preset_overrides),
              "default_system_prompt": recipe.default_system_prompt,
              "tokenizer": tokenizer_fingerprint(processor.tokenizer)}
    if (out / "config.json").is_file():
        built = json.loads((out / "warmup.json").read_text())
        # warm-ups written before the field existed used Qwen's default system prompt
        built = {"steps": built.get("steps"), "preset_overrides": built.get("preset_overrides", {}),
                 "default_system_prompt": built.get("default_system_prompt", True),
                 "tokenizer": built.get("tokenizer", "<not recorded>")}
        if built != wanted:  # a stale tower of another model shape would load wrongly or silently differ
            raise ValueError(f"{out} was built with {built}, this recipe needs {wanted}: delete it or use another "
                             f"--root")
        return out
    torch.set_num_threads(recipe.training.threads)
    data = root / "data"
    report = pretrain_vision(model, processor, read_items(data / "train"), data / "train" / "images",
                             steps=recipe.vision_warmup_steps, seed=seed, test_items=read_items(data / "test"),
                             test_images=data / "test" / "images", progress=progress)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "warmup.json").write_text(json.dumps({**report, **wanted}, indent=1))
    tmp.rename(out)
    return out


def train_variant(root: str | Path, recipe: ShapesRecipe = ShapesRecipe(), variant: str = "copy",
                  seed: int | None = None, progress: bool = True, out_dir: str | Path | None = None,
                  data: str | Path | None = None) -> Path:
    """Train `shapes-tiny` on one variant; returns the final model directory (resumes an interrupted run).
    `data`: v1g records to train on instead of the train split's `{variant}.jsonl` (e.g. records built by
    `pointcopy pipeline build` from the same scenes; the vision warm-up still uses the train split's scenes)."""
    from ..training.parallel import train_data_parallel

    seed = recipe.model_seed if seed is None else seed
    root = Path(root)
    data = Path(data) if data is not None else root / "data" / "train" / f"{variant}.jsonl"
    out = Path(out_dir) if out_dir else root / "runs" / f"{variant}-seed{seed}"
    if (out / "final" / "config.json").is_file():
        _check_same_training(out / "final", recipe)
        return out / "final"
    if not recipe.vision_warmup_steps and recipe.default_system_prompt != _preset_default_system_prompt():
        raise ValueError(f"default_system_prompt={recipe.default_system_prompt} needs the vision warm-up (its "
                         f"checkpoint carries the chat template); the {PRESET} preset itself uses "
                         f"{_preset_default_system_prompt()}")
    start = vision_init(root, recipe, seed, progress) if recipe.vision_warmup_steps else PRESET
    train_data_parallel(train_options(recipe, data, out, seed, progress, require_object_regions=variant == "copy",
                                      model=start), recipe.processes)
    final = out / "final"
    # The recipe travels with the checkpoint: the demo draws its scenes the way this model was trained on.
    (final / RECIPE_FILE).write_text(json.dumps({"recipe": asdict(recipe), "variant": variant, "seed": seed},
                                                indent=1))
    from ..model import PointCopyConfig
    from ..model.card import CARD, write_model_card

    (final / CARD).unlink(missing_ok=True)  # written by save_pretrained before the recipe was beside it
    write_model_card(final, PointCopyConfig.from_pretrained(final))
    return final


def _preset_default_system_prompt() -> bool:
    from ..presets import PRESET_PROCESSORS

    return PRESET_PROCESSORS.get(PRESET, {}).get("default_system_prompt", True)


# Fields that only change how a model is evaluated, not how it is trained.
_EVAL_ONLY = {"test_items", "test_seed", "eval_batch_size", "max_new_tokens"}


def _check_same_training(final: Path, recipe: ShapesRecipe) -> None:
    """Refuse to reuse a finished run trained with another recipe (a resumed ablation would mix recipes)."""
    path = final / RECIPE_FILE
    stored = _flat_stored(json.loads(path.read_text()).get("recipe", {}) if path.is_file() else {})
    wanted = recipe.flat()
    missing = "<not recorded>"
    differ = sorted(k for k in wanted if k not in _EVAL_ONLY and stored.get(k, missing) != wanted[k])
    if differ:
        changes = ", ".join(f"{k}: {stored.get(k, missing)!r} -> {wanted[k]!r}" for k in differ)
        raise ValueError(f"{final} was trained with another recipe ({changes}): delete it or use another --root")


def _flat_stored(stored: dict) -> dict:
    """A stored recipe dict in `ShapesRecipe.flat` keys. A recipe from before the nesting kept some scene and
    training fields at the top level; it ran with SceneConfig's defaults for the other scene fields and with the
    values `recipe_training` still gives for the other training fields, so those count as recorded."""
    nested_keys = ("scenes", "training")
    out = {k: v for k, v in stored.items()
           if k not in nested_keys and k not in _FORMERLY_FLAT and k not in _FORMERLY_FLAT_TRAINING}
    for name, old_names, implied in (("scenes", _FORMERLY_FLAT, SceneConfig()),
                                     ("training", _FORMERLY_FLAT_TRAINING, recipe_training())):
        if isinstance(stored.get(name), dict):
            out.update({f"{name}.{k}": v for k, v in stored[name].items()})
        elif stored:
            out.update({f"{name}.{_RENAMED.get(k, k)}": stored[k] for k in old_names if k in stored})
            renamed = {_RENAMED.get(k, k) for k in old_names}
            out.update({f"{name}.{f.name}": getattr(implied, f.name) for f in fields(implied)
                        if f.name not in renamed})
    return out


def load_recipe(model_dir: str | Path) -> ShapesRecipe:
    """The recipe a model was trained with (`RECIPE.json` beside its weights); the default one if absent."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return ShapesRecipe()
    return ShapesRecipe.from_dict(json.loads(path.read_text()).get("recipe", {}))


def evaluate_model(model_dir: str | Path, test_dir: str | Path, recipe: ShapesRecipe = ShapesRecipe(), *,
                   limit: int | None = None, pointing_enabled: bool = True, out_file: str | Path | None = None,
                   progress: bool = True) -> dict:
    """Greedy traces for held-out items (resumable JSONL of predictions) scored with `eval.shapes`."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from ..data.shapes.build import read_items
    from ..eval.shapes import evaluate
    from ..inference import generate
    from ..jsonl import drop_partial_last_line
    from ..model import PointCopyForConditionalGeneration
    from ..processing import PointCopyProcessor

    torch.set_num_threads(recipe.training.threads)
    test_dir = Path(test_dir)
    items = read_items(test_dir / "items.jsonl")[: limit or None]
    model = PointCopyForConditionalGeneration.from_pretrained(model_dir, pointing_enabled=pointing_enabled).eval()
    processor = PointCopyProcessor.from_pretrained(model_dir)
    out_file = Path(out_file) if out_file else Path(model_dir).parent / (
        f"predictions{'' if pointing_enabled else '-nopointing'}-{test_dir.name}.jsonl")
    predictions: dict[str, str] = {}
    if out_file.exists():
        drop_partial_last_line(out_file)
        for line in out_file.read_text().splitlines():
            row = json.loads(line)
            predictions[row["id"]] = row["text"]
    todo = [it for it in items if it["id"] not in predictions]
    t0 = time.perf_counter()
    with open(out_file, "a") as fh, tqdm(total=len(items), initial=len(items) - len(todo), unit="item",
                                         desc="evaluate", disable=not progress) as bar:
        for i in range(0, len(todo), recipe.eval_batch_size):
            chunk = todo[i:i + recipe.eval_batch_size]
            images = [[Image.open(test_dir / "images" / f"{it['id']}.png").convert("RGB")] for it in chunk]
            gens = generate(model, processor, [it["question"] for it in chunk], images,
                            max_new_tokens=recipe.max_new_tokens)
            for it, g in zip(chunk, gens):
                predictions[it["id"]] = g.text
                fh.write(json.dumps({"id": it["id"], "text": g.text, "finished": g.finished}) + "\n")
            fh.flush()
            bar.update(len(chunk))
    result = evaluate({it["id"]: predictions[it["id"]] for it in items}, items)
    result["generation_seconds"] = round(time.perf_counter() - t0, 1)
    result["pointing_enabled"] = pointing_enabled
    result["model_dir"] = str(model_dir)
    return result


def recipe_dict(recipe: ShapesRecipe) -> dict:
    return asdict(recipe)
