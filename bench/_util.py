"""Small helpers shared by the benchmarks: peak memory of this process, timing, medians."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

MiB = 1024 * 1024


def peak_rss_bytes() -> int:
    """The peak resident set size of this process's own address space.

    On Linux this is VmHWM from /proc/self/status. `getrusage(RUSAGE_SELF).ru_maxrss` is not
    used there because Linux carries it across execve: a child started by a large parent
    (subprocess uses vfork + exec) reports the parent's peak when that is higher than its own.
    Elsewhere ru_maxrss is the best there is (kilobytes on Linux/BSD, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def ru_maxrss_bytes() -> int:
    """`getrusage(RUSAGE_SELF).ru_maxrss` in bytes (see `peak_rss_bytes` for its caveat)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds` (perf_counter wall clock)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self._started


@contextmanager
def timed(into: list[float]) -> Iterator[None]:
    """Append the wall time of the block to `into`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into.append(time.perf_counter() - started)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rotate(items: Sequence[T], shift: int) -> list[T]:
    """`items` rotated left by `shift` (interleaving measurements fairly across rounds)."""
    if not items:
        return []
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot, from /proc/stat; None elsewhere."""
    try:
        with Path("/proc/stat").open() as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def settle(
    idle: float = 0.85, window: float = 2.0, limit: float = 60.0
) -> tuple[float, float | None]:
    """Wait until the machine's CPUs were at least `idle` idle over `window` seconds, or for
    `limit` seconds at most: what a benchmark before this one left winding down (a control plane
    stopping, a server flushing) is not part of the next one's figures. Returns the seconds
    waited and the idle fraction of the last window (None where /proc/stat is not readable)."""
    started = time.monotonic()
    last: float | None = None
    while True:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
        if before is None or after is None:
            return time.monotonic() - started, None
        total = after[1] - before[1]
        last = (after[0] - before[0]) / total if total > 0 else 1.0
        if last >= idle or time.monotonic() - started >= limit:
            return time.monotonic() - started, last
