"""Token buckets of the webhook routes: per channel per hour, per address per second,
bounded in memory."""

from __future__ import annotations

import pytest

from calsync.webhook_gateway.limits import (
    KeyedLimiter,
    TokenBucket,
    address_limiter,
    channel_limiter,
)

pytestmark = pytest.mark.unit


def test_a_bucket_spends_its_capacity_then_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(3, 1.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.available(0.5)
    assert bucket.take(1.0)
    assert not bucket.take(1.0)
    assert bucket.take(100.0) and bucket.tokens == pytest.approx(2.0)  # capped at capacity


def test_the_channel_limit_is_per_hour_with_a_burst_of_an_hours_worth() -> None:
    limiter = channel_limiter(3600)
    assert all(limiter.take("ch", 0.0) for _ in range(3600))
    assert not limiter.take("ch", 0.0)
    assert limiter.take("other", 0.0)
    assert limiter.take("ch", 1.0)  # 1 per second back
    assert not limiter.take("ch", 1.0)


def test_the_address_limit_allows_bursts_of_twice_the_rate() -> None:
    limiter = address_limiter(20.0)
    assert limiter.allows("10.0.0.1", 0.0)  # unknown addresses are not even tracked
    assert len(limiter) == 0
    spent = sum(limiter.take("10.0.0.1", 0.0) for _ in range(100))
    assert spent == 40
    assert not limiter.allows("10.0.0.1", 0.0)
    assert limiter.allows("10.0.0.1", 0.05)  # 20/s: one token after 50 ms
    assert limiter.allows("10.0.0.2", 0.0)


def test_memory_is_bounded_by_evicting_the_least_recently_used_key() -> None:
    limiter = KeyedLimiter(1, 0.001, max_keys=3)
    for address in ("a", "b", "c"):
        assert limiter.take(address, 0.0)
    assert limiter.take("d", 0.0)  # evicts a
    assert len(limiter) == 3
    assert limiter.allows("a", 0.0)  # forgotten: a fresh bucket
    assert not limiter.allows("b", 0.0)
    limiter.take("b", 0.0)  # b is now the most recently used
    limiter.take("e", 0.0)  # evicts c
    assert not limiter.allows("b", 0.0)
    assert limiter.allows("c", 0.0)


def test_a_limiter_needs_room() -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(0.5, 1.0)
    with pytest.raises(ValueError):
        KeyedLimiter(1, 1.0, max_keys=0)
