"""Which share of a job this process does when a launcher started several: `torchrun` and `accelerate launch` set
RANK and WORLD_SIZE (LOCAL_RANK: which GPU of this node). Used by jobs that split their items across processes
without a process group (`pointcopy eval`, `pointcopy pipeline build`): each rank writes its own resumable files,
marks them done, and rank 0 waits for the markers and merges in a fixed order.

    rank_and_world() -> (rank, world) or None     None: one process
    local_device()   -> "cuda:LOCAL_RANK" when CUDA is there, else "cpu"
    wait_for_files(paths, seconds)                until every marker exists (TimeoutError naming the missing)
    shard_batches(ids, batch_size, shard, done)   this process's batches still to do, and the size of its share
    wait_for_items(read, ids, seconds)            rank 0: poll the ranks' files until every item is in one of them
    add_rank_timeout_argument(parser)             --rank-timeout: how long rank 0 waits for the others

Jobs that form batches (`pointcopy eval`, `pointcopy analyze`) deal them round-robin (`shard_batches`): every batch
holds exactly the items (and so the padding) a one-process run gives it, so the merged rows equal a one-process
run's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Collection, Sequence

__all__ = ["rank_and_world", "local_device", "wait_for_files", "shard_batches", "wait_for_items",
           "add_rank_timeout_argument"]

DEFAULT_RANK_TIMEOUT = 7 * 24 * 3600.0


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


def shard_batches(ids: Sequence, batch_size: int, shard: tuple[int, int] | None = None,
                  done: Collection = ()) -> tuple[list[list], int]:
    """(batches to generate, items in this process's share). One process (`shard` None): the ids not in `done`, cut
    into batches in order. `shard=(rank, world)`: all the ids cut into batches in order, batch k to rank k mod world,
    each less its ids in `done` (a resumed rank cuts the same batches; emptied ones are dropped)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if shard is None:
        pending = [k for k in ids if k not in done]
        return [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)], len(ids)
    rank, world = shard
    ids = list(ids)
    mine = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)][rank::world]
    batches = [[k for k in b if k not in done] for b in mine]
    return [b for b in batches if b], sum(len(b) for b in mine)


def wait_for_items(read: Callable[[], dict], ids: Sequence, seconds: float,
                   poll: float = 1.0) -> tuple[dict, list]:
    """Call `read()` (-> {id: row} of every rank's files, read without truncating: they may still be growing) until
    every id of `ids` is there or `seconds` have passed. Returns (rows, missing ids)."""
    deadline = time.monotonic() + seconds
    while True:
        rows = read()
        missing = [k for k in ids if k not in rows]
        if not missing or time.monotonic() > deadline:
            return rows, missing
        time.sleep(poll)


def add_rank_timeout_argument(parser) -> None:
    parser.add_argument("--rank-timeout", type=float, default=DEFAULT_RANK_TIMEOUT,
                        help="under torchrun / accelerate: how long rank 0 waits for the other ranks' items (seconds)")
