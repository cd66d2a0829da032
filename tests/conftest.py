"""Shared test fixtures.

`shared/` (benchmarks and oracles) sits next to the repository: `<repo>/../shared`. CI clones main elsewhere,
so the location can be overridden with POINTCOPY_SHARED (root of shared/), POINTCOPY_BENCHMARKS or
POINTCOPY_ORACLES; `/work/shared` is the last fallback. A missing folder fails the test loudly instead of
skipping it: these oracle tests are the point of CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    env = os.environ.get("POINTCOPY_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"shared/ not found; tried {[str(c) for c in candidates]}; set POINTCOPY_SHARED")


def torchrun_cli(args: list[str], port: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """`pointcopy <args>` under torchrun: 2 real CPU processes (gloo) on 127.0.0.1:`port`."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                           "127.0.0.1", "--master-port", str(port), "-m", "pointcopy.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server a test started, kill it if it does not exit within `timeout` s, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def benchmarks_dir() -> Path:
    env = os.environ.get("POINTCOPY_BENCHMARKS")
    return Path(env) if env else shared_root() / "benchmarks"


def oracles_dir() -> Path:
    env = os.environ.get("POINTCOPY_ORACLES")
    return Path(env) if env else shared_root() / "oracles"


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
