"""Argument types shared by the commands: numbers that must be positive, and output directories.

argparse turns the ValueError of a type function into `error: argument --x: ...` and exit status 2, before any
model is loaded."""

from __future__ import annotations

import argparse
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
