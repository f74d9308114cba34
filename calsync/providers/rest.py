"""The HTTP client under the JSON providers (Google Calendar, Microsoft Graph).

One `JsonApi` per connection: a keep-alive httpx client, the connection's bearer token, its
request budget, an optional cap on concurrent requests (Graph allows four per mailbox), and the
retry policy both providers document:

- 401: the access token died early (revoked, clock skew). Refresh once and repeat; a second 401
  is an authentication failure.
- 429, 503, and whatever the provider's `classify` calls a rate limit (Google's 403
  `rateLimitExceeded`): wait for Retry-After, or back off exponentially with jitter when it is
  absent, then repeat. A Retry-After longer than `max_retry_after` is raised at once as
  `RateLimited`, so the SyncJob is rescheduled instead of holding a worker slot while it waits.
- Other 5xx and transport errors: exponential back-off, then give up with a retryable error.
- Anything else `classify` maps to a typed error (410 to CursorInvalid, 404 to CalendarGone)
  is raised at once: those mean something to the engine.

Every attempt spends one unit of the budget, retries included: the budget is what the provider
sees, so it must count what the provider sees. For the same reason every attempt is counted in
`calsync_provider_requests_total{provider,result}` and timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from calsync.observability import metrics
from calsync.providers.base import (
    MAX_RESPONSE_BYTES,
    AuthenticationFailed,
    ProviderError,
    RateLimited,
    let_go,
    response_too_large,
)
from calsync.providers.budget import RequestBudget
from calsync.providers.retry_after import parse_retry_after as parse_retry_after
from calsync.providers.tls import ssl_context

if TYPE_CHECKING:
    from calsync.providers.oauth import AccessTokens

log = logging.getLogger(__name__)

Classify = Callable[[httpx.Response], ProviderError | None]

_BACKOFF_CAP = 30.0
_MESSAGE_LIMIT = 300


def error_message(response: httpx.Response) -> str:
    """The provider's own words for a failed response, short and safe to show."""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            text = str(error.get("message") or error.get("code") or "")
        elif isinstance(error, str):
            text = str(body.get("error_description") or error)
    if not text:
        text = response.reason_phrase or "error"
    return f"HTTP {response.status_code}: {text[:_MESSAGE_LIMIT]}"


def default_error(response: httpx.Response) -> ProviderError:
    status = response.status_code
    message = error_message(response)
    if status in (429, 503):
        return RateLimited(message, parse_retry_after(response.headers.get("Retry-After")))
    error = ProviderError(message)
    error.retryable = status >= 500
    return error


def request_result(status: int, error: ProviderError | None) -> str:
    """The `result` label of an answered request (see `calsync_provider_requests_total`)."""
    if status < 400:
        return "ok"
    if isinstance(error, RateLimited):
        return "throttled"
    if status in (401, 403):
        return "unauthorized"
    if status >= 500:
        return "server_error"
    return "client_error"


