"""Decoding settings of every generating command (`pointcopy eval`, `run`, `demo`, `analyze`): one dataclass, one
set of flags, one preset.

    add_decoding_arguments(parser, max_new_tokens=N)    --max-new-tokens --repetition-penalty --do-sample
                                                        --temperature --top-p --top-k [--seed] --official-suffix
                                                        --preset official
    decoding_from_args(args, device=...)  -> DecodingOptions: the preset filled in, flags given win; printed
    options.generate_kwargs()             -> kwargs for `model.generate` / `inference.generate`
    options.seed_for(key)                 -> the sampling seed of one batch (None when greedy)

`--preset official` is the v1 release's inference (inference.py / run_gradio.py, docs PAPER.md §6): the
"long-chain reasoning" suffix, greedy, max_new_tokens 8192, repetition_penalty 1.05 (transformers' penalty over
every id already in the sequence, prompt and pointer ids included: a pointer's logit is part of the same scores),
and float16 where the command has `--dtype` and runs on CUDA. Every value reaches `generate` explicitly, so a
checkpoint's generation_config.json (Qwen2.5-VL's sets do_sample, repetition_penalty 1.05, top_k 1, top_p 0.001,
temperature 0.1) never changes decoding unseen.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from dataclasses import dataclass, replace

from .commands.args import nonnegative_int, positive_float, positive_int

__all__ = ["DecodingOptions", "PRESETS", "add_decoding_arguments", "decoding_from_args"]

# what a preset sets; a flag the user gives wins over it
PRESETS: dict[str, dict] = {
    "official": {"max_new_tokens": 8192, "repetition_penalty": 1.05, "do_sample": False, "official_suffix": True,
                 "dtype": "float16"},
}
SAMPLING_FLAGS = ("temperature", "top_p", "top_k")


@dataclass(frozen=True)
class DecodingOptions:
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0  # 1.0: off
    do_sample: bool = False  # False: greedy
    temperature: float = 1.0  # the three sampling values are used only with do_sample
    top_p: float = 1.0  # 1.0: off
    top_k: int = 0  # 0: off
    seed: int | None = None  # sampling seed (None: 0)
    official_suffix: bool = False
    dtype: str | None = None  # for a command with --dtype; None: it has none
    preset: str | None = None

    def __post_init__(self):
        bad = [f"{name} must be {rule}, got {value!r}" for name, value, ok, rule in [
            ("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, ">= 1"),
            ("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0, "> 0"),
            ("temperature", self.temperature, self.temperature > 0, "> 0"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k, self.top_k >= 0, ">= 0")]
            if not ok or (isinstance(value, float) and math.isnan(value))]
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def suffix(self) -> str:
        from .inference import OFFICIAL_SUFFIX

        return OFFICIAL_SUFFIX if self.official_suffix else ""

    def generate_kwargs(self) -> dict:
        """For `model.generate` (and `inference.generate`): every decoding value explicitly."""
        kwargs = {"do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs

    def seed_for(self, key: str = "") -> int | None:
        """The seed to sample one batch with (None when greedy): `seed` itself for key "", else derived from the
        seed and `key` (e.g. the batch's first item id), so a batch samples the same ids whichever rank or resumed
        run generates it."""
        if not self.do_sample:
            return None
        seed = self.seed or 0
        if not key:
            return seed
        return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:4], "little")

    def settings(self) -> dict:
        """What a run records and a resume compares (suffix, max_new_tokens and dtype are recorded by the command)."""
        out = {"decoding": "sample" if self.do_sample else "greedy", "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed or 0)
        return out

    def describe(self) -> str:
        parts = ["sampling (temperature {:g}, top_p {:g}, top_k {}, seed {})".format(
            self.temperature, self.top_p, self.top_k or "off", self.seed or 0) if self.do_sample else "greedy",
            f"repetition penalty {self.repetition_penalty:g}" + (" (off)" if self.repetition_penalty == 1 else ""),
            f"max new tokens {self.max_new_tokens}",
            "official suffix" if self.official_suffix else "no suffix"]
        if self.dtype is not None:
            parts.append(f"dtype {self.dtype}")
        return ", ".join(parts) + (f" (preset {self.preset})" if self.preset else "")


# --------------------------------------------------------------------------------------------- flags
def _unit_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_decoding_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int, seed: bool = True) -> None:
    """The decoding flags, each defaulting to None ("not given") so `--preset` can fill it; `max_new_tokens` is the
    command's own default. `seed=False`: the command already has a `--seed`, which then also seeds sampling."""
    official = PRESETS["official"]
    g = parser.add_argument_group("decoding (shared by eval, run, demo, analyze)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help=f"official: the v1 release's inference settings (official suffix, greedy, max new tokens "
                        f"{official['max_new_tokens']}, repetition penalty {official['repetition_penalty']}, and "
                        f"--dtype float16 where the command has --dtype, on CUDA only: float16 on a CPU is far slower "
                        f"than float32, so there the dtype is left alone with a note). Flags given explicitly win.")
    g.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"default {max_new_tokens} ({official['max_new_tokens']} with --preset official)")
    g.add_argument("--repetition-penalty", type=positive_float, default=None,
                   help="transformers' repetition penalty over every id already in the sequence, pointer ids "
                        "included (default 1.0 = off, whatever the checkpoint's generation_config says)")
    g.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=positive_float, default=None, help="with --do-sample (default 1.0)")
    g.add_argument("--top-p", type=_unit_float, default=None, help="with --do-sample (default 1.0 = off)")
    g.add_argument("--top-k", type=nonnegative_int, default=None, help="with --do-sample (default 0 = off)")
    if seed:
        g.add_argument("--seed", type=int, default=None,
                       help="sampling seed (default 0): the same seed and inputs give the same ids")
    g.add_argument("--official-suffix", "--official-prompt", dest="official_suffix", action="store_true",
                   default=None, help="append the official v1 'long-chain reasoning' instruction to every question")
    parser.set_defaults(decoding_default_max_new_tokens=max_new_tokens)


