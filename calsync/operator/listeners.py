"""The sockets a calsync process listens on, checked before anything else starts.

`calsync run` opens up to three listeners on `bind_address`: Prometheus /metrics (operator and
worker), Kopf's liveness /healthz (operator) and the gateway (webhooks, consent, /readyz). A
port another process holds used to surface as an OSError traceback from deep inside
prometheus_client, aiohttp or Kopf, after the process had already talked to the cluster and
opened the store. Each port is now bound once and released before the process touches
anything, and a failure is one line naming the address, the port, and the flag and setting
that choose it. The servers bind for real later (Kopf's liveness endpoint only once this
replica leads); a port taken in between still fails there, with the same message where
calsync does the binding.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from calsync.settings import Settings, env_name


@dataclass(frozen=True)
class Listener:
    what: str  # what it serves, as the message says it
    setting: str  # the Settings field of its port; its flag and variable follow from it


METRICS = Listener("/metrics", "metrics_port")
HEALTH = Listener("/healthz", "health_port")
GATEWAY = Listener("the gateway", "gateway_port")
ADDRESS = "bind_address"


class ListenError(RuntimeError):
    """A listener cannot be opened; the message says which, where, and what to change."""


def listeners_for(
    settings: Settings, *, operator: bool, worker: bool, gateway: bool
) -> list[Listener]:
    """The listeners these components open with these settings (a port of 0 turns one off)."""
    wanted = [
        (METRICS, operator or worker),
        (HEALTH, operator),
        (GATEWAY, gateway),
    ]
    return [listener for listener, on in wanted if on and getattr(settings, listener.setting)]


def _option(setting: str) -> str:
    return f"--{setting.replace('_', '-')} or {env_name(setting)}"


def listen_error(listener: Listener, settings: Settings, exc: OSError) -> ListenError:
    """The one-line explanation of a failed bind, naming the flag and setting to change."""
    address = settings.bind_address
    port = getattr(settings, listener.setting)
    where = f"cannot listen on {address}:{port} for {listener.what}"
    reason = (exc.strerror or str(exc)).lower()
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        hint = f"choose an address of this host with {_option(ADDRESS)}"
    elif exc.errno == errno.EACCES:
        hint = f"ports below 1024 need privileges: choose another with {_option(listener.setting)}"
    else:
        hint = (
            f"stop what holds it, or choose another port with {_option(listener.setting)} "
            f"(0 turns {listener.what} off)"
        )
    return ListenError(f"{where}: {reason}; {hint}")


def _bind_once(address: str, port: int) -> None:
    """Bind (and release) the port the way the servers will: SO_REUSEADDR, not yet listening,
    so a socket lingering in TIME_WAIT from the last run does not count as taken."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)


def check_listeners(settings: Settings, *, operator: bool, worker: bool, gateway: bool) -> None:
    """Raise ListenError for the first listener whose port is taken, unusable, or shared."""
    seen: dict[int, Listener] = {}
    for listener in listeners_for(settings, operator=operator, worker=worker, gateway=gateway):
        port = getattr(settings, listener.setting)
        if port in seen:
            other = seen[port]
            raise ListenError(
                f"cannot listen on {settings.bind_address}:{port} for {listener.what}: "
                f"{other.what} uses that port too; give them different ports with "
                f"{_option(listener.setting)}, or {_option(other.setting)}",
            )
        seen[port] = listener
        try:
            _bind_once(settings.bind_address, port)
        except OSError as exc:
            raise listen_error(listener, settings, exc) from exc
