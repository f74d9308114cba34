"""SSRF claims of docs/security.md that no other test covered: a CalDAV server's redirect may not
downgrade the connection to plain http or leave http(s), and the URL in a redirect may not
carry credentials of its own. A scripted server (httpx.MockTransport) answers; nothing
connects anywhere."""

from __future__ import annotations

import httpx
import pytest

from calsync.providers.base import InvalidConfiguration
from calsync.providers.caldav import CalDAVProvider

pytestmark = pytest.mark.unit

SERVER = "https://93.184.215.14/dav/"  # a public literal: the guard needs no DNS


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("http://93.184.215.14/dav/", "plain http"),  # same host, downgraded
        ("http://8.8.8.8/dav/", "plain http"),
        ("file:///etc/passwd", "only https"),
        ("gopher://8.8.8.8:70/_x", "only https"),
        ("https://user:pw@8.8.8.8/dav/", "credentials in the URL"),
    ],
)
async def test_a_redirect_that_leaves_https_is_refused_before_it_is_followed(
    location: str, match: str
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": location})

    dav = CalDAVProvider(SERVER, "alice", "s3cret", transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(InvalidConfiguration, match=match) as refused:
            await dav.list_calendars()
    finally:
        await dav.aclose()
    assert seen and all(url.startswith(SERVER) for url in seen)  # the redirect was not followed
    assert "s3cret" not in str(refused.value)
