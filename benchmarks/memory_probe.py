"""Resident memory of this process, for the memory benchmarks (Linux /proc): current RSS, the peak since the last
reset (VmHWM), and the reset (writing 5 to /proc/self/clear_refs, where the kernel allows it)."""

from __future__ import annotations


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