class JsonApi:
    """One provider's HTTP client: keep-alive, bearer token, budget, Retry-After-aware retries."""

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokens,
        *,
        classify: Classify,
        budget: RequestBudget | None = None,
        timeout: float = 30.0,
        max_concurrency: int | None = None,
        max_attempts: int = 5,
        max_retry_after: float = 30.0,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        provider: str = "other",
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes  # every body, after decompression
        self.provider = provider  # the label of its requests in the metrics
        self._tokens = tokens
        self._classify = classify
        self._budget = budget
        self._max_attempts = max(1, max_attempts)
        self._max_retry_after = max_retry_after
        self._backoff = backoff
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._http = httpx.AsyncClient(
            timeout=timeout,
            verify=ssl_context(),  # one per process, not one per client: see providers.tls
            transport=transport,
            headers={"Accept": "application/json", **(headers or {})},
            follow_redirects=False,
        )
        self.requests = 0
        self.retries = 0
        self.rate_limited = 0

    def url(self, url: str) -> str:
        if url.startswith(("http://", "https://")):
            return url
        return self.base_url + "/" + url.lstrip("/")

    def same_origin(self, url: str) -> bool:
        """Whether an absolute URL (a next link, a delta link) points at our API's host."""
        ours = httpx.URL(self.base_url)
        theirs = httpx.URL(url)
        return (theirs.scheme, theirs.host, theirs.port) == (ours.scheme, ours.host, ours.port)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._semaphore is None:
            yield
            return
        async with self._semaphore:
            yield

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base: float = min(_BACKOFF_CAP, self._backoff * (2 ** (attempt - 1)))
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not cryptography

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request until it succeeds (2xx) or fails for good; returns the response."""
        target = self.url(url)
        if not self.same_origin(target):
            # Next and delta links come from the server; never send the token anywhere else.
            raise ProviderError(
                f"refusing to follow a link to another host: {httpx.URL(target).host}"
            )
        token = await self._tokens.get()
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if self._budget is not None:
                await self._budget.acquire()
            request_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
            try:
                async with self._slot():
                    self.requests += 1
                    sent = time.monotonic()
                    request = self._http.build_request(
                        method, target, params=params, json=json, headers=request_headers
                    )
                    response = await self._http.send(request, stream=True)
                    try:
                        await self._read(response, method, target)
                    finally:
                        await response.aclose()
            except httpx.TransportError as exc:
                metrics.provider_request(self.provider, "unreachable", time.monotonic() - sent)
                error: ProviderError = ProviderError(
                    f"{method} {httpx.URL(target).path} failed: {type(exc).__name__}"
                )
                if attempt >= self._max_attempts:
                    raise error from None
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, None))
                continue
            took = time.monotonic() - sent
            if response.is_success:
                metrics.provider_request(self.provider, "ok", took)
                return response
            if response.status_code == 401:
                metrics.provider_request(self.provider, "unauthorized", took)
                if refreshed:
                    raise AuthenticationFailed(error_message(response))
                token = await self._tokens.refreshed(token)
                refreshed = True
                attempt -= 1  # a refresh is not a failed attempt
                continue
            error = self._classify(response) or default_error(response)
            metrics.provider_request(
                self.provider, request_result(response.status_code, error), took
            )
            if isinstance(error, RateLimited):
                self.rate_limited += 1
                wait = error.retry_after
                if wait is not None and wait > self._max_retry_after:
                    raise error
                if attempt >= self._max_attempts:
                    raise error
                self.retries += 1
                delay = self._delay(attempt, wait)
                log.info(
                    "rate limited, retrying",
                    extra={"status": response.status_code, "delay": round(delay, 3)},
                )
                await asyncio.sleep(delay)
                continue
            # Only plain transient failures are repeated here; a typed error (CursorInvalid,
            # CalendarGone, ...) means something to the engine and goes straight up.
            if type(error) is ProviderError and error.retryable and attempt < self._max_attempts:
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, None))
                continue
            raise error

    async def _read(self, response: httpx.Response, method: str, target: str) -> None:
        """Read the body of a streamed response, refusing one over `max_response_bytes`."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise response_too_large(method, httpx.URL(target).path, self.max_response_bytes)
            chunks.append(chunk)
        # What `Response.aread` leaves behind, so `.content`, `.json()` and `.text` work.
        response._content = b"".join(chunks)

    async def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        response = await self.request("GET", url, params=params, headers=headers)
        try:
            body = response.json()
        except ValueError:
            raise ProviderError(
                f"GET {httpx.URL(self.url(url)).path}: the answer is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise ProviderError(f"GET {httpx.URL(self.url(url)).path}: expected a JSON object")
        return body

    async def aclose(self) -> None:
        await self._http.aclose()


T = TypeVar("T")

# Steps of the event loop a request made ahead gets before the caller goes back to its own
# work: enough for httpx to take a kept-alive connection from its pool and write the request.
_SEND_STEPS = 8


async def prefetch(request: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start a request for a next page, and let it reach the wire before returning.

    A task only starts running when its creator next yields to the event loop; a caller that
    then spends tens of milliseconds converting the page in hand would leave the request unsent
    for all that time, and the server idle. A few loop steps put it on the wire first.
    """
    task = asyncio.ensure_future(request)
    for _ in range(_SEND_STEPS):
        if task.done():
            break
        await asyncio.sleep(0)
    return task


async def abandon_prefetch(fetch: asyncio.Future[Any]) -> None:
    """Let go of a request made ahead for a next page that will not be read.

    Still running: it is cancelled and awaited. Finished: its outcome is retrieved, so that
    asyncio does not log an error nobody is going to look at.
    """
    await let_go(fetch)
