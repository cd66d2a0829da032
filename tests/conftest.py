"""Shared test fixtures.

`shared/` (benchmarks and oracles) sits next to the repository: `<repo>/../shared`. CI clones main elsewhere,
so the location can be overridden with POINTCOPY_SHARED (root of shared/), POINTCOPY_BENCHMARKS or
POINTCOPY_ORACLES; `/work/shared` is the last fallback. A missing folder fails the test loudly instead of
skipping it: these oracle tests are the point of CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testsupport import REPO, benchmarks_dir, oracles_dir, shared_root  # noqa: E402,F401


@pytest.fixture(scope="session")
def benchmarks_path() -> Path:
    return benchmarks_dir()


@pytest.fixture(scope="session")
def oracles_path() -> Path:
    return oracles_dir()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny forwards run faster on one thread than on two on a busy 2-core machine; restored after the module
    (use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
