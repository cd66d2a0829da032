"""Argument helpers shared by the commands: numbers that must be positive, input files and output directories,
and one flag per field of an options dataclass (`add_dataclass_arguments` / `dataclass_from_args`).

argparse turns the ValueError of a type function into `error: argument --x: ...` and exit status 2, before any
model is loaded."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def output_dir(text: str) -> Path:
    """A directory to write into: refused if it exists as a file (checked again when writing)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    return path


def existing_file(text: str) -> Path:
    """An input file that exists, is a regular file and is not empty."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    if path.stat().st_size == 0:
        raise argparse.ArgumentTypeError(f"{text}: empty file")
    return path


# --------------------------------------------------------------------------------------------- dataclass flags
def _flat_fields(cls, prefix: tuple[str, ...] = (), instance=None):
    """(path, field, type, default) of every leaf field of dataclass `cls`; a field whose type is a dataclass
    contributes its own fields (path ('scenes', 'min_objects')), with defaults from the parent's default instance
    of it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = getattr(instance, f.name) if instance is not None else _default(f)
        if dataclasses.is_dataclass(hint):
            yield from _flat_fields(hint, prefix + (f.name,), None if default is dataclasses.MISSING else default)
        else:
            yield prefix + (f.name,), f, hint, default


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, only: Iterable[str] | None = None,
                            exclude: Iterable[str] = (), helps: dict[str, str] | None = None,
                            aliases: dict[str, list[str]] | None = None) -> None:
    """One flag per leaf field of dataclass `cls` (nested dataclasses flattened: their fields keep their own names,
    which must not collide): `--max-steps 200`; bools as `--x/--no-x` (unset: the field's default, None for
    `bool | None`; argparse's `type=bool` would read "False" as True); `X | None` as X; lists as `nargs="+"`;
    dicts as a JSON object; `field(metadata={"help": ..., "choices": ..., "type": ...})` refines a flag. A field
    without a default is a required flag. `only` restricts the flags to those
    field names, `exclude` leaves some out, by name or by dotted path (`"training.max_side"`); either way they keep
    their defaults in `dataclass_from_args`, and an excluded one may share its name with another field."""
    helps, aliases = helps or {}, aliases or {}
    seen: set[str] = set()
    exclude = set(exclude)
    for path, f, hint, default in _flat_fields(cls):
        name = path[-1]
        if name in exclude or ".".join(path) in exclude:
            continue
        if name in seen:
            raise ValueError(f"{cls.__name__}: two fields are both called {name!r}; flags need distinct names")
        seen.add(name)
        if only is not None and name not in only:
            continue
        flags = ["--" + name.replace("_", "-"), *aliases.get(name, [])]
        # a field may carry its flag's help, choices and parser in its metadata
        kwargs = {"dest": name, "help": helps.get(name, f.metadata.get("help"))}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None` -> X
            base = next(t for t in typing.get_args(hint) if t is not type(None))
        required = default is dataclasses.MISSING
        if base is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, **kwargs)
        elif typing.get_origin(base) is list or base is list:
            item = (typing.get_args(base) or (str,))[0]
            parser.add_argument(*flags, nargs="+", type=item, required=required,
                                default=None if required else default, **kwargs)
        elif typing.get_origin(base) is dict or base is dict:
            parser.add_argument(*flags, type=json.loads, default=default, **kwargs)
        else:
            parser.add_argument(*flags, type=f.metadata.get("type", base), required=required,
                                default=None if required else default, **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace, *, exclude: Iterable[str] = (), **fixed):
    """Build `cls` (nested dataclasses included) from parsed flags; a field without a flag keeps its default (for
    a nested dataclass: the parent's default instance), `fixed` values (top-level fields) win over both."""
    exclude = set(exclude)

    def build(klass, base, prefix):
        kwargs = {}
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            path = prefix + (f.name,)
            if dataclasses.is_dataclass(hints[f.name]):
                inner = _default(f)
                kwargs[f.name] = build(hints[f.name], None if inner is dataclasses.MISSING else inner, path)
            elif base is None and f.name in fixed:
                kwargs[f.name] = fixed[f.name]
            elif hasattr(args, f.name) and f.name not in exclude and ".".join(path) not in exclude:
                kwargs[f.name] = getattr(args, f.name)
        return dataclasses.replace(base, **kwargs) if base is not None else klass(**kwargs)

    return build(cls, None, ())
