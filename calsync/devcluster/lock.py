"""File locks that say so when they have to wait.

A control-plane build takes minutes, and `make run` beside a `make test` (or a second
`devcluster up` of the same cluster) blocks on the other's lock. A silent wait looks like a hang,
so the waiter names the lock file and the process holding it, which writes its pid there.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f", held by pid {pid}" if pid.isdigit() else ""


@contextmanager
def exclusive_lock(path: Path, *, waiting_for: str, log: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; when another process holds it, say on stderr
    that this one waits for ``waiting_for`` and where the lock is, then wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                print(
                    f"waiting for {waiting_for} to finish (lock {path}{_holder(path)}) ...",
                    file=sys.stderr,
                    flush=True,
                )
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
