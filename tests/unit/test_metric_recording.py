"""Where the operational metrics are recorded: provider requests by result at the one HTTP layer
of each provider, token refresh failures where tokens are refreshed, SyncJobs by phase from the
operator's watch, and how overdue a push channel's renewal is.

The registry is shared by the whole test session, so every check compares a counter before and
after the action."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from calsync.controllers import connection as connection_controller
from calsync.controllers.provider_factory import _refresh_failed
from calsync.controllers.subscription_cache import SubscriptionCache
from calsync.observability import metrics
from calsync.observability.metrics import REGISTRY
from calsync.providers.base import InvalidGrant, ProviderError, RateLimited
from calsync.providers.caldav.http import DavSession
from calsync.providers.oauth import OAuthClient, RefreshingTokens, StaticTokens, TokenSet
from calsync.providers.rest import JsonApi

pytestmark = pytest.mark.unit

RESULTS = metrics.PROVIDER_RESULTS


def requests(provider: str) -> dict[str, float]:
    return {
        result: REGISTRY.get_sample_value(
            "calsync_provider_requests_total", {"provider": provider, "result": result}
        )
        or 0.0
        for result in RESULTS
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def durations(provider: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "calsync_provider_request_duration_seconds_count", {"provider": provider}
        )
        or 0.0
    )


# -- the JSON providers (Google, Graph) ---------------------------------------------------------


def scripted(*answers: int | type[Exception]) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0)
        if isinstance(answer, type):
            raise answer("scripted", request=request)  # type: ignore[call-arg]
        headers = {"Retry-After": "0"} if answer in (429, 503) else {}
        return httpx.Response(answer, json={"ok": True}, headers=headers)

    return handler


def json_api(handler: Callable[[httpx.Request], httpx.Response]) -> JsonApi:
    return JsonApi(
        "https://api.test/v1",
        StaticTokens("tok"),
        classify=lambda _: None,
        transport=httpx.MockTransport(handler),
        backoff=0.001,
        provider="google",
    )


async def test_json_api_counts_every_attempt_by_result() -> None:
    before, timed = requests("google"), durations("google")
    api = json_api(scripted(httpx.ConnectError, 500, 429, 200))
    await api.request("GET", "calendars")
    await api.aclose()
    assert delta(before, requests("google")) == {
        "unreachable": 1.0,
        "server_error": 1.0,
        "throttled": 1.0,
        "ok": 1.0,
    }
    assert durations("google") - timed == 4.0


async def test_json_api_counts_a_client_error_once() -> None:
    before = requests("google")
    api = json_api(scripted(404))
    with pytest.raises(ProviderError):
        await api.request("GET", "calendars/gone")
    await api.aclose()
    assert delta(before, requests("google")) == {"client_error": 1.0}


async def test_json_api_counts_a_refused_token_as_unauthorized() -> None:
    before = requests("google")
    api = json_api(scripted(401))
    with pytest.raises(ProviderError):  # StaticTokens cannot refresh
        await api.request("GET", "calendars")
    await api.aclose()
    assert delta(before, requests("google")) == {"unauthorized": 1.0}


async def test_the_providers_name_their_requests() -> None:
    from calsync.providers.google import GoogleProvider
    from calsync.providers.microsoft import MicrosoftProvider

    google = GoogleProvider("https://g.test", StaticTokens("t"))
    graph = MicrosoftProvider("https://m.test", StaticTokens("t"))
    assert (google.api.provider, graph.api.provider) == ("google", "microsoft")
    await google.aclose()
    await graph.aclose()


def test_an_unknown_provider_name_is_not_a_new_label() -> None:
    before = REGISTRY.get_sample_value(
        "calsync_provider_requests_total", {"provider": "other", "result": "ok"}
    )
    metrics.provider_request("someone-else", "ok", 0.01)
    after = REGISTRY.get_sample_value(
        "calsync_provider_requests_total", {"provider": "other", "result": "ok"}
    )
    assert (after or 0.0) - (before or 0.0) == 1.0
    assert (
        REGISTRY.get_sample_value(
            "calsync_provider_requests_total", {"provider": "someone-else", "result": "ok"}
        )
        is None
    )


# -- CalDAV -------------------------------------------------------------------------------------

SERVER = "https://93.184.215.14/dav/"  # a literal public address: no DNS, never connected


def dav(handler: Callable[[httpx.Request], httpx.Response], *, icloud: bool = False) -> DavSession:
    session = DavSession(
        "alice",
        "s3cret",
        icloud=icloud,
        allow_private_addresses=False,
        allow_insecure_http=False,
        timeout=5.0,
        transport=httpx.MockTransport(handler),
        rate_limiter=None,
    )
    session.trust(SERVER)
    return session


@pytest.mark.parametrize(
    ("status", "headers", "result"),
    [
        (207, {}, "ok"),
        (304, {}, "ok"),
        (404, {}, "client_error"),
        (412, {}, "client_error"),
        (401, {}, "unauthorized"),
        (403, {}, "unauthorized"),
        (429, {}, "throttled"),
        (503, {"Retry-After": "30"}, "throttled"),
        (503, {}, "server_error"),
        (500, {}, "server_error"),
    ],
)
async def test_caldav_requests_by_result(status: int, headers: dict[str, str], result: str) -> None:
    before = requests("caldav")
    session = dav(lambda _: httpx.Response(status, headers=headers))
    reply = await session.request("PROPFIND", SERVER, depth="0")
    await session.aclose()
    assert reply.status == status
    assert delta(before, requests("caldav")) == {result: 1.0}


async def test_caldav_counts_each_redirect_hop_and_icloud_apart() -> None:
    before = requests("icloud")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/dav/":
            return httpx.Response(301, headers={"Location": "/dav/home/"})
        return httpx.Response(207)

    session = dav(handler, icloud=True)
    await session.request("PROPFIND", SERVER, depth="0")
    await session.aclose()
    assert delta(before, requests("icloud")) == {"ok": 2.0}


async def test_caldav_counts_an_unreachable_server() -> None:
    before = requests("caldav")

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    session = dav(handler)
    with pytest.raises(ProviderError):
        await session.request("PROPFIND", SERVER, depth="0")
    await session.aclose()
    assert delta(before, requests("caldav")) == {"unreachable": 1.0}


# -- token refreshes ----------------------------------------------------------------------------

CLIENT = OAuthClient(
    client_id="cid",
    client_secret="csecret",
    token_url="https://auth.test/token",
    authorize_url="https://auth.test/authorize",
    scopes=("a",),
)


def refreshes(provider: str) -> dict[str, float]:
    return {
        result: REGISTRY.get_sample_value(
            "calsync_token_refreshes_total", {"provider": provider, "result": result}
        )
        or 0.0
        for result in metrics.TOKEN_REFRESH_RESULTS
    }


@pytest.mark.parametrize(
    ("status", "body", "result"),
    [
        (400, {"error": "invalid_grant"}, "invalid_grant"),
        (429, {"error": "slow_down"}, "throttled"),
        (500, {"error": "server_error"}, "error"),
    ],
)
async def test_a_failed_refresh_is_counted_by_result(
    status: int, body: dict[str, Any], result: str
) -> None:
    before = refreshes("microsoft")
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(status, json=body))
    )
    tokens = RefreshingTokens(
        http,
        CLIENT,
        TokenSet(access_token="", refresh_token="r", expires_at=0.0),
        on_failure=_refresh_failed("microsoft"),
    )
    with pytest.raises(ProviderError):
        await tokens.get()
    await http.aclose()
    assert delta(before, refreshes("microsoft")) == {result: 1.0}


async def test_no_refresh_token_counts_as_invalid_grant() -> None:
    before = refreshes("google")
    seen: list[ProviderError] = []
    count = _refresh_failed("google")

    def failed(exc: ProviderError) -> None:
        seen.append(exc)
        count(exc)

    tokens = RefreshingTokens(
        httpx.AsyncClient(),
        CLIENT,
        TokenSet(access_token="", refresh_token=None, expires_at=0.0),
        on_failure=failed,
    )
    with pytest.raises(InvalidGrant):
        await tokens.get()
    assert [type(e) for e in seen] == [InvalidGrant]
    assert delta(before, refreshes("google")) == {"invalid_grant": 1.0}


def test_refresh_failure_labels() -> None:
    before = refreshes("google")
    _refresh_failed("google")(RateLimited("slow down", None))
    _refresh_failed("google")(ProviderError("unreachable"))
    assert delta(before, refreshes("google")) == {"throttled": 1.0, "error": 1.0}


# -- SyncJobs by phase --------------------------------------------------------------------------


def phases() -> dict[str, float | None]:
    return {
        phase: REGISTRY.get_sample_value("calsync_syncjobs", {"phase": phase})
        for phase in metrics.SYNCJOB_PHASES
    }


def job(name: str, phase: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name}, "spec": {"connection": "c"}}
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def test_jobs_by_phase_follow_the_watch() -> None:
    settings = SimpleNamespace(operator_concurrency=1)
    ctx = connection_controller.ConnectionContext(
        client=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        settings=settings,  # type: ignore[arg-type]
    )
    assert phases() == dict.fromkeys(metrics.SYNCJOB_PHASES, 0.0)
    ctx.observe_job("ns", job("a", None), deleted=False)  # no status yet: Pending
    ctx.observe_job("ns", job("b", "Pending"), deleted=False)
    ctx.observe_job("ns", job("a", "Running"), deleted=False)
    ctx.observe_job("ns", job("c", "Mystery"), deleted=False)  # not a label value
    assert phases() == {**dict.fromkeys(metrics.SYNCJOB_PHASES, 0.0), "Pending": 1, "Running": 1}
    ctx.observe_job("ns", job("a", "Succeeded"), deleted=False)
    ctx.observe_job("ns", job("b", "Failed"), deleted=False)
    ctx.observe_job("ns", job("b", "Failed"), deleted=True)
    assert phases() == {**dict.fromkeys(metrics.SYNCJOB_PHASES, 0.0), "Succeeded": 1}
    assert REGISTRY.get_sample_value("calsync_syncjobs_pending") == 0.0


# -- renewal overdue ----------------------------------------------------------------------------

DAY = 86400.0


def ts(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def subscription(name: str, provider: str, registered: dt.datetime, expires: dt.datetime) -> Any:
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"connection": "c", "provider": provider},
        "status": {
            "channelId": f"ch-{name}",
            "registeredAt": ts(registered),
            "expiration": ts(expires),
        },
    }


def test_renewal_overdue_is_zero_until_the_renewal_time_passes() -> None:
    now = dt.datetime.now(dt.UTC)
    cache = SubscriptionCache()
    # A week-long channel renews 24 h before it expires: 30 h left is not due yet.
    cache.observe(
        subscription("fresh", "google", now - dt.timedelta(days=5), now + dt.timedelta(hours=30)),
        deleted=False,
    )
    assert cache.seconds_overdue("google", DAY) == 0.0
    # 23 h left: it has been due for an hour.
    cache.observe(
        subscription("late", "google", now - dt.timedelta(days=6), now + dt.timedelta(hours=23)),
        deleted=False,
    )
    assert cache.seconds_overdue("google", DAY) == pytest.approx(3600, abs=5)
    assert cache.seconds_overdue("microsoft", DAY) == 0.0


def test_short_channels_are_due_at_half_life_not_before() -> None:
    now = dt.datetime.now(dt.UTC)
    cache = SubscriptionCache()
    # A 2 h channel, registered 50 min ago: far inside 24 h of its expiry, but its renewal
    # (at half-life, 60 min) is not due: nothing overdue, where a threshold on the expiry
    # gauge would already fire.
    registered = now - dt.timedelta(minutes=50)
    cache.observe(
        subscription("short", "microsoft", registered, registered + dt.timedelta(hours=2)),
        deleted=False,
    )
    assert cache.seconds_overdue("microsoft", DAY) == 0.0
    assert cache.seconds_to_expiry("microsoft") < DAY
    # 70 min after registration it is 10 min overdue.
    registered = now - dt.timedelta(minutes=70)
    cache.observe(
        subscription("short", "microsoft", registered, registered + dt.timedelta(hours=2)),
        deleted=False,
    )
    assert cache.seconds_overdue("microsoft", DAY) == pytest.approx(600, abs=5)


def test_an_expired_channel_stays_overdue_and_one_without_a_channel_is_not() -> None:
    now = dt.datetime.now(dt.UTC)
    cache = SubscriptionCache()
    cache.observe(
        subscription("lapsed", "google", now - dt.timedelta(days=7), now - dt.timedelta(hours=1)),
        deleted=False,
    )
    assert cache.seconds_overdue("google", DAY) == pytest.approx(25 * 3600, abs=5)
    unregistered = subscription("new", "microsoft", now, now)
    del unregistered["status"]["channelId"]
    cache.observe(unregistered, deleted=False)
    assert cache.seconds_overdue("microsoft", DAY) == 0.0
