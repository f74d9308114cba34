"""Listener checks before start-up: which listeners a component opens, and the one-line refusals
for a taken port, a port two listeners share, and an address this host does not have."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from calsync.operator.listeners import (
    GATEWAY,
    HEALTH,
    METRICS,
    ListenError,
    check_listeners,
    listeners_for,
)
from calsync.settings import Settings
from tests.support import free_port

pytestmark = pytest.mark.unit


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def local(**ports: int) -> Settings:
    defaults = {"metrics_port": free_port(), "health_port": free_port(), "gateway_port": 0}
    return Settings(bind_address="127.0.0.1", **{**defaults, **ports})


def test_each_component_opens_its_own_listeners() -> None:
    settings = local(gateway_port=free_port())
    assert listeners_for(settings, operator=True, worker=True, gateway=True) == [
        METRICS,
        HEALTH,
        GATEWAY,
    ]
    assert listeners_for(settings, operator=False, worker=True, gateway=False) == [METRICS]
    assert listeners_for(settings, operator=False, worker=False, gateway=True) == [GATEWAY]
    assert listeners_for(local(metrics_port=0), operator=True, worker=False, gateway=False) == [
        HEALTH
    ]


def test_free_ports_pass_and_stay_free() -> None:
    settings = local()
    check_listeners(settings, operator=True, worker=True, gateway=False)
    with socket.socket() as again:  # released: the real server can take it
        again.bind(("127.0.0.1", settings.metrics_port))


def test_a_taken_port_names_its_flag_and_setting(taken: int) -> None:
    with pytest.raises(ListenError) as caught:
        check_listeners(local(health_port=taken), operator=True, worker=False, gateway=False)
    assert str(caught.value) == (
        f"cannot listen on 127.0.0.1:{taken} for /healthz: address already in use; stop what "
        "holds it, or choose another port with --health-port or CALSYNC_HEALTH_PORT "
        "(0 turns /healthz off)"
    )


def test_a_taken_port_of_a_listener_this_component_does_not_open_is_no_concern(
    taken: int,
) -> None:
    check_listeners(local(health_port=taken), operator=False, worker=True, gateway=False)


def test_two_listeners_on_one_port_are_refused() -> None:
    port = free_port()
    with pytest.raises(ListenError, match="/metrics uses that port too") as caught:
        check_listeners(
            local(metrics_port=port, gateway_port=port), operator=True, worker=True, gateway=True
        )
    assert "--gateway-port or CALSYNC_GATEWAY_PORT" in str(caught.value)


def test_an_address_this_host_lacks_points_at_bind_address() -> None:
    settings = local().model_copy(update={"bind_address": "192.0.2.1"})  # TEST-NET-1
    with pytest.raises(ListenError, match="--bind-address or CALSYNC_BIND_ADDRESS"):
        check_listeners(settings, operator=False, worker=True, gateway=False)
