"""Which share of a job this process does when a launcher started several: `torchrun` and `accelerate launch` set
RANK and WORLD_SIZE (LOCAL_RANK: which GPU of this node). Used by jobs that split their items across processes
without a process group (`pointcopy eval`, `pointcopy pipeline build`): each rank writes its own resumable files,
marks them done, and rank 0 waits for the markers and merges in a fixed order.

    rank_and_world() -> (rank, world) or None     None: one process
    local_device()   -> "cuda:LOCAL_RANK" when CUDA is there, else "cpu"
    wait_for_files(paths, seconds)                until every marker exists (TimeoutError naming the missing)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["rank_and_world", "local_device", "wait_for_files"]


def rank_and_world() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when launched with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def local_device() -> str:
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}" if torch.cuda.is_available() else "cpu"


def wait_for_files(paths: Sequence[Path], seconds: float, echo: Callable = print, what: str = "ranks") -> None:
    """Poll until every path exists; TimeoutError naming the missing ones after `seconds`."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        echo(f"waiting for {len(missing)} of {len(paths)} {what} to finish")
    deadline = time.monotonic() + seconds
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = [p for p in missing if not Path(p).exists()]
    if missing:
        raise TimeoutError(f"{len(missing)} {what} did not finish within {seconds:.0f} s: "
                           f"{', '.join(str(p) for p in missing)}")
