"""shapes-tiny training-step time: what each lever of the recipe buys (same model, same batches, one process).

Builds a small shapes split (the recipe's world and traces), the `shapes-tiny` preset with its vision tower frozen
as in the recipe, and random batches of `--batch-size` rows (one data-parallel rank's share of the recipe's 16).
Each step is forward + backward + AdamW through `PointCopyTrainer.compute_loss`; all configurations run
interleaved in one process and median step times are compared. Configurations:

    padded            one padded batch, logits at every position, official top-40 z-loss
    chunks N          N length chunks (training/chunks.py), otherwise as padded
    +supervised       3 chunks, logits only from the first position predicting a supervised token
    +full-Z           and the z-loss over all logits instead of the top 40 (the recipe's `z_loss_top_k=0`)
    -system prompt    and the same rows prompted without Qwen's default system block (the preset's template)
    +enum-call tokens and the shapes world's enumeration call as two tokens (presets._MARKUP): the tokenizer of
                      the preset now; the configurations above use the tokenizer before that change, whose
                      special-token ids differ, so this one trains its own copy of the model (same weights)
    -relation carry   as +enum-call tokens, on the same rows without a comparison's relation word carried on
                      its object lines (``. Compare: more``; traces.trace_text): what the carry costs

Prints the padding removed, a table, then `figure shapes_step_ratio[<config>] <x>` (seconds / padded seconds;
below 1.0 = faster) and the ratio of each lever to the configuration before it.

    .venv/bin/python benchmarks/shapes_step.py [--steps 12] [--batch-size 8] [--chunks 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainingArguments

from pointcopy.collate import GroundedCollator
from pointcopy.data.shapes import build_split
from pointcopy.data.shapes.traces import COPY_BOX_TEXT, REGION_RENDER
from pointcopy.embedded.recipe import PRESET, ShapesRecipe
from pointcopy import presets
from pointcopy.presets import build_preset
from pointcopy.training.chunks import split_by_length
from pointcopy.training.dataset import V1GDataset
from pointcopy.training.trainer import PointCopyTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = ShapesRecipe()

    with tempfile.TemporaryDirectory() as tmp:
        records = build_split(Path(tmp) / "train", 256, seed=5, config=recipe.scenes, progress=False)["copy"]
        data = V1GDataset([records])
        no_carry = _without_relation_carry(records)
        no_carry_data = V1GDataset([no_carry])
        markup = presets._MARKUP
        presets._MARKUP = [t for t in markup if t not in _ENUM_CALL_TOKENS]  # the tokenizer before the change
        try:
            model, processor = build_preset(PRESET, seed=0, default_system_prompt=True)
            _, plain_processor = build_preset(PRESET, seed=0, default_system_prompt=False)
        finally:
            presets._MARKUP = markup
        enum_model, enum_processor = build_preset(PRESET, seed=0)  # the preset as it is now
        enum_model.load_state_dict(_remap_vocab(model, enum_model, plain_processor.tokenizer, enum_processor.tokenizer))
        for m in (model, enum_model):
            for name, param in m.named_parameters():
                if re.search(recipe.training.freeze, name):
                    param.requires_grad_(False)
        render = dict(region_key_mode="keep" if REGION_RENDER["keep_key"] else "replace",
                      region_occurrences=REGION_RENDER["occurrences"], box_text=COPY_BOX_TEXT, max_side=None)
        collate = GroundedCollator(processor, **render)
        collate_plain = GroundedCollator(plain_processor, **render)
        collate_enum = GroundedCollator(enum_processor, **render)
        rng = random.Random(0)
        picks = [[rng.randrange(len(data)) for _ in range(args.batch_size)] for _ in range(6)]
        rows = [[data[i] for i in p] for p in picks]
        batches = [collate(r) for r in rows]
        plain_batches = [collate_plain(r) for r in rows]  # the same rows without the system block
        enum_batches = [collate_enum(r) for r in rows]  # and with the enumeration call as two tokens
        no_carry_batches = [collate_enum([no_carry_data[i] for i in p]) for p in picks]  # and no relation carry

        optimizers = {m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                      for m in (model, enum_model)}

        def trainer(chunks: int, supervised: bool, m=model) -> PointCopyTrainer:
            return PointCopyTrainer(model=m, args=TrainingArguments(output_dir=tmp, report_to=[], use_cpu=True),
                                    data_collator=collate, length_chunks=chunks, supervised_logits_only=supervised)

        # name -> (trainer, z_loss_top_k, batches, model); each lever is compared with the configuration before it
        configs = {"padded": (trainer(1, False), 40, batches, model)}
        configs.update({f"chunks {n}": (trainer(n, False), 40, batches, model) for n in args.chunks})
        configs["+supervised"] = (trainer(3, True), 40, batches, model)
        configs["+full-Z"] = (trainer(3, True), 0, batches, model)
        configs["-system prompt"] = (trainer(3, True), 0, plain_batches, model)
        configs["+enum-call tokens"] = (trainer(3, True, enum_model), 0, enum_batches, enum_model)
        configs["-relation carry"] = (trainer(3, True, enum_model), 0, no_carry_batches, enum_model)
        model.train()
        enum_model.train()

        def step(name: str, i: int) -> float:
            trainer_, z_top_k, config_batches, m = configs[name]
            m.config.z_loss_top_k = z_top_k
            batch = config_batches[i % len(config_batches)]
            t0 = time.perf_counter()
            trainer_.compute_loss(m, batch).backward()
            optimizers[m].step()
            optimizers[m].zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        for i in range(2):  # warm-up
            for name in configs:
                step(name, i)
        times = {name: [] for name in configs}
        order = list(configs)
        for s in range(args.steps):
            for name in order[:: 1 if s % 2 == 0 else -1]:
                times[name].append(step(name, s))

    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"shapes-tiny, batch {args.batch_size}, {args.threads} thread(s), {args.steps} interleaved steps; "
          f"real tokens / padded = {real / padded:.3f}")
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'config':>17} {'computed/padded':>16} {'median s/step':>14} {'ratio':>7}")
    for name, (trainer_, _, config_batches, m) in configs.items():
        n, start = trainer_.length_chunks, m.config.vision_start_token_id
        computed = sum(c["input_ids"].numel() for b in config_batches for c in split_by_length(b, n, start))
        print(f"{name:>17} {computed / padded:>16.3f} {median[name]:>14.4f} {median[name] / median['padded']:>7.3f}")
    for name in configs:
        if name != "padded":
            print(f"figure shapes_step_ratio[{name}] {median[name] / median['padded']:.3f}")
    plain_real = sum(int(b["attention_mask"].sum()) for b in plain_batches)
    print(f"real tokens without the system block / with it = {plain_real / real:.3f}")
    enum_real = sum(int(b["attention_mask"].sum()) for b in enum_batches)
    print(f"real tokens with the enumeration call as two tokens / without = {enum_real / plain_real:.3f}")
    no_carry_real = sum(int(b["attention_mask"].sum()) for b in no_carry_batches)
    print(f"real tokens with the relation carry / without = {enum_real / no_carry_real:.3f}")
    print(f"figure relation_carry_cost {median['+enum-call tokens'] / median['-relation carry']:.3f}")
    for before, lever in [("chunks 3", "+supervised"), ("+supervised", "+full-Z"), ("+full-Z", "-system prompt"),
                          ("-system prompt", "+enum-call tokens")]:
        if before in median:
            print(f"figure lever_ratio[{lever}] {median[lever] / median[before]:.3f}")


_ENUM_CALL_TOKENS = ('detect(query="object", objects=["', '</region>"])')
_RELATION_CARRY = re.compile(r"\. Compare: \w+$", re.M)  # the end of a comparison's object line


def _without_relation_carry(records: Path) -> Path:
    """A copy of the v1g JSONL `records` (beside it: same images) with the relation carry cut from every trace."""
    out = records.with_name(records.stem + "-no-relation-carry.jsonl")
    with open(records) as src, open(out, "w") as dst:
        for line in src:
            rec = json.loads(line)
            for turn in rec["conversations"]:
                if turn["from"] == "gpt":
                    turn["value"] = _RELATION_CARRY.sub("", turn["value"])
            dst.write(json.dumps(rec) + "\n")
    return out


def _remap_vocab(source, target, source_tok, target_tok) -> dict:
    """`source`'s state dict for `target`, whose tokenizer adds tokens (and so shifts ids): rows of the vocabulary
    matrices move to the same token's new id; rows of new tokens keep `target`'s initialisation."""
    state = dict(target.state_dict())
    src_vocab, dst_vocab = source_tok.get_vocab(), target_tok.get_vocab()
    common = [t for t in src_vocab if t in dst_vocab]
    src_ids = torch.tensor([src_vocab[t] for t in common])
    dst_ids = torch.tensor([dst_vocab[t] for t in common])
    n_src = len(source_tok)
    for key, value in source.state_dict().items():
        if value.shape == state[key].shape:
            state[key] = value
        elif value.shape[0] == n_src:  # embedding / lm_head rows
            rows = state[key].clone()
            rows[dst_ids] = value[src_ids]
            state[key] = rows
        else:
            raise ValueError(f"{key}: {tuple(value.shape)} vs {tuple(state[key].shape)}")
    return state


if __name__ == "__main__":
    main()
