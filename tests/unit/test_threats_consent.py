"""Consent-flow claims of docs/security.md that no other test covered: what the gateway's consent
pages show is HTML-escaped (a provider's `error` text, a refusal's reason), and a callback
whose state does not open reflects nothing of the request. No cluster: the state check fails
before the connection would be read."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from calsync.security.keyring import KeyRing
from calsync.settings import Settings
from calsync.webhook_gateway.app import GatewayContext, _page, create_app

pytestmark = pytest.mark.unit

SCRIPT = "<script>alert(1)</script>"


class StubVault:
    keyring = KeyRing.generate(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    async def reload(self) -> None:
        pass


@pytest.fixture
async def http() -> AsyncIterator[TestClient[Any, Any]]:
    ctx = GatewayContext(
        settings=Settings(),
        client=cast(Any, object()),  # never called: every request here is refused first
        vault=cast(Any, StubVault()),
        ready=True,
        watch=False,
    )
    async with TestClient(TestServer(create_app(ctx))) as client:
        yield client


def test_a_page_escapes_its_title_and_message() -> None:
    page = _page(403, f"title {SCRIPT}", f"google answered {SCRIPT!r}")
    text = page.text or ""
    assert SCRIPT not in text and "&lt;script&gt;" in text
    assert page.content_type == "text/html"
    assert page.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("provider", ["google", "microsoft"])
async def test_a_callback_with_a_forged_state_reflects_nothing(
    http: TestClient[Any, Any], provider: str
) -> None:
    answer = await http.get(
        f"/auth/{provider}/callback",
        params={"state": f"{SCRIPT}.x", "error": SCRIPT, "error_description": SCRIPT, "code": "c"},
    )
    body = await answer.text()
    assert answer.status == 400
    assert SCRIPT not in body and "alert(1)" not in body
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"


async def test_a_consent_link_that_does_not_open_reflects_nothing(
    http: TestClient[Any, Any],
) -> None:
    answer = await http.get("/auth/google/start", params={"c": f"{SCRIPT}.{SCRIPT}"})
    body = await answer.text()
    assert answer.status == 400
    assert SCRIPT not in body and "alert(1)" not in body
