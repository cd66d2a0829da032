"""`train_data_parallel(options, processes)`: the same `train(options)` run as N local data-parallel processes.

    train_data_parallel(opts, 2)  ->  N x  python -m pointcopy.training.parallel OPTIONS.json   (RANK=r, ...)
                                        rank r: train(opts with batch_size / 2, threads / 2)   (gloo on CPU)

The launcher is ours rather than torchrun because torchrun's rendezvous store listens on every network interface
(TCPStore binds the wildcard address whatever `--master_addr` says), so anyone who can reach the machine could
join or disturb a run. Here the launching process binds the store's socket to 127.0.0.1 itself and hands it to
TCPStore (`master_listen_fd`); the ranks connect to it as clients (`TORCHELASTIC_USE_AGENT_STORE`, as under
torchrun), and gloo's own connections use the loopback interface (`GLOO_SOCKET_IFNAME`). If one rank fails, the
others are stopped; if the launcher dies, the ranks get SIGTERM.

Why: on a 2-core machine, one process with 2 threads runs a shapes-tiny step ~1.13x slower than two processes
with one thread each (`benchmarks/data_parallel.py`); OpenMP's fork-join overhead is large for these small
matrices. The global batch (`options.batch_size`) and the total thread budget (`options.threads`) are kept: each
rank gets an equal share of both, and the Trainer averages gradients across ranks.

Rank 0 writes `final/`, `train_summary.json` and checkpoints exactly as a single-process run does, so resuming,
the demo and evaluation see no difference.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from .run import TrainOptions, close_process_group, train

OPTIONS_FILE = "launch_options.json"


LOOPBACK = "127.0.0.1"


@contextmanager
def loopback_store(world_size: int, timeout_s: float = 1800.0):
    """A rendezvous TCPStore server listening on 127.0.0.1 only, for the lifetime of the block; yields its port."""
    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = dist.TCPStore(LOOPBACK, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=sock.detach(), use_libuv=True)
    try:
        yield port
    finally:
        del store


def rank_env(rank: int, world_size: int, port: int, threads: int) -> dict[str, str]:
    """What torchrun would give rank `rank` of a one-node run, with the store on loopback."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0",
               WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR=LOOPBACK,
               MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_local(argv: list[str], world_size: int, threads: int) -> int:
    """Run `python -m <argv>` as `world_size` ranks on this machine; 0 when all succeed, else the first failing
    rank's exit code (the other ranks are stopped)."""
    with loopback_store(world_size) as port:
        procs = [subprocess.Popen([sys.executable, "-m", *argv], env=rank_env(r, world_size, port, threads),
                                  preexec_fn=_die_with_parent) for r in range(world_size)]
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]
                if failed:
                    _stop(procs)
                    return failed[0]
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(0.2)
        except BaseException:
            _stop(procs)
            raise


def _die_with_parent() -> None:
    """In the launcher child (Linux): get SIGTERM when the process that started it dies.

    Without this, killing a `pointcopy shapes train` (or the test runner) left the ranks training on as orphans; a
    resumed run then shared the output directory with them.
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
    argv = ["pointcopy.training.parallel", str(out / OPTIONS_FILE)]
    code = launch_local(argv, processes, rank_options.threads)
    if code != 0:
        raise RuntimeError(f"data-parallel training ({processes} processes) failed with exit code {code}; "
                           f"command (per rank): {sys.executable} -m {' '.join(argv)}")
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
    code = main()
    # A worker process whose rank has finished: leave without the interpreter's teardown, where gloo's threads
    # have aborted a finished rank ("terminate called without an active exception", SIGABRT) even after
    # close_process_group, and the launcher then failed a good run. (main() itself returns normally.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
