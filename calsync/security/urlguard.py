"""Refuse outbound requests to addresses a user-supplied URL must not reach (SSRF).

A CalendarConnection names a URL that the operator then fetches with its own network position:
inside a cluster that can reach the cloud metadata service (169.254.169.254), the API server,
databases and other tenants' pods. So unless the operator explicitly allows private targets,
every host is resolved and each of its addresses must be globally routable: loopback,
link-local, private, unique-local, CGNAT, multicast, unspecified and reserved ranges are
refused, including IPv4 addresses dressed up as IPv6 (::ffff:127.0.0.1, 6to4, Teredo, NAT64)
and the odd spellings getaddrinfo accepts (2130706433, 0x7f.1).

`check_url` runs before the first request and on every redirect; `GuardedNetworkBackend`
checks again at connect time and connects to exactly the address it checked, so a DNS answer
that changes between check and connect (rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

from calsync.providers.base import InvalidConfiguration, ProviderError

__all__ = [
    "GuardedNetworkBackend",
    "blocked_reason",
    "check_url",
    "check_url_async",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def blocked_reason(address: IPAddress) -> str | None:
    """Why an address may not be reached (e.g. "loopback"), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return f"{inner} (embedded in {address})" if inner else None
    for attribute, kind in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, attribute):
            if kind == "private" and address in _UNIQUE_LOCAL:
                return "unique-local"
            return kind
    if not address.is_global:
        return "non-global"
    return None


def _split(url: str, allow_insecure_http: bool) -> tuple[str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise InvalidConfiguration(f"{url!r}: only https:// URLs are supported")
    if scheme == "http" and not allow_insecure_http:
        raise InvalidConfiguration(
            f"{url!r}: plain http is refused (credentials would travel in clear text); "
            "use https or allow insecure HTTP explicitly for a local server"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidConfiguration(
            f"{parts.hostname}: credentials in the URL are refused; put them in the Secret"
        )
    host = parts.hostname
    if not host:
        raise InvalidConfiguration(f"{url!r}: no host in the URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidConfiguration(f"{url!r}: {exc}") from None
    return host, port


def _verdict(host: str, addresses: Iterable[str], url: str) -> list[str]:
    checked: list[str] = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = blocked_reason(address)
        if reason is not None:
            shown = host if host == text else f"{host} ({text})"
            raise InvalidConfiguration(
                f"{url}: {shown} is a {reason} address; requests to private networks are "
                "refused unless the operator allows private addresses"
            )
        checked.append(text)
    if not checked:
        raise ProviderError(f"{url}: {host} has no address")
    return checked


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, *, allow_private: bool, allow_insecure_http: bool) -> list[str]:
    """Validate scheme and host of `url`; returns the addresses it resolves to.

    Raises InvalidConfiguration for a refused URL or address, ProviderError (retryable) when
    the name does not resolve. With `allow_private` nothing is resolved (and [] returned).
    """
    host, port = _split(url, allow_insecure_http)
    if allow_private:
        return []
    literal = _literal(host)
    if literal is not None:
        return _verdict(host, [literal], url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ProviderError(f"{url}: cannot resolve {host}: {exc}") from None
    return _verdict(host, _addresses(infos), url)


async def check_url_async(url: str, *, allow_private: bool, allow_insecure_http: bool) -> list[str]:
    """`check_url` without blocking the event loop on DNS."""
    host, port = _split(url, allow_insecure_http)
    if allow_private:
        return []
    literal = _literal(host)
    if literal is not None:
        return _verdict(host, [literal], url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ProviderError(f"{url}: cannot resolve {host}: {exc}") from None
    return _verdict(host, _addresses(infos), url)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore backend that resolves, checks, and connects to the checked address only.

    TLS still verifies the certificate against the host name: httpcore passes the origin's
    name as SNI/server_hostname independently of the address connected to.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        url = f"tcp://{host}:{port}"
        literal = _literal(host)
        try:
            if literal is not None:
                addresses = _verdict(host, [literal], url)
            else:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
                addresses = _verdict(host, _addresses(infos), url)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        except InvalidConfiguration as exc:
            # The cause stays attached: the CalDAV provider re-raises it as a non-retryable error.
            raise httpcore.ConnectError(f"blocked: {exc}") from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for provider requests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
