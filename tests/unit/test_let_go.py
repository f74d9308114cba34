"""Letting go of work started ahead never eats the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from calsync.providers.base import let_go

pytestmark = pytest.mark.unit


async def steps(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_callers_cancellation_still_ends_the_caller() -> None:
    wound_down = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await wound_down.wait()  # takes its time to end once cancelled
            raise

    ahead = asyncio.create_task(slow_to_stop())
    await steps()

    async def caller() -> str:
        await let_go(ahead)
        return "went on"  # what a run whose timeout was swallowed would do

    run = asyncio.create_task(caller())
    await steps()
    assert not run.done()  # waiting for the work ahead to end
    run.cancel()  # the run's own timeout
    with pytest.raises(asyncio.CancelledError):
        await run
    wound_down.set()
    await asyncio.wait([ahead])
    assert ahead.cancelled()


async def test_work_that_failed_or_finished_is_let_go_quietly() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await steps()
    await let_go(failed)  # its error is retrieved, not raised

    async def endless() -> None:
        await asyncio.Event().wait()

    running = asyncio.create_task(endless())
    await steps()
    await let_go(running)
    assert running.cancelled()
