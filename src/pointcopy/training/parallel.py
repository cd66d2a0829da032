"""`train_data_parallel(options, processes)`: the same `train(options)` run as N local data-parallel processes.

    train_data_parallel(opts, 2)  ->  torchrun --nproc_per_node 2 -m pointcopy.training.parallel OPTIONS.json
                                        rank r: train(opts with batch_size / 2, threads / 2)   (gloo on CPU)

Why: on a 2-core machine, one process with 2 threads runs a shapes-tiny step ~1.13x slower than two processes
with one thread each (`benchmarks/data_parallel.py`); OpenMP's fork-join overhead is large for these small
matrices. The global batch (`options.batch_size`) and the total thread budget (`options.threads`) are kept: each
rank gets an equal share of both, and the Trainer averages gradients across ranks.

Rank 0 writes `final/`, `train_summary.json` and checkpoints exactly as a single-process run does, so resuming,
the demo and evaluation see no difference.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .run import TrainOptions, close_process_group, train

OPTIONS_FILE = "launch_options.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the launcher child (Linux): get SIGTERM when the process that started it dies.

    Without this, killing a `pointcopy shapes train` (or the test runner) left torchrun and its ranks training on
    as orphans; a resumed run then shared the output directory with them. torchrun stops its ranks on SIGTERM.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def per_rank_options(options: TrainOptions, processes: int) -> TrainOptions:
    """Options of one rank: an equal share of the global batch and of the thread budget."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if options.batch_size % processes:
        raise ValueError(f"batch_size {options.batch_size} is not divisible by {processes} processes")
    threads = max(1, (options.threads or processes) // processes)
    return replace(options, batch_size=options.batch_size // processes, threads=threads)


def train_data_parallel(options: TrainOptions, processes: int) -> dict:
    """Train with `processes` local ranks (one process: plain `train`); returns rank 0's training summary."""
    if processes == 1:
        return train(options)
    rank_options = per_rank_options(options, processes)
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / OPTIONS_FILE).write_text(json.dumps(asdict(rank_options), indent=1))
    env = dict(os.environ, OMP_NUM_THREADS=str(rank_options.threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "pointcopy.training.parallel", str(out / OPTIONS_FILE)]
    run = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent)
    if run.returncode != 0:
        raise RuntimeError(f"data-parallel training ({processes} processes) failed with exit code {run.returncode}; "
                           f"command: {' '.join(cmd)}")
    return json.loads((out / "train_summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pointcopy.training.parallel OPTIONS.json  (started by train_data_parallel)",
              file=sys.stderr)
        return 2
    options = TrainOptions(**json.loads(Path(args[0]).read_text()))
    if int(os.environ.get("RANK", "0")) != 0:
        options = replace(options, progress=False)  # one progress bar
    try:
        train(options)
    finally:
        close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
