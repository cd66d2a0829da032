"""Helpers shared by test modules: `from testsupport import ...` (tests/conftest.py puts this folder on sys.path;
a module name of its own, since every test folder's conftest.py is imported as `conftest`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
