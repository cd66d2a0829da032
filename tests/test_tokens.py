"""Pointer ids <-> <|copy_k|> text, with the tiny Qwen-style tokenizer."""

from __future__ import annotations

import pytest

from pointcopy.presets import build_tiny_tokenizer
from pointcopy.tokens import decode_with_pointers, encode_with_pointers


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_round_trip(tok):
    start = len(tok)
    text = 'detect(query="red ball", objects=["<obj1><region>[0.10, 0.20, 0.30, 0.40]<|copy_5|><|copy_6|></region>"])'
    ids = encode_with_pointers(tok, text, start)
    assert [i - start for i in ids if i >= start] == [5, 6]
    assert decode_with_pointers(tok, ids, start) == text
    assert len(tok) == start  # the tokenizer was not extended


def test_shapes_enumeration_call_is_two_tokens_and_other_calls_still_split(tok):
    start = len(tok)
    line = 'detect(query="object", objects=["<obj2><region><|copy_8|><|copy_9|></region>"]) large cyan matte sphere'
    ids = encode_with_pointers(tok, line, start)
    pieces = [tok.convert_ids_to_tokens(i) if i < start else "<copy>" for i in ids]
    assert pieces[:6] == ['detect(query="object", objects=["', "<obj2>", "<region>", "<copy>", "<copy>",
                          '</region>"])']
    assert decode_with_pointers(tok, ids, start) == line
    other = tok.tokenize('detect(query="red things", objects=["<obj1>", "<obj3>"])')
    assert other[0] == 'detect(query="' and other[-1] == '"])' and '", objects=["' in other


def test_large_indices_and_special_tokens(tok):
    start = len(tok)
    ids = [start + 29999] + tok.encode("<|im_end|>", add_special_tokens=False) + [start]
    assert decode_with_pointers(tok, ids, start) == "<|copy_29999|><|im_end|><|copy_0|>"
    assert decode_with_pointers(tok, ids, start, skip_special_tokens=True) == "<|copy_29999|><|copy_0|>"


def test_out_of_range_pointer_is_named(tok):
    with pytest.raises(ValueError, match=r"<\|copy_9\|> at character 3 points past the sample's 4 image tokens"):
        encode_with_pointers(tok, "ab <|copy_9|>", len(tok), num_slots=4)


def test_tokenizer_and_chat_template_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert len(again) == len(tok)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = again.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n<|im_start|>assistant\n")
    assert again.encode(text) == tok.encode(text)


def test_shapes_preset_is_prompted_without_the_default_system_block(tmp_path):
    """shapes-tiny's template drops Qwen's default system block (27 tokens) and keeps everything else, a given
    system message included; the processor saved with a checkpoint reloads with it."""
    from pointcopy.presets import build_preset
    from pointcopy.processing import PointCopyProcessor

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    _, qwen = build_preset("shapes-tiny", default_system_prompt=True)
    _, shapes = build_preset("shapes-tiny")
    _, tiny = build_preset("tiny")
    full = qwen.apply_chat_template(msgs)
    block = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert tiny.apply_chat_template(msgs) == full and full.startswith(block)
    assert shapes.apply_chat_template(msgs) == full[len(block):]
    assert len(qwen.tokenizer.encode(block)) == 27
    system = [{"role": "system", "content": "Be brief."}] + msgs
    assert shapes.apply_chat_template(system) == qwen.apply_chat_template(system)
    shapes.save_pretrained(tmp_path)
    assert PointCopyProcessor.from_pretrained(tmp_path).apply_chat_template(msgs) == full[len(block):]
