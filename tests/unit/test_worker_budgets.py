"""Provider budgets are split between a store's live workers, so the fleet keeps the rate."""

from __future__ import annotations

from typing import Any

import pytest

from calsync.settings import load_settings
from calsync.worker import Worker

pytestmark = pytest.mark.unit


class NoStore:
    """The worker reads nothing of the store when its membership changes."""

    dialect = "postgresql"
    store_id = "s"


async def test_budgets_follow_the_number_of_live_workers() -> None:
    settings = load_settings(environ={})
    worker = Worker(object(), NoStore(), settings, identity="w1")  # type: ignore[arg-type]
    try:
        alone = worker.budgets.for_connection("c", "google")
        assert alone.rate * 3600 == pytest.approx(settings.google_rate_limit)
        worker._members(["w1", "w2", "w3", "w4"])
        shared = worker.budgets.for_connection("c", "google")
        assert shared.rate * 3600 == pytest.approx(settings.google_rate_limit / 4)
        assert shared.capacity == pytest.approx(settings.google_rate_limit / 4)
        caldav: Any = worker.budgets.for_connection("c", "caldav")
        assert caldav.rate * 3600 == pytest.approx(settings.caldav_rate_limit // 4)
        worker._members(["w1"])
        back = worker.budgets.for_connection("c", "google")
        assert back.rate * 3600 == pytest.approx(settings.google_rate_limit)
    finally:
        await worker.http.aclose()
