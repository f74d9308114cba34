"""The JSON providers' HTTP layer and OAuth helpers, against httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from calsync.providers.base import (
    AuthenticationFailed,
    CursorInvalid,
    InvalidGrant,
    ProviderError,
    RateLimited,
)
from calsync.providers.oauth import (
    OAuthClient,
    RefreshingTokens,
    StaticTokens,
    TokenSet,
    authorization_url,
    exchange_code,
    pkce_pair,
    refresh_tokens,
)
from calsync.providers.rest import JsonApi, parse_retry_after

pytestmark = pytest.mark.unit

CLIENT = OAuthClient(
    client_id="cid",
    client_secret="csecret",
    token_url="https://auth.test/token",
    authorize_url="https://auth.test/authorize",
    scopes=("a", "b"),
)


def no_classify(_: httpx.Response) -> ProviderError | None:
    return None


def api_with(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> JsonApi:
    return JsonApi(
        "https://api.test/v1",
        StaticTokens("tok"),
        classify=no_classify,
        transport=httpx.MockTransport(handler),
        backoff=0.001,
        **kwargs,  # type: ignore[arg-type]
    )


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    when = parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)
    assert when == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert pkce_pair()[0] != verifier


def test_authorization_url_carries_everything() -> None:
    url = authorization_url(
        CLIENT,
        redirect_uri="https://gw/cb",
        state="s1",
        code_challenge="ch",
        extra={"access_type": "offline"},
    )
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.netloc == "auth.test"
    assert query == {
        "client_id": "cid",
        "response_type": "code",
        "redirect_uri": "https://gw/cb",
        "scope": "a b",
        "state": "s1",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
        "access_type": "offline",
    }


def token_endpoint(
    responses: list[httpx.Response], seen: list[dict[str, str]]
) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        return responses.pop(0)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_exchange_code_posts_the_verifier() -> None:
    seen: list[dict[str, str]] = []
    http = token_endpoint(
        [httpx.Response(200, json={"access_token": "A", "refresh_token": "R", "expires_in": 3600})],
        seen,
    )
    tokens = await exchange_code(
        http, CLIENT, code="c", redirect_uri="https://gw/cb", code_verifier="v"
    )
    assert tokens.access_token == "A" and tokens.refresh_token == "R"
    assert tokens.expires_at is not None
    assert seen[0] == {
        "grant_type": "authorization_code",
        "code": "c",
        "redirect_uri": "https://gw/cb",
        "code_verifier": "v",
        "client_id": "cid",
        "client_secret": "csecret",
    }
    assert "A" not in repr(tokens) and "R" not in repr(tokens).replace("RefreshingTokens", "")


async def test_refresh_keeps_the_refresh_token_when_none_is_returned() -> None:
    seen: list[dict[str, str]] = []
    http = token_endpoint([httpx.Response(200, json={"access_token": "A2"})], seen)
    tokens = await refresh_tokens(http, CLIENT, "R")
    assert tokens.refresh_token == "R"
    assert seen[0]["grant_type"] == "refresh_token" and seen[0]["refresh_token"] == "R"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (
            httpx.Response(
                400, json={"error": "invalid_grant", "error_description": "AADSTS700082: expired"}
            ),
            InvalidGrant,
        ),
        (httpx.Response(401, json={"error": "invalid_client"}), AuthenticationFailed),
        (httpx.Response(429, headers={"Retry-After": "7"}), RateLimited),
        (httpx.Response(500, text="oops"), ProviderError),
        (httpx.Response(200, json={"token_type": "Bearer"}), ProviderError),
    ],
)
async def test_token_errors_are_typed(response: httpx.Response, error: type[Exception]) -> None:
    http = token_endpoint([response], [])
    with pytest.raises(error) as caught:
        await refresh_tokens(http, CLIENT, "secret-refresh-value")
    assert "secret-refresh-value" not in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 7.0


async def test_refreshing_tokens_refresh_once_for_concurrent_callers() -> None:
    calls: list[int] = []
    stored: list[TokenSet] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        await asyncio.sleep(0)
        return httpx.Response(
            200,
            json={
                "access_token": f"A{len(calls)}",
                "refresh_token": f"R{len(calls)}",
                "expires_in": 3600,
            },
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))

    async def on_refresh(tokens: TokenSet) -> None:
        stored.append(tokens)

    source = RefreshingTokens(
        http, CLIENT, TokenSet("A0", "R0", expires_at=None), on_refresh=on_refresh
    )
    assert await source.get() == "A0"
    results = await asyncio.gather(*(source.refreshed("A0") for _ in range(5)))
    assert results == ["A1"] * 5
    assert len(calls) == 1
    assert [t.refresh_token for t in stored] == ["R1"]


async def test_refreshing_tokens_refresh_when_expired() -> None:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda r: httpx.Response(200, json={"access_token": "new", "expires_in": 3600})
        )
    )
    source = RefreshingTokens(
        http, CLIENT, TokenSet("old", "R", expires_at=10.0), clock=lambda: 100.0
    )
    assert await source.get() == "new"
    assert source.tokens.refresh_token == "R"


async def test_refreshing_without_refresh_token_is_invalid_grant() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    source = RefreshingTokens(http, CLIENT, TokenSet("old", None, expires_at=None))
    with pytest.raises(InvalidGrant):
        await source.refreshed("old")


async def test_json_api_sends_bearer_and_returns_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    api = api_with(handler)
    assert await api.get_json("things", params={"a": 1}) == {"ok": True}
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert str(seen[0].url) == "https://api.test/v1/things?a=1"


async def test_json_api_honours_retry_after_then_succeeds() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(503),
        httpx.Response(200, json={"n": 1}),
    ]
    api = api_with(lambda r: answers.pop(0))
    assert await api.get_json("x") == {"n": 1}
    assert api.rate_limited == 2 and api.retries == 2 and api.requests == 3


async def test_json_api_raises_long_retry_after_at_once() -> None:
    api = api_with(lambda r: httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as caught:
        await api.get_json("x")
    assert caught.value.retry_after == 3600.0
    assert api.requests == 1


async def test_json_api_gives_up_after_max_attempts() -> None:
    api = api_with(
        lambda r: httpx.Response(500, json={"error": {"message": "backend"}}), max_attempts=3
    )
    with pytest.raises(ProviderError, match="backend") as caught:
        await api.get_json("x")
    assert caught.value.retryable and api.requests == 3


async def test_json_api_does_not_retry_client_errors() -> None:
    api = api_with(lambda r: httpx.Response(400, json={"error": {"message": "bad param"}}))
    with pytest.raises(ProviderError, match="bad param") as caught:
        await api.get_json("x")
    assert not caught.value.retryable and api.requests == 1


async def test_json_api_uses_the_classifier() -> None:
    def classify(response: httpx.Response) -> ProviderError | None:
        if response.status_code == 410:
            return CursorInvalid("gone")
        if response.status_code == 403 and "rateLimitExceeded" in response.text:
            return RateLimited("slow down", retry_after=0)
        return None

    answers = [
        httpx.Response(403, json={"error": {"errors": [{"reason": "rateLimitExceeded"}]}}),
        httpx.Response(410),
    ]
    api = JsonApi(
        "https://api.test",
        StaticTokens("t"),
        classify=classify,
        transport=httpx.MockTransport(lambda r: answers.pop(0)),
    )
    with pytest.raises(CursorInvalid):
        await api.get_json("x")
    assert api.rate_limited == 1


async def test_json_api_refreshes_once_on_401() -> None:
    tokens: list[str] = []

    class Source:
        async def get(self) -> str:
            return "old"

        async def refreshed(self, stale: str) -> str:
            tokens.append(stale)
            return "new"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer old":
            return httpx.Response(401)
        return httpx.Response(200, json={})

    api = JsonApi(
        "https://api.test", Source(), classify=no_classify, transport=httpx.MockTransport(handler)
    )
    assert await api.get_json("x") == {}
    assert tokens == ["old"]

    api = JsonApi(
        "https://api.test",
        Source(),
        classify=no_classify,
        transport=httpx.MockTransport(
            lambda r: httpx.Response(401, json={"error": {"message": "no"}})
        ),
    )
    with pytest.raises(AuthenticationFailed):
        await api.get_json("x")


async def test_json_api_refuses_links_to_other_hosts() -> None:
    api = api_with(lambda r: httpx.Response(200, json={}))
    with pytest.raises(ProviderError, match="another host"):
        await api.get_json("https://evil.test/v1/x")
    assert api.requests == 0
    assert await api.get_json("https://api.test/v1/next?skip=1") == {}


async def test_json_api_caps_concurrency() -> None:
    active = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(3):
            await asyncio.sleep(0)
        active -= 1
        return httpx.Response(200, json={})

    api = api_with(handler, max_concurrency=4)  # type: ignore[arg-type]
    await asyncio.gather(*(api.get_json("x") for _ in range(12)))
    assert peak == 4


async def test_json_api_rejects_non_object_json() -> None:
    api = api_with(lambda r: httpx.Response(200, content=json.dumps([1]).encode()))
    with pytest.raises(ProviderError, match="JSON object"):
        await api.get_json("x")
