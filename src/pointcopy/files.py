"""Output files that survive crashes, odd text and a second run: atomic writes, UTF-8-safe JSON, a directory lock.

    write_atomic(path, text)        temp file in the same directory + fsync + rename: readers see the old file or
                                    the new one, never a torn one
    write_all_atomic({path: text})  several files: every text is encoded before any file is touched, so a bad
                                    character cannot leave a new items.jsonl beside an old summary.json
    dumps(obj)                      json.dumps that keeps non-ASCII text readable but escapes lone surrogates
                                    (`"\\ud800"`), which UTF-8 cannot encode; json.loads gives the same string back
    DirLock(dir, "pointcopy eval")  an exclusive lock on a run directory (flock on `.pointcopy.lock`, which holds
                                    the holder's pid and command); a second holder is refused with a clear error,
                                    and a lock left by a killed process is free again (the kernel drops flocks)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
LOCK_NAME = ".pointcopy.lock"


def dumps(obj: Any, **kwargs: Any) -> str:
    """JSON text for `obj` (non-ASCII kept) that always encodes as UTF-8: lone surrogates become `\\udXXX`."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def utf8(text: str) -> bytes:
    """`text` as UTF-8; a lone surrogate (only possible from malformed input) is written as `\\udXXX`."""
    return text.encode("utf-8", errors="backslashreplace")


def write_all_atomic(files: dict[str | Path, str | bytes]) -> None:
    """Write every file atomically; all contents are encoded first, then each is written to a temporary file in
    its directory, fsync'd, and renamed over the target."""
    blobs = {Path(p): (b if isinstance(b, bytes) else utf8(b)) for p, b in files.items()}
    temps: list[tuple[str, Path]] = []
    try:
        for path, blob in blobs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_atomic(path: str | Path, content: str | bytes) -> None:
    write_all_atomic({path: content})


class LockedError(RuntimeError):
    """Another process holds the directory lock."""


class DirLock:
    """Exclusive lock on a directory for the lifetime of a `with` block (see module docstring)."""

    def __init__(self, directory: str | Path, holder: str):
        self.directory, self.holder = Path(directory), holder
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.directory} is in use by {owner}; wait for it to finish or use another "
                              f"output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, utf8(f"pid {os.getpid()} ({self.holder})\n"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
