"""Pointer ids <-> `<|copy_k|>` text, without adding 30,000 tokens to the tokenizer.

Pointer id = copy_token_start + k (k = image-token slot of the sample). Text runs are decoded/encoded by the
tokenizer; pointers are rendered/parsed here, so the tokenizer (and its embedding table) stays untouched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

COPY_TOKEN_RE = re.compile(r"<\|copy_(\d+)\|>")


def copy_token(k: int) -> str:
    return f"<|copy_{k}|>"


def decode_with_pointers(tokenizer, ids: Sequence[int], copy_token_start: int,
                         skip_special_tokens: bool = False) -> str:
    """Token ids (may include pointer ids) -> text with `<|copy_k|>` for every pointer."""
    ids = [int(i) for i in ids]
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
        if i >= copy_token_start:
            if run:
                parts.append(tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
                run = []
            parts.append(copy_token(i - copy_token_start))
        else:
            run.append(i)
    if run:
        parts.append(tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
    return "".join(parts)


def encode_with_pointers(tokenizer, text: str, copy_token_start: int, num_slots: int | None = None) -> list[int]:
    """Text that may contain `<|copy_k|>` -> ids (no special tokens added). With `num_slots`, a pointer
    k >= num_slots raises ValueError naming the offending token and its offset."""
    ids: list[int] = []
    pos = 0
    for m in COPY_TOKEN_RE.finditer(text):
        if m.start() > pos:
            ids += tokenizer.encode(text[pos:m.start()], add_special_tokens=False)
        k = int(m.group(1))
        if num_slots is not None and k >= num_slots:
            raise ValueError(f"{m.group(0)} at character {m.start()} points past the sample's {num_slots} "
                             f"image tokens")
        ids.append(copy_token_start + k)
        pos = m.end()
    if pos < len(text):
        ids += tokenizer.encode(text[pos:], add_special_tokens=False)
    return ids
