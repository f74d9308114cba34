"""The operator's work queue: coalescing, one handler per key at a time, due times, retries."""

from __future__ import annotations

import asyncio

import pytest

from calsync.controllers.workqueue import WorkQueue

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def until(predicate: object, *, limit: int = 2000) -> None:
    for _ in range(limit):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_adds_while_queued_coalesce() -> None:
    seen: list[str] = []

    async def handle(key: str) -> None:
        seen.append(key)

    queue: WorkQueue[str] = WorkQueue(handle, concurrency=2)
    for _ in range(100):
        queue.add("a")
    queue.add("b")
    task = asyncio.create_task(queue.run())
    await until(lambda: len(seen) >= 2)
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sorted(seen) == ["a", "b"]


async def test_a_key_added_while_handled_runs_once_more_afterwards() -> None:
    running = 0
    most = 0
    calls = 0
    gate = asyncio.Event()

    async def handle(key: str) -> None:
        nonlocal running, most, calls
        running += 1
        most = max(most, running)
        calls += 1
        if calls == 1:
            await gate.wait()
        running -= 1

    queue: WorkQueue[str] = WorkQueue(handle, concurrency=4)
    queue.add("a")
    task = asyncio.create_task(queue.run())
    await until(lambda: calls == 1)
    queue.add("a")  # while the first call runs
    queue.add("a")
    gate.set()
    await until(lambda: calls == 2)
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == 2 and most == 1


async def test_failures_retry_with_growing_delays_and_due_times_are_kept() -> None:
    clock = FakeClock()
    calls: list[float] = []

    async def handle(key: str) -> float | None:
        calls.append(clock.now)
        if len(calls) < 3:
            raise RuntimeError("API down")
        return 900.0  # next poll

    queue: WorkQueue[str] = WorkQueue(handle, concurrency=1, clock=clock)
    queue.add("a")
    task = asyncio.create_task(queue.run())
    await until(lambda: len(calls) == 1)
    assert queue.scheduled == 1  # the retry is scheduled, not run at once
    clock.now = 1.0
    queue._wake.set()
    await until(lambda: len(calls) == 2)
    clock.now = 2.5  # second retry waits 2 s
    queue._wake.set()
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(calls) == 2
    clock.now = 3.0
    queue._wake.set()
    await until(lambda: len(calls) == 3)
    await until(lambda: queue.scheduled == 1)  # the handler asked for 900 s
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == [0.0, 1.0, 3.0]
