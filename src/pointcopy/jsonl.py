"""Append-only JSONL files that survive `kill -9`: a resumed writer first drops a torn last line."""

from __future__ import annotations

import os
from pathlib import Path


def drop_partial_last_line(path: str | Path) -> bool:
    """Truncate `path` after its last newline if the final line is incomplete. Returns True if it truncated."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return False
        # scan back for the last newline (records are small; read in chunks from the end)
        end = fh.seek(0, os.SEEK_END)
        pos, chunk = end, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            data = fh.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                fh.truncate(start + nl + 1)
                return True
            pos = start
        fh.truncate(0)
        return True