def decoding_from_args(args: argparse.Namespace, *, device: str | None = None, echo=None) -> DecodingOptions:
    """The options the flags and `--preset` give (flags given win), printed as one line (`echo`, default stderr).
    ValueError for a sampling value without --do-sample. `device` decides the preset's dtype."""
    echo = echo or (lambda text: print(text, file=sys.stderr))
    preset_name = getattr(args, "preset", None)
    preset = PRESETS[preset_name] if preset_name else {}

    def pick(name: str, default):
        value = getattr(args, name, None)
        return value if value is not None else preset.get(name, default)

    do_sample = bool(pick("do_sample", False))
    given = [name for name in SAMPLING_FLAGS if getattr(args, name, None) is not None]
    if given and not do_sample:
        raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in given)} only apply to sampling: add "
                         f"--do-sample")
    dtype = None
    if hasattr(args, "dtype"):
        dtype = args.dtype
        if dtype is None:
            dtype = "auto"
            if "dtype" in preset:
                if str(device or "cpu").startswith("cuda"):
                    dtype = preset["dtype"]
                else:
                    echo(f"note: --preset {preset_name} runs {preset['dtype']} on CUDA only; on {device or 'cpu'} "
                         f"half-precision matrix products are far slower than float32, so the dtype stays auto "
                         f"(the checkpoint's); --dtype {preset['dtype']} forces it")
    options = DecodingOptions(
        max_new_tokens=int(pick("max_new_tokens", getattr(args, "decoding_default_max_new_tokens", 256))),
        repetition_penalty=float(pick("repetition_penalty", 1.0)), do_sample=do_sample,
        temperature=float(pick("temperature", 1.0)), top_p=float(pick("top_p", 1.0)), top_k=int(pick("top_k", 0)),
        seed=getattr(args, "seed", None), official_suffix=bool(pick("official_suffix", False)), dtype=dtype,
        preset=preset_name)
    echo(f"decoding: {options.describe()}")
    return options


def with_seed(options: DecodingOptions, seed: int | None) -> DecodingOptions:
    """`options` sampling with `seed` unless it has a seed of its own (the demo seeds sampling with its scene)."""
    return options if options.seed is not None or seed is None else replace(options, seed=seed)
