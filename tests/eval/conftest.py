"""Session-scoped parsed benchmark files shared by the eval tests (parsing 27k lines once keeps the suite fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointcopy.eval import data, safe_math

from eval_oracle_files import MATHV_FILES, MATHVISTA_FILES  # noqa: E402 - tests/eval is on sys.path (rootdir mode)

@pytest.fixture(scope="session")
def mathv_root(benchmarks_path) -> Path:
    root = benchmarks_path / "mathvision"
    assert root.is_dir(), f"missing {root}"
    return root


@pytest.fixture(scope="session")
def mathv_test(mathv_root) -> data.Benchmark:
    return data.load_mathvision(mathv_root, "test")


@pytest.fixture(scope="session")
def mathv_outputs(mathv_root) -> dict[str, list[dict]]:
    return {name: data.read_jsonl(mathv_root / "outputs" / name) for name in MATHV_FILES}


@pytest.fixture(scope="session")
def evaluator():
    ev = safe_math.Evaluator()
    yield ev
    ev.close()


@pytest.fixture(scope="session")
def mathvista_root(benchmarks_path) -> Path:
    root = benchmarks_path / "mathvista"
    assert root.is_dir(), f"missing {root}"
    return root


@pytest.fixture(scope="session")
def mathvista_testmini(mathvista_root) -> data.Benchmark:
    return data.load_mathvista(mathvista_root / "data")


@pytest.fixture(scope="session")
def mathvista_outputs(mathvista_root) -> dict[str, dict]:
    return {name: json.loads((mathvista_root / "results" / name).read_text(encoding="utf-8"))
            for name in MATHVISTA_FILES}
