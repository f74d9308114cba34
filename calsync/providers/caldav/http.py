"""The CalDAV provider's HTTP layer: one keep-alive client, guarded, budgeted, authenticated.

A session builds its own connection pools unless it is handed a `DavTransports`: a process
running many sync runs (the worker) keeps one of those, so runs against the same server reuse
its keep-alive connections instead of each opening (and tearing down) its own.

Every request passes the same gate: the URL guard (scheme, SSRF) before it and at connect
time, the connection's request budget, credentials only for the configured origin, Basic auth
switched to Digest when the server asks for Digest, redirects followed by hand (at most five,
each re-checked), and a cap on the response size. Credentials are attached per request, never
as a client default, so nothing re-applies them on a hop this code did not judge: a redirect
that would take them to another origin is refused (`RedirectRefused`), except an upgrade of
the same host to https and, for iCloud, iCloud's own hosts (`DavSession.may_follow`). Statuses are
mapped to the typed errors of `calsync.providers.base` by `raise_for`. Every exchange with the
server (each redirect hop too) is counted in `calsync_provider_requests_total` and timed.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Final, NoReturn
from urllib.parse import urljoin, urlsplit

import httpx

from calsync.observability import metrics
from calsync.providers.base import (
    MAX_RESPONSE_BYTES,
    AuthenticationFailed,
    CalendarGone,
    CredentialsRevoked,
    InvalidConfiguration,
    ProviderError,
    RateLimited,
    response_too_large,
)
from calsync.providers.budget import RequestBudget
from calsync.providers.retry_after import parse_retry_after
from calsync.providers.tls import ssl_context
from calsync.security.urlguard import GuardedNetworkBackend, check_url_async

log = logging.getLogger(__name__)

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 5
USER_AGENT: Final = "calsync (+https://calsync.io)"


class RedirectRefused(InvalidConfiguration):
    """A credentialed request was redirected to another origin: refused, not followed."""

    reason = "RedirectToAnotherHost"


def _where(url: str) -> tuple[str, str]:
    """(host[:port], the URL without user info, query or fragment): safe to show."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "?").lower()
    if ":" in host:
        host = f"[{host}]"
    hostport = f"{host}:{port}" if port is not None else host
    return hostport, f"{parts.scheme}://{hostport}{parts.path or '/'}"


@dataclass(slots=True)
class Reply:
    method: str
    url: str  # the final URL, after redirects
    status: int
    headers: httpx.Headers
    body: bytes


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


_LIMITS: Final = httpx.Limits(max_connections=8, max_keepalive_connections=8)


def _transport(
    *, tls: bool, guarded: bool, limits: httpx.Limits = _LIMITS
) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(
        # The plain transport only ever carries http:// URLs (https has its own mount).
        verify=ssl_context() if tls else False,
        http1=True,
        http2=False,
        retries=0,
        limits=limits,
    )
    if guarded:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:  # httpx/httpcore internals moved: refuse rather than run unguarded
            raise RuntimeError("cannot install the connect-time address guard in this httpx")
        # httpx offers no public hook for httpcore's network backend; the pool reads this
        # attribute for every new connection.
        pool._network_backend = GuardedNetworkBackend(backend)  # type: ignore[union-attr]
    return transport


class _LazyTLSTransport(httpx.AsyncBaseTransport):
    """The https transport, built on the first https request: its CA bundle costs ~20 ms,
    which a plain-http (local) server never needs."""

    def __init__(self, *, guarded: bool, limits: httpx.Limits = _LIMITS) -> None:
        self._guarded = guarded
        self._limits = limits
        self._inner: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._inner is None:
            self._inner = _transport(tls=True, guarded=self._guarded, limits=self._limits)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


class DavTransports:
    """Connection pools shared by many `DavSession`s of one process (and one event loop).

    One plain-http and one (lazily built) https transport per address-guard setting, each
    built on first use. Credentials travel per request on each session's own client, and
    redirects and the credentials scope stay per session, so sessions of different accounts
    can share these pools safely. A session's `aclose()` leaves the pools open: the owner
    closes them with `aclose()` once no session uses them; requests after that fail with a
    (retryable) connection error.
    """

    def __init__(self, *, max_keepalive_connections: int = 64) -> None:
        # Every session sends one request at a time, so the number of concurrent runs bounds
        # the connections: no cap here (a run must never wait on another's), only on idle ones.
        self._limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=max_keepalive_connections
        )
        self._pools: dict[tuple[bool, bool], httpx.AsyncBaseTransport] = {}
        self.closed = False

    def _pool(self, *, tls: bool, guarded: bool) -> httpx.AsyncBaseTransport:
        key = (tls, guarded)
        pool = self._pools.get(key)
        if pool is None:
            if tls:
                pool = _LazyTLSTransport(guarded=guarded, limits=self._limits)
            else:
                pool = _transport(tls=False, guarded=guarded, limits=self._limits)
            self._pools[key] = pool
        return pool

    def _lend(self, *, guarded: bool) -> tuple[httpx.AsyncBaseTransport, httpx.AsyncBaseTransport]:
        """One session's view of the pools, (plain, https): closing it leaves them open."""
        plain = _Borrowed(self, tls=False, guarded=guarded)
        return plain, _Borrowed(self, tls=True, guarded=guarded)

    async def aclose(self) -> None:
        self.closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()

    async def __aenter__(self) -> DavTransports:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Borrowed(httpx.AsyncBaseTransport):
    """A shared pool as one session's client sees it: closing the client leaves it open."""

    def __init__(self, owner: DavTransports, *, tls: bool, guarded: bool) -> None:
        self._owner = owner
        self._tls = tls
        self._guarded = guarded

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._owner.closed:  # e.g. a run still going while the worker shuts down
            raise httpx.ConnectError(
                "the shared CalDAV connection pools are closed", request=request
            )
        pool = self._owner._pool(tls=self._tls, guarded=self._guarded)
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pass  # the pools belong to the DavTransports


