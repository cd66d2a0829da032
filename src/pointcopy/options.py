"""Lower bounds of numeric options, checked where the option dataclasses are built (`TrainOptions`,
`ShapesRecipe`), so the Python API and the generated command-line flags refuse the same values with the same
message: `batch_size (--batch-size) must be >= 1, got 0`."""

from __future__ import annotations

import math
from typing import Any


def check_minimums(obj: Any, minimums: dict[str, float], *, exclusive: tuple[str, ...] = ()) -> None:
    """ValueError for the first field of `obj` below its minimum (or not above it, for names in `exclusive`);
    None values (an option left unset) pass."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if value is None:
            continue
        bad = isinstance(value, float) and math.isnan(value)
        bad = bad or (value <= low if name in exclusive else value < low)
        if bad:
            relation = ">" if name in exclusive else ">="
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be {relation} {low:g}, got {value!r}")
