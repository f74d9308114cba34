"""Our Kubernetes API calls on aiohttp's HTTP/1.1 client, under lightkube and httpx.

lightkube builds an `httpx.AsyncClient`; httpx keeps the request model, the kubeconfig's
authentication (bearer tokens, token files re-read on 401, exec plugins, all httpx `Auth`
flows) and the error types the rest of calsync catches. Only the wire work moves: this module
is an `httpx.AsyncBaseTransport` that sends each request with an `aiohttp.ClientSession`.

Why (decision 0019): one API write through httpx's own transport (httpcore over anyio) cost
about 2-2.5 ms of the calling process's CPU on this machine, against about 0.55 ms through
aiohttp (measured side by side on one API server, sequential merge patches). Every calsync
process talks to the API server all day: the gateway's job touches, the workers' claims and
status writes, the operator's creates, every watch.

What stays httpx's: `base_url`, the auth flow, redirects, timeouts (read from the request's
`timeout` extension), decoding of `Content-Encoding` (aiohttp hands the body over as it came).
Failures are raised as the httpx exceptions httpx's own transport would raise, so callers see
no difference: `httpx.ConnectError`, `httpx.ConnectTimeout`, `httpx.ReadTimeout`,
`httpx.PoolTimeout`, `httpx.ReadError`, `httpx.RemoteProtocolError`.

A proxy (`HTTPS_PROXY`, or lightkube's `proxy` argument) keeps httpx's own transport, so every
setting a user had still works.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig

# The most connections one process keeps to the API server (httpx's default is 100 too).
# Watches hold one each for their lifetime; every other request borrows one for its duration.
POOL_LIMIT = 100
# Request headers aiohttp must compute itself from the body it sends.
_OWN_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class _Body(httpx.AsyncByteStream):
    """The response body as aiohttp reads it; closing it gives the connection back."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        self._response.release()


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    t: dict[str, float | None] = request.extensions.get("timeout") or {}
    connect, pool = t.get("connect"), t.get("pool")
    # aiohttp's `connect` covers waiting for a pooled connection and opening one; httpx has a
    # pool timeout and a connect timeout: the sum bounds the same wait.
    both = None if connect is None or pool is None else connect + pool
    return aiohttp.ClientTimeout(
        total=None, connect=both, sock_connect=connect, sock_read=t.get("read")
    )


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends requests with one aiohttp session (made on first use)."""

    def __init__(self, ssl_context: ssl.SSLContext | bool, *, limit: int = POOL_LIMIT) -> None:
        self._ssl = ssl_context
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> AiohttpTransport:
        # lightkube passes its connection parameters through dataclasses.asdict, which deep
        # copies them; a transport (and its SSL context) is shared, never copied.
        return self

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes by Content-Encoding
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _OWN_HEADERS
        ]
        body = await request.aread() if request.method not in ("GET", "HEAD") else None
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=_timeout(request),
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except TimeoutError as exc:
            raise httpx.PoolTimeout(str(exc) or "no connection free", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1"),
            },
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _single(config: SingleConfig | KubeConfig) -> SingleConfig:
    if isinstance(config, KubeConfig):
        single = config.get()
        assert single is not None
        return single
    return config


def api_client(
    config: SingleConfig | KubeConfig,
    *,
    field_manager: str | None = None,
    timeout: httpx.Timeout | None = None,
) -> AsyncClient:
    """A lightkube client whose requests go out through `AiohttpTransport`.

    A proxy in the environment (which httpx would honour) keeps httpx's own transport."""
    single = _single(config)
    transport: AiohttpTransport | None = None
    if not proxied(single.cluster.server):
        assert single.user is not None
        context = verify_cluster(single.cluster, single.user, single.abs_file, trust_env=True)
        transport = AiohttpTransport(context)
    return AsyncClient(
        config=single, field_manager=field_manager, timeout=timeout, transport=transport
    )


def proxied(server: str) -> bool:
    """Whether httpx would send requests to `server` through a proxy from the environment."""
    from urllib.request import getproxies, proxy_bypass

    url = httpx.URL(server)
    proxies = getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not proxy_bypass(url.host)
