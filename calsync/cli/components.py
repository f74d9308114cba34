"""`calsync run|operator|worker|gateway`: the long-running components and their flags.

Every flag also reads `CALSYNC_<NAME>` (calsync.settings); a flag wins over the environment.
The settings, logging and the operator (kopf, lightkube, the store) are imported when a
component starts, not when the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# (command, help, description, operator, worker, gateway)
COMPONENTS = (
    (
        "run",
        "operator, worker and gateway in one process (the embedded default)",
        "Run the controllers, the SyncJob worker and the gateway in one process.",
        True,
        True,
        True,
    ),
    (
        "operator",
        "run the controllers only (Kopf)",
        "Run the calsync controllers; SyncJobs are run by `calsync worker`.",
        True,
        False,
        False,
    ),
    (
        "worker",
        "run the SyncJob worker only",
        "Claim and run SyncJobs. More than one worker needs a PostgreSQL store.",
        False,
        True,
        False,
    ),
    (
        "gateway",
        "run the gateway only (OAuth consent, /healthz, /readyz, /metrics)",
        "Serve OAuth consent for CalendarConnections, health endpoints and metrics.",
        False,
        False,
        True,
    ),
)

ENV_NOTE = " Every flag also reads CALSYNC_<NAME>; see the README's settings table."


def start_component(
    args: argparse.Namespace, *, operator: bool, worker: bool, gateway: bool
) -> int:
    from calsync.observability.logging import configure_logging
    from calsync.settings import SettingsError, load_settings

    overrides = {
        "namespaces": args.namespace or None,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "bind_address": args.bind_address,
        "store_url": args.store,
        "allow_private_addresses": True if args.allow_private_addresses else None,
        "gateway_port": args.gateway_port,
        "gateway_url": args.gateway_url,
    }
    try:
        settings = load_settings(overrides)
    except SettingsError as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    from calsync.operator.main import main as operator_main

    return operator_main(settings, operator=operator, worker=worker, gateway=gateway)


def add_component_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable; default: the whole cluster)",
    )
    cmd.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    cmd.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        help="auto (default): text on a terminal, JSON lines otherwise",
    )
    cmd.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off)")
    cmd.add_argument("--health-port", type=int, help="liveness /healthz port (0: off)")
    cmd.add_argument("--bind-address", help="address for /metrics and /healthz")
    cmd.add_argument(
        "--store", help="event store URL (default: CALSYNC_STORE_URL or SQLite in XDG_STATE_HOME)"
    )
    cmd.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="let CalDAV URLs reach loopback and private networks (local servers, tests)",
    )
    cmd.add_argument("--gateway-port", type=int, help="gateway (OAuth consent) port (0: off)")
    cmd.add_argument(
        "--gateway-url", help="the gateway's public base URL (consent links, OAuth redirects)"
    )


def add_component_parsers(sub: Any) -> None:
    for name, helptext, description, operator, worker, gateway in COMPONENTS:
        cmd = sub.add_parser(name, help=helptext, description=description + ENV_NOTE)
        add_component_flags(cmd)
        cmd.set_defaults(
            func=lambda a, op=operator, wk=worker, gw=gateway: start_component(
                a, operator=op, worker=wk, gateway=gw
            )
        )
