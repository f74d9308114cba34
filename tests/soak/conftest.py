"""The soak test runs only when asked for by marker (`pytest -m soak`, `make soak`).

It is an end-to-end test (marker `e2e`, which the suite's kind check requires) that takes
a quarter of an hour and more, so it is left out of every run whose `-m` expression does not
name `soak`, `make test` and `make test-e2e` included: deselected before the kind check runs.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
