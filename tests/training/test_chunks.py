"""Length chunks (training/chunks.py, PointCopyTrainer.length_chunks): same loss, same gradients, less padding."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from pointcopy.collate import GroundedCollator, GroundedSample
from pointcopy.presets import build_preset
from pointcopy.training.chunks import split_by_length, supervised_tokens
from pointcopy.training.run import TrainOptions, train



def _image(rng: random.Random, size=(112, 112)) -> tuple[Image.Image, list[int]]:
    image = Image.new("RGB", size, (235, 235, 235))
    x, y = rng.randrange(0, size[0] - 30), rng.randrange(0, size[1] - 30)
    ImageDraw.Draw(image).rectangle([x, y, x + 24, y + 24], fill=(200, 30, 30))
    return image, [x, y, x + 24, y + 24]


def _samples() -> list[GroundedSample]:
    """Rows of very different lengths, one with two images (of different sizes) and one with none."""
    rng = random.Random(0)
    samples = []
    for i, words in enumerate([2, 30, 7, 55, 12, 3]):
        image, box = _image(rng, (112, 168) if i % 2 else (168, 112))
        trace = 'detect(query="square", objects=["<obj1>"]) ' + " ".join(["red"] * words) + "\nAnswer: 1"
        samples.append(GroundedSample(f"s{i}", [image], "Where is the square?", trace, [{"<obj1>": box}]))
    (a, box_a), (b, box_b) = _image(rng), _image(rng, (168, 168))
    samples.append(GroundedSample("two-images", [a, b], "Compare.",
                                  'detect(query="square", objects=["<obj1>", "<obj2>"]) same', [{"<obj1>": box_a},
                                                                                               {"<obj2>": box_b}]))
    samples.append(GroundedSample("text-only", [], "Say one.", "one two three four five six seven\nAnswer: 1"))
    return samples


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_preset("tiny", seed=0)
    return model, processor, GroundedCollator(processor, region_key_mode="keep")


def test_split_keeps_every_row_and_its_images(tiny):
    model, processor, collate = tiny
    samples = _samples()
    batch = collate(samples)
    chunks = split_by_length(batch, 3, model.config.vision_start_token_id)
    assert len(chunks) == 3
    lengths = batch["attention_mask"].sum(1)
    seen = []
    for chunk in chunks:
        width = chunk["input_ids"].shape[1]
        assert width == int(chunk["attention_mask"].sum(1).max())  # trimmed to its longest row
        for r in range(chunk["input_ids"].shape[0]):
            # find the original row: same real tokens, rest of the original row is padding
            row_len = int(chunk["attention_mask"][r].sum())
            matches = [i for i in range(len(samples)) if int(lengths[i]) == row_len and i not in seen
                       and torch.equal(batch["input_ids"][i, :width], chunk["input_ids"][r])]
            assert len(matches) == 1
            i = matches[0]
            seen.append(i)
            for key in ("attention_mask", "labels", "mm_token_type_ids"):
                assert torch.equal(batch[key][i, :width], chunk[key][r])
            assert not batch["attention_mask"][i, width:].any()
        # each chunk's images are its rows' images, in row order: re-collating those rows gives the same tensors
        alone = collate([samples[i] for i in seen[-chunk["input_ids"].shape[0]:]])
        assert torch.equal(alone["image_grid_thw"], chunk["image_grid_thw"])
        assert torch.equal(alone["pixel_values"], chunk["pixel_values"])
    assert sorted(seen) == list(range(len(samples)))
    assert [int(lengths[i]) for i in seen] == sorted(int(x) for x in lengths)  # ascending length
    assert sum(c["input_ids"].numel() for c in chunks) < batch["input_ids"].numel()
    assert sum(supervised_tokens(c["labels"]) for c in chunks) == supervised_tokens(batch["labels"])


def test_split_refuses_what_it_cannot_split(tiny):
    model, _, collate = tiny
    batch = collate(_samples()[:4])
    start = model.config.vision_start_token_id
    assert split_by_length(batch, 1, start) == [batch]
    with pytest.raises(ValueError, match="cannot split.*position_ids"):
        split_by_length({**batch, "position_ids": torch.zeros(1)}, 2, start)
    left = {**batch, "attention_mask": batch["attention_mask"].flip(1)}
    with pytest.raises(ValueError, match="right-padded"):
        split_by_length(left, 2, start)
    with pytest.raises(ValueError, match="open 4 images but image_grid_thw has 3"):
        split_by_length({**batch, "image_grid_thw": batch["image_grid_thw"][:3]}, 2, start)
    with pytest.raises(ValueError, match="n_chunks"):
        split_by_length(batch, 0, start)


def _loss_and_grads(model, collate, samples, chunks: int, tmp_path):
    from transformers import TrainingArguments

    from pointcopy.training.trainer import PointCopyTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = PointCopyTrainer(model=model, args=args, data_collator=collate, length_chunks=chunks)
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, collate(samples))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    logged = {k: trainer._sums[k] / trainer._counts[k] for k in trainer._sums}
    return loss.item(), grads, logged


def test_chunked_loss_and_gradients_equal_the_padded_batch(tiny, tmp_path):
    """The trainer's chunked loss is the padded batch's loss; so are its gradients and logged diagnostics."""
    model, _, collate = tiny
    samples = _samples()
    loss1, grads1, logged1 = _loss_and_grads(model, collate, samples, 1, tmp_path)
    loss3, grads3, logged3 = _loss_and_grads(model, collate, samples, 3, tmp_path)
    assert loss3 == pytest.approx(loss1, rel=1e-5)
    assert grads1.keys() == grads3.keys() and len(grads1) > 10
    for name in grads1:
        scale = grads1[name].abs().max().clamp(min=1e-8)
        assert float((grads1[name] - grads3[name]).abs().max() / scale) < 1e-4, name
    assert logged1.keys() == logged3.keys() == {"gen_loss", "copy_loss", "z_loss", "copy_acc"}
    for key in logged1:
        assert logged3[key] == pytest.approx(logged1[key], rel=1e-4, abs=1e-7), key


def test_trainer_scores_only_supervised_positions_with_the_same_loss(tiny, tmp_path):
    """The trainer asks for logits from the first position that predicts a supervised token on: fewer positions
    scored, the same loss and gradients as the model scoring every position."""
    model, _, collate = tiny
    samples = _samples()
    batch = collate(samples)
    model.train()
    model.zero_grad(set_to_none=True)
    full = model(**batch)
    full.loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    from pointcopy.training.trainer import _supervised_logits

    keep = _supervised_logits(batch, True)["logits_to_keep"]
    first_label = int((batch["labels"] != -100).any(0).nonzero()[0])
    assert keep == batch["labels"].shape[1] - (first_label - 1) < batch["labels"].shape[1]
    assert model(**batch, logits_to_keep=keep).logits.shape[1] == keep
    loss, grads, _ = _loss_and_grads(model, collate, samples, 1, tmp_path)
    assert loss == pytest.approx(full.loss.item(), rel=1e-6)
    assert grads.keys() == reference.keys()
    for name in grads:
        scale = reference[name].abs().max().clamp(min=1e-8)
        assert float((grads[name] - reference[name]).abs().max() / scale) < 1e-5, name


@pytest.fixture(scope="module")
def shapes_copy(tmp_path_factory):
    """Real shapes-world v1g records: traces of 3-8 objects, so rows differ in length by up to ~2x."""
    from pointcopy.data.shapes import build_split

    return build_split(tmp_path_factory.mktemp("shapes") / "train", 48, seed=3, progress=False)["copy"]


def _weights_after(shapes_copy, out, chunks: int, processes: int = 1):
    from pointcopy.training.parallel import train_data_parallel

    options = TrainOptions(model="tiny", train_data=[str(shapes_copy)], output_dir=str(out), batch_size=8,
                           max_steps=3, learning_rate=3e-3, save_steps=1000, progress=False, resume=False,
                           threads=processes, length_chunks=chunks)
    summary = train_data_parallel(options, processes)
    assert summary["global_step"] == 3
    return load_file(out / "final" / "model.safetensors")


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_training_with_chunks_reaches_the_same_weights(shapes_copy, tmp_path):
    """Real Trainer steps with length_chunks=3 end where the unchunked run ends (same batches, same gradients up
    to float rounding); the weights did move."""
    plain = _weights_after(shapes_copy, tmp_path / "c1", 1)
    chunked = _weights_after(shapes_copy, tmp_path / "c3", 3)
    assert _max_difference(plain, chunked) < 1e-5
    assert _max_difference(plain, _fresh_tiny_weights(tmp_path)) > 1e-3


def test_data_parallel_training_with_chunks_matches_unchunked(shapes_copy, tmp_path):
    """Two gloo ranks, each running its half-batch as 2 chunks (several forwards before one backward under DDP):
    the same weights as the same two-rank run without chunks."""
    plain = _weights_after(shapes_copy, tmp_path / "c1", 1, processes=2)
    chunked = _weights_after(shapes_copy, tmp_path / "c2", 2, processes=2)
    assert _max_difference(plain, chunked) < 1e-5


def _fresh_tiny_weights(tmp_path):
    model, _ = build_preset("tiny", seed=42)  # TrainOptions' default seed initialises the preset
    model.save_pretrained(tmp_path / "fresh")
    return load_file(tmp_path / "fresh" / "model.safetensors")