def _loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _literal(url: str) -> bool:
    """Whether the URL's host is an IP address (judged without DNS)."""
    try:
        ipaddress.ip_address((urlsplit(url).hostname or "").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _result(status: int, headers: httpx.Headers) -> str:
    """The `result` label of an answered request, as `raise_for` would judge it."""
    if status < 400:
        return "ok"
    if status == 429 or (
        status == 503 and parse_retry_after(headers.get("Retry-After")) is not None
    ):
        return "throttled"
    if status in (401, 403):
        return "unauthorized"
    if status >= 500:
        return "server_error"
    return "client_error"


def _blocked_cause(exc: BaseException) -> InvalidConfiguration | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InvalidConfiguration):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class DavSession:
    def __init__(
        self,
        username: str,
        password: str,
        *,
        icloud: bool,
        allow_private_addresses: bool,
        allow_insecure_http: bool,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
        rate_limiter: RequestBudget | None,
        transports: DavTransports | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        """`transport` replaces the network (tests); else `transports` lends shared pools;
        else the session builds its own, closed with it. `max_response_bytes` caps every
        response body (after decompression; default `MAX_RESPONSE_BYTES`)."""
        self.max_response_bytes = max_response_bytes
        self.icloud = icloud
        self.allow_private = allow_private_addresses
        self.allow_insecure_http = allow_insecure_http
        self._username = username
        self._password = password
        self._auth: httpx.Auth = httpx.BasicAuth(username, password)
        self._digest = False
        self._budget = rate_limiter
        self._trusted: set[tuple[str, str, int]] = set()
        mounts: dict[str, httpx.AsyncBaseTransport] = {}
        if transport is not None and transports is not None:
            raise ValueError("pass a transport or shared transports, not both")
        if transport is None:
            # Explicit transports also mean no proxy from the environment: every connection
            # must go through the address guard.
            guarded = not allow_private_addresses
            if transports is not None:
                transport, mounts["https://"] = transports._lend(guarded=guarded)
            else:
                transport = _transport(tls=False, guarded=guarded)
                mounts["https://"] = _LazyTLSTransport(guarded=guarded)
        self._client = httpx.AsyncClient(
            transport=transport,
            mounts=mounts,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    # -- credentials scope ---------------------------------------------------------------------

    def trust(self, url: str) -> None:
        """Send credentials to this URL's origin (the configured one, or reached by redirect)."""
        self._trusted.add(origin(url))

    def trusted(self, url: str) -> bool:
        return origin(url) in self._trusted

    def may_follow(self, url: str, target: str) -> bool:
        """Whether a redirect from the trusted `url` may take the credentials to `target`:
        the same origin; the same host moved from http to https on the default port; for
        iCloud, an https host of iCloud's own (as `trust_href` allows for hrefs)."""
        try:
            if self.trusted(target):
                return True
            t_scheme, t_host, t_port = origin(target)
        except ValueError:  # a port out of range: the URL guard names it
            return False
        scheme, host, _ = origin(url)
        if t_scheme != "https":
            return False
        if scheme == "http" and t_host == host and t_port == 443:
            return True
        return self.icloud and (t_host == "icloud.com" or t_host.endswith(".icloud.com"))

    def trust_href(self, base: str, href: str) -> str:
        """Resolve an href from a trusted response; refuse to carry credentials elsewhere."""
        url = urljoin(base, href)
        if self.trusted(url):
            return url
        host = origin(url)[1]
        if self.icloud and (host == "icloud.com" or host.endswith(".icloud.com")):
            self.trust(url)  # iCloud homes live on partition hosts (pNN-caldav.icloud.com)
            return url
        raise InvalidConfiguration(
            f"{base} points at another host ({host}); calsync sends credentials only to the "
            "configured host and the hosts it redirects to"
        )

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        depth: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One DAV request, redirects followed; returns whatever status the server gave."""
        sent_headers = dict(headers or {})
        if body is not None:
            sent_headers.setdefault("Content-Type", "application/xml; charset=utf-8")
        if depth is not None:
            sent_headers["Depth"] = depth
        hops = 0
        digest_retry = False
        while True:
            await check_url_async(
                url,
                allow_private=self.allow_private,
                allow_insecure_http=self.allow_insecure_http,
            )
            if self._budget is not None:
                await self._budget.acquire()
            credentials = self.trusted(url)
            hop_headers = sent_headers
            if _loopback(url):
                # Compression buys nothing on loopback and costs both ends CPU.
                hop_headers = {**sent_headers, "Accept-Encoding": "identity"}
            reply = await self._send(method, url, body, hop_headers, credentials)
            if (
                reply.status == 401
                and credentials
                and not self._digest
                and not digest_retry
                and "digest" in reply.headers.get("WWW-Authenticate", "").lower()
            ):
                log.info("%s asks for Digest authentication; switching from Basic", url)
                self._auth = httpx.DigestAuth(self._username, self._password)
                self._digest = True
                digest_retry = True
                continue
            if reply.status in REDIRECTS and "Location" in reply.headers:
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise ProviderError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")
                target = urljoin(url, reply.headers["Location"])
                if credentials:
                    if not self.may_follow(url, target):
                        # The guard's refusal (plain http, a private address) says more, but
                        # without a DNS lookup: a name that does not resolve must not turn
                        # this refusal into a retryable error.
                        await check_url_async(
                            target,
                            allow_private=self.allow_private or not _literal(target),
                            allow_insecure_http=self.allow_insecure_http,
                        )
                        raise self._refused_redirect(method, url, reply.status, target)
                    self.trust(target)
                log.debug("%s %s redirected (%d) to %s", method, url, reply.status, target)
                url = target
                continue
            return reply

    def _refused_redirect(self, method: str, url: str, status: int, target: str) -> RedirectRefused:
        host, shown = _where(target)
        here, _ = _where(url)
        log.warning("%s %s redirected (%d) to another host, %s: refused", method, url, status, host)
        return RedirectRefused(
            f"{method} {url} was redirected ({status}) to another host, {host}; calsync sends "
            f"the credentials only to the connection's own host ({here}) and does not follow. "
            f"If {host} is where the account now lives and you trust it, set spec.caldav.url "
            f"to {shown} (and the Secret's calsync.io/allowed-host annotation, if it has one)"
        )

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], credentials: bool
    ) -> Reply:
        provider = "icloud" if self.icloud else "caldav"
        sent = time.monotonic()
        try:
            request = self._client.build_request(method, url, content=body, headers=headers)
            response = await self._client.send(
                request, auth=self._auth if credentials else None, stream=True
            )
            try:
                chunks: list[bytes] = []
                size = 0
                cap = self.max_response_bytes or MAX_RESPONSE_BYTES
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise response_too_large(method, url, cap)
                    chunks.append(chunk)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            metrics.provider_request(provider, "unreachable", time.monotonic() - sent)
            raise ProviderError(f"{method} {url}: timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            blocked = _blocked_cause(exc)
            if blocked is not None:  # refused by the address guard: never reached the server
                raise InvalidConfiguration(str(blocked)) from None
            metrics.provider_request(provider, "unreachable", time.monotonic() - sent)
            raise ProviderError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        metrics.provider_request(
            provider, _result(response.status_code, response.headers), time.monotonic() - sent
        )
        return Reply(method, url, response.status_code, response.headers, b"".join(chunks))

    def raise_for(self, reply: Reply, *, calendar: bool = False) -> NoReturn:
        """Turn a failed reply into the matching provider error."""
        status = reply.status
        what = f"{reply.method} {reply.url}: {status}"
        if status == 401:
            if self.icloud:
                raise CredentialsRevoked(
                    f"{what}: iCloud refused the app-specific password. Create a new one at "
                    "appleid.apple.com (all are revoked when the Apple ID password changes) "
                    "and update the Secret"
                )
            raise AuthenticationFailed(f"{what}: the server refused the credentials")
        if status in (429, 503):
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            if status == 429 or retry_after is not None:
                raise RateLimited(f"{what}: rate limited", retry_after=retry_after)
        if status == 403:
            raise AuthenticationFailed(f"{what}: access denied")
        if status in (404, 410):
            if calendar:
                raise CalendarGone(f"{what}: the calendar no longer exists")
            raise InvalidConfiguration(f"{what}: not found")
        if status >= 500:
            raise ProviderError(f"{what}: server error")
        error = ProviderError(f"{what}: unexpected answer")
        error.retryable = False
        raise error

    async def aclose(self) -> None:
        await self._client.aclose()
