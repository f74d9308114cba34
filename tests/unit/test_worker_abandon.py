"""A run that does not stop when its timeout cancels it lets go of its connection."""

from __future__ import annotations

import asyncio

import pytest

from calsync.observability import metrics
from calsync.settings import load_settings
from calsync.store import Fence
from calsync.worker import Worker
from calsync.worker.reporting import PollWriter
from calsync.worker.runner import Run

pytestmark = pytest.mark.unit


class RenewingStore:
    """Every renewal succeeds: only the run's own timeout can end its claim."""

    dialect = "postgresql"
    store_id = "s"

    def __init__(self) -> None:
        self.renewals = 0

    async def renew(self, fence: Fence, ttl: float) -> bool:
        self.renewals += 1
        return True


async def test_a_run_deaf_to_its_cancellation_is_let_go(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(environ={}, overrides={"sync_lease": 5.0, "sync_job_timeout": 0.1})
    store = RenewingStore()
    worker = Worker(object(), store, settings, identity="w1")  # type: ignore[arg-type]
    key = ("ns", "conn")
    writer = PollWriter("ns", "conn", "conn-i-0123456789", "w1")
    run = Run(writer.job, Fence("uid", "w1", 1), writer, key, {"attempts": 1})
    worker.running[key] = run
    released = asyncio.Event()
    cancellations = 0

    async def deaf() -> None:
        nonlocal cancellations
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                cancellations += 1  # swallowed: the bug this guards against

    stuck = asyncio.create_task(deaf())
    run.sync = stuck  # type: ignore[assignment]  # a stand-in that returns nothing
    before = metrics.SYNC_RUNS_ABANDONED._value.get()
    try:
        await asyncio.wait_for(worker._keep_claim(run, stuck), timeout=60)
        assert store.renewals >= 1  # renewed while within its timeout and a lease
        assert run.stop == "lost"
        assert cancellations >= 1 and not stuck.done()
        assert key not in worker.running  # the slot is free; another run may claim anew
        assert metrics.SYNC_RUNS_ABANDONED._value.get() == before + 1
        (record,) = [r for r in caplog.records if "did not stop" in r.getMessage()]
        assert "in deaf" in record.stack  # type: ignore[attr-defined]  # where it hangs
    finally:
        released.set()
        await stuck
        await worker.http.aclose()


async def test_the_slot_of_a_newer_run_is_left_alone() -> None:
    settings = load_settings(environ={}, overrides={"sync_lease": 5.0, "sync_job_timeout": 0.1})
    worker = Worker(object(), RenewingStore(), settings, identity="w1")  # type: ignore[arg-type]
    key = ("ns", "conn")
    old = PollWriter("ns", "conn", "conn-i-0000000000", "w1")
    new = PollWriter("ns", "conn", "conn-i-1111111111", "w1")
    stale = Run(old.job, Fence("uid", "w1", 1), old, key, {"attempts": 1})
    current = Run(new.job, Fence("uid", "w1", 2), new, key, {"attempts": 1})
    worker.running[key] = current
    try:
        worker._abandon(stale, None)
        assert worker.running[key] is current
    finally:
        await worker.http.aclose()
