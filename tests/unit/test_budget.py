"""The per-connection token bucket: burst, sustained rate, and no sleeping in a worker slot."""

from __future__ import annotations

import pytest

from calsync.providers.base import RateLimited
from calsync.sync.budget import Budgets, TokenBucket

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_whole_hour_of_budget_is_available_at_once() -> None:
    clock = Clock()
    bucket = TokenBucket(100, clock=clock)
    for _ in range(100):
        await bucket.acquire()
    assert bucket.spent == 100
    with pytest.raises(RateLimited) as info:
        await bucket.acquire()
    assert info.value.retry_after == pytest.approx(36.0)


async def test_refills_at_the_sustained_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(3600, burst=1, clock=clock)
    await bucket.acquire()
    assert bucket.wait_time() == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.now += 10
    assert bucket.available == pytest.approx(1.0)  # never above the burst


async def test_short_waits_are_slept_not_raised() -> None:
    bucket = TokenBucket(3600 * 100, burst=1, max_wait=1.0)
    await bucket.acquire()
    await bucket.acquire()  # waits about 10 ms
    assert bucket.spent == 2


def test_budgets_are_per_connection_and_provider() -> None:
    budgets = Budgets({"caldav": 100, "google": 1000})
    a = budgets.for_connection("ns/a", "caldav")
    assert budgets.for_connection("ns/a", "caldav") is a
    assert budgets.for_connection("ns/b", "caldav") is not a
    assert budgets.for_connection("ns/a", "google").capacity == 1000
    budgets.forget("ns/a")
    assert budgets.for_connection("ns/a", "caldav") is not a


def test_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
