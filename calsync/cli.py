"""The `calsync` command: the operator and the local development cluster.

Heavy imports (kopf, lightkube) happen inside the subcommands that need them, so that
`calsync devcluster ...` and `calsync --help` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from calsync import __version__
from calsync.cli_keys import add_keys_parser
from calsync.cli_store import add_store_parser


def _devcluster(args: argparse.Namespace) -> int:
    from calsync.devcluster import BuildError, Cluster, ClusterError, ensure_binaries
    from calsync.devcluster.cluster import list_clusters

    try:
        if args.action == "build":
            bins = ensure_binaries(helm=args.with_helm)
            for path in (bins.etcd, bins.kube_apiserver, bins.kube_controller_manager):
                print(path)
            if args.with_helm:
                print(bins.helm)
            return 0
        if args.action == "list":
            for cluster in list_clusters():
                state = "running" if cluster.running() else "stopped"
                print(f"{cluster.name}\t{state}\t{cluster.state_server()}\t{cluster.kubeconfig}")
            return 0
        cluster = Cluster(args.name)
        if args.action == "up":
            print(cluster.up())
        elif args.action == "down":
            cluster.down()
        elif args.action == "kubeconfig":
            if not cluster.running():
                print(
                    f"calsync: cluster {cluster.name!r} is not running; start it with "
                    f"`calsync devcluster up --name {cluster.name}`",
                    file=sys.stderr,
                )
                return 1
            print(cluster.kubeconfig)
        elif args.action == "helm":
            print(ensure_binaries(helm=True).helm)
    except (BuildError, ClusterError) as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return 1
    return 0


def _component(args: argparse.Namespace, *, operator: bool, worker: bool, gateway: bool) -> int:
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


def _simulate(args: argparse.Namespace) -> int:
    from calsync.cli_simulate import simulate

    return simulate(args)


def _events(args: argparse.Namespace) -> int:
    from calsync.cli_events import show_events

    return show_events(args)


def _add_component_flags(cmd: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calsync", description="Kubernetes-native calendar sync")
    parser.add_argument("--version", action="version", version=f"calsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "devcluster",
        help="a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)",
        description="Build (once, cached) and run a local control plane on 127.0.0.1.",
    )
    dev.add_argument(
        "action",
        choices=["up", "down", "kubeconfig", "list", "build", "helm"],
        help="up: start (no-op when running) and print the kubeconfig path; down: stop and "
        "remove; kubeconfig: print the path; list: all clusters; build: build what a cluster "
        "needs; helm: print the cached helm binary's path, building it when missing",
    )
    dev.add_argument("--name", default="calsync", help="cluster name (default: calsync)")
    dev.add_argument(
        "--with-helm", action="store_true", help="build: build helm too (no cluster needs it)"
    )
    dev.set_defaults(func=_devcluster)

    env_note = " Every flag also reads CALSYNC_<NAME>; see the README's settings table."
    for name, helptext, description, operator, worker, gateway in (
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
    ):
        cmd = sub.add_parser(name, help=helptext, description=description + env_note)
        _add_component_flags(cmd)
        cmd.set_defaults(
            func=lambda a, op=operator, wk=worker, gw=gateway: _component(
                a, operator=op, worker=wk, gateway=gw
            )
        )

    add_keys_parser(sub)
    add_store_parser(sub)

    sim = sub.add_parser(
        "simulate",
        help="run a provider simulator (Google Calendar API, Microsoft Graph) for tests",
        description="Serve a faithful in-memory simulator of a provider's API and OAuth "
        "endpoints on 127.0.0.1, with an admin API under /_admin/ (see docs/simulators/).",
    )
    sim.add_argument("provider", choices=["google", "microsoft"])
    sim.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sim.set_defaults(func=_simulate)

    ev = sub.add_parser(
        "events",
        help="show a connection's events from the store",
        description="Read events from the event store, recurring series expanded in the range.",
    )
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--connection",
        help="NAMESPACE/NAME of the connection, looked up in the cluster of $KUBECONFIG",
    )
    which.add_argument(
        "--connection-key",
        metavar="UID",
        help="the connection's store key (its metadata.uid): read the store without a cluster",
    )
    ev.add_argument("--calendar", help="only this calendar id")
    ev.add_argument(
        "--from", dest="start", help="range start (ISO date or date-time; default: 365 days ago)"
    )
    ev.add_argument("--to", dest="end", help="range end (default: 730 days ahead)")
    ev.add_argument("--format", choices=["table", "json", "ics"], default="table")
    ev.add_argument("--limit", type=int, default=10_000, help="at most this many occurrences")
    ev.add_argument(
        "--include-cancelled",
        action="store_true",
        help="also show cancelled events and occurrences (left out by default)",
    )
    ev.add_argument("--store", help="event store URL (default: CALSYNC_STORE_URL or SQLite)")
    ev.set_defaults(func=_events)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
