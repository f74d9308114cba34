"""Token buckets for the webhook routes: per channel (notifications/hour) and per address.

Both are keyed in bounded memory: at most `max_keys` buckets, the least recently used one
dropped when a new key arrives. Dropping a bucket forgets how much of it was used, which at
worst lets an evicted key start again with a full bucket; it never lets memory grow with the
number of addresses an attacker can send from. Time comes from the caller (monotonic seconds),
so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; a call costs one."""

    capacity: float
    rate: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity=capacity, rate=rate, tokens=capacity, stamp=now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def available(self, now: float) -> bool:
        """Whether one call would be allowed, without spending anything."""
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class KeyedLimiter:
    """One TokenBucket per key, at most `max_keys` of them (least recently used evicted)."""

    def __init__(self, capacity: float, rate: float, *, max_keys: int = 10_000) -> None:
        if capacity < 1 or rate <= 0 or max_keys < 1:
            raise ValueError("a limiter needs capacity >= 1, rate > 0 and room for one key")
        self.capacity = capacity
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(self.capacity, self.rate, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def allows(self, key: str, now: float) -> bool:
        """Whether `key` has a token left, spending none (an unknown key is not tracked)."""
        bucket = self._buckets.get(key)
        return bucket is None or bucket.available(now)

    def take(self, key: str, now: float) -> bool:
        """Spend one of `key`'s tokens; False when it has none left."""
        return self._bucket(key, now).take(now)


def channel_limiter(per_hour: int, *, max_keys: int = 100_000) -> KeyedLimiter:
    """WEBHOOK_RATE_LIMIT: `per_hour` notifications per channel, bursts up to the hour's worth."""
    return KeyedLimiter(float(per_hour), per_hour / 3600.0, max_keys=max_keys)


def address_limiter(per_second: float, *, max_keys: int = 10_000) -> KeyedLimiter:
    """WEBHOOK_ADDRESS_RATE_LIMIT: rejected calls per second per address, bursts of twice that."""
    return KeyedLimiter(max(1.0, 2.0 * per_second), per_second, max_keys=max_keys)
