"""The outbound URL guard: schemes, literal addresses, resolved names, rebinding at connect."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import pytest

from calsync.providers.base import InvalidConfiguration, ProviderError
from calsync.security.urlguard import GuardedNetworkBackend, check_url, check_url_async

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:169.254.169.254]", "link-local"),
        ("169.254.169.254", "link-local"),
        ("[fe80::1]", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("[fd12:3456::1]", "unique-local"),
        ("224.0.0.251", "multicast"),
        ("[ff02::1]", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104  # an address to refuse, not to bind
        ("[::]", "unspecified"),
        ("100.64.0.1", "non-global"),
        ("[2002:a00:1::1]", "private"),  # 6to4 wrapping 10.0.0.1
        ("[64:ff9b::7f00:1]", "loopback"),  # NAT64 wrapping 127.0.0.1
    ],
)
def test_literal_private_addresses_are_refused(host: str, kind: str) -> None:
    with pytest.raises(InvalidConfiguration, match=kind):
        check_url(f"https://{host}/dav/", allow_private=False, allow_insecure_http=False)


@pytest.mark.parametrize("host", ["93.184.215.14", "[2606:4700:4700::1111]", "8.8.8.8"])
def test_public_literals_pass(host: str) -> None:
    assert check_url(f"https://{host}/", allow_private=False, allow_insecure_http=False)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://example.com/", "only https"),
        ("file:///etc/passwd", "only https"),
        ("http://example.com/", "plain http is refused"),
        ("https://user:secret@example.com/", "credentials in the URL"),
        ("https:///nohost", "no host"),
        ("https://example.com:99999/", "Port"),
    ],
)
def test_bad_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(InvalidConfiguration, match=match) as info:
        check_url(url, allow_private=True, allow_insecure_http=False)
    assert "secret" not in str(info.value)
    assert info.value.retryable is False


def test_allow_private_skips_resolution_and_allows_http_when_asked() -> None:
    url = "http://calendar.invalid:5232/"
    assert check_url(url, allow_private=True, allow_insecure_http=True) == []


def _resolver(*answers: list[str]) -> Callable[..., list[tuple[Any, ...]]]:
    queue = list(answers)

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in addresses
        ]

    return getaddrinfo


def test_resolved_names_must_be_public_on_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["93.184.215.14", "10.0.0.7"]))
    with pytest.raises(InvalidConfiguration, match=r"dav.example.com \(10.0.0.7\) is a private"):
        check_url("https://dav.example.com/", allow_private=False, allow_insecure_http=False)
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["93.184.215.14", "2606:4700::1"]))
    assert check_url(
        "https://dav.example.com/", allow_private=False, allow_insecure_http=False
    ) == [
        "93.184.215.14",
        "2606:4700::1",
    ]


def test_unresolvable_names_are_a_retryable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver([]))
    with pytest.raises(ProviderError, match="cannot resolve") as info:
        check_url("https://nowhere.example/", allow_private=False, allow_insecure_http=False)
    assert not isinstance(info.value, InvalidConfiguration)
    assert info.value.retryable


async def test_async_check_resolves_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["::ffff:127.0.0.1"]))
    with pytest.raises(InvalidConfiguration, match="loopback"):
        await check_url_async(
            "https://sneaky.example/", allow_private=False, allow_insecure_http=False
        )


class _RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.connected: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        raise httpcore.ConnectError("recorded, not connected")


async def test_connect_time_check_defeats_dns_rebinding(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first answer (at check_url time) is public, the next (at connect time) is loopback.
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["93.184.215.14"], ["127.0.0.1"]))
    url = "https://rebind.example/"
    await check_url_async(url, allow_private=False, allow_insecure_http=False)
    inner = _RecordingBackend()
    with pytest.raises(httpcore.ConnectError, match="blocked"):
        await GuardedNetworkBackend(inner).connect_tcp("rebind.example", 443)
    assert inner.connected == []


async def test_connect_goes_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["93.184.215.14"]))
    inner = _RecordingBackend()
    with pytest.raises(httpcore.ConnectError, match="recorded"):
        await GuardedNetworkBackend(inner).connect_tcp("dav.example.com", 443)
    assert inner.connected == ["93.184.215.14"]
    with pytest.raises(httpcore.ConnectError, match="blocked"):
        await GuardedNetworkBackend(inner).connect_tcp("169.254.169.254", 80)
    with pytest.raises(httpcore.ConnectError, match="unix"):
        await GuardedNetworkBackend(inner).connect_unix_socket("/var/run/docker.sock")
