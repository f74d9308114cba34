"""`calsync keys`: look after the token keyring from a shell (list, init, rotate, retire).

The operator rotates keys on its own timer; this command is for the rest: creating the keyring
before the first start, rotating now (after a suspected leak, or before a backup policy change),
and retiring old keys once no token Secret uses them. It talks to the cluster the way kubectl
does (`--kubeconfig`, then KUBECONFIG, then ~/.kube/config, then the in-cluster service account).

lightkube is imported inside the command, so `calsync --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from calsync.settings import default_keyring_namespace

if TYPE_CHECKING:
    from lightkube import AsyncClient

KEYRING_NAMESPACE_ENV = "CALSYNC_KEYRING_NAMESPACE"
KEYRING_NAME_ENV = "CALSYNC_KEYRING_NAME"
DEFAULT_KEYRING_NAME = "calsync-keyring"


class CommandError(RuntimeError):
    """The command failed; the message is for the user."""


def _add_cluster_flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    """The flags every action takes; accepted before or after the action's name."""
    parser.add_argument(
        "--kubeconfig",
        default=default,
        help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster account)",
    )
    parser.add_argument(
        "--context", default=default, help="kubeconfig context (default: the current one)"
    )
    parser.add_argument(
        "--namespace",
        default=default,
        help=f"namespace of the keyring Secret (default: {KEYRING_NAMESPACE_ENV}, else the "
        "pod's namespace in a cluster, else default)",
    )
    parser.add_argument(
        "--keyring-name",
        default=default,
        help=f"name of the keyring Secret (default: {KEYRING_NAME_ENV} or {DEFAULT_KEYRING_NAME})",
    )


def add_keys_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `calsync keys ...` on the main parser's subparsers."""
    keys = subparsers.add_parser(
        "keys",
        help="manage the token keyring (list, init, rotate, retire)",
        description="Manage the AES-256-GCM keyring that seals the stored OAuth tokens.",
    )
    _add_cluster_flags(keys, None)
    actions = keys.add_subparsers(dest="keys_action", required=True)
    # SUPPRESS: a flag given after the action overrides one given before it, and its absence
    # does not reset it.
    for name, helptext in (
        ("list", "show the keys and how many token Secrets use each"),
        ("init", "create the keyring Secret with one key (no-op if present)"),
    ):
        _add_cluster_flags(actions.add_parser(name, help=helptext), argparse.SUPPRESS)
    rotate = actions.add_parser(
        "rotate", help="add a new primary key, then re-encrypt every token Secret with it"
    )
    _add_cluster_flags(rotate, argparse.SUPPRESS)
    rotate.add_argument(
        "--token-namespace",
        action="append",
        default=[],
        help="re-encrypt only token Secrets in this namespace (repeatable; default: all)",
    )
    retire = actions.add_parser(
        "retire", help="wipe an old key once no token Secret uses it (never the primary)"
    )
    _add_cluster_flags(retire, argparse.SUPPRESS)
    retire.add_argument("key_id", metavar="KEY_ID")
    retire.add_argument(
        "--force",
        action="store_true",
        help="retire even while token Secrets use the key (their tokens become unreadable "
        "and the connections need consent again)",
    )
    keys.set_defaults(func=run_keys)
    return keys


def _kubeconfig(path: str | None, context: str | None) -> Any:
    """kubectl's lookup order: the flag, KUBECONFIG (first file), ~/.kube/config, in-cluster."""
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.core.exceptions import ConfigError

    candidates: list[str] = []
    if path:
        candidates = [path]
    elif os.environ.get("KUBECONFIG"):
        candidates = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    try:
        if candidates:
            existing = [p for p in candidates if Path(p).expanduser().is_file()]
            if not existing:
                raise CommandError(f"kubeconfig {candidates[0]} does not exist")
            config = KubeConfig.from_file(existing[0])
        elif Path("~/.kube/config").expanduser().is_file():
            config = KubeConfig.from_file("~/.kube/config")
        else:
            config = KubeConfig.from_service_account()
    except ConfigError as exc:
        raise CommandError(
            f"no Kubernetes configuration: pass --kubeconfig or set KUBECONFIG ({exc})"
        ) from None
    if context:
        if context not in config.contexts:
            raise CommandError(f"context {context!r} is not in the kubeconfig")
        config.current_context = context
    return config


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


async def _list(client: AsyncClient, namespace: str, name: str, _: argparse.Namespace) -> int:
    from calsync.controllers.tokens import list_keys

    keys = await list_keys(client, keyring_namespace=namespace, keyring_name=name)
    rows = [["KEY ID", "CREATED", "PRIMARY", "RETIRED", "SECRETS"]]
    for key in keys:
        rows.append(
            [
                key.id,
                key.created.isoformat().replace("+00:00", "Z"),
                "yes" if key.primary else "",
                "yes" if key.retired else "",
                str(key.secrets),
            ]
        )
    _print_table(rows, sys.stdout)
    return 0


async def _init(client: AsyncClient, namespace: str, name: str, _: argparse.Namespace) -> int:
    from calsync.controllers.tokens import ensure_keyring

    ring, created = await ensure_keyring(client, keyring_namespace=namespace, keyring_name=name)
    if created:
        print(f"created keyring Secret {namespace}/{name} with key {ring.primary.id}")
    else:
        print(f"keyring Secret {namespace}/{name} exists; primary key {ring.primary.id}")
    return 0


async def _rotate(client: AsyncClient, namespace: str, name: str, args: argparse.Namespace) -> int:
    from calsync.controllers.tokens import rotate_keys

    report = await rotate_keys(
        client,
        keyring_namespace=namespace,
        keyring_name=name,
        namespaces=args.token_namespace,
        on_step=print,
    )
    for where, reason in report.failed:
        print(f"  failed: {where}: {reason}")
    if report.failed:
        print(
            f"calsync: {len(report.failed)} token Secret(s) still use an older key; fix the "
            "cause and run `calsync keys rotate` again before retiring old keys",
            file=sys.stderr,
        )
        return 1
    print(
        f"done: every token Secret is sealed with {report.new_key_id}; older keys can be "
        "retired with `calsync keys retire KEY_ID` once every calsync process has reloaded "
        "the keyring (within a minute)"
    )
    return 0


async def _retire(client: AsyncClient, namespace: str, name: str, args: argparse.Namespace) -> int:
    from calsync.controllers.tokens import KeyInUse, retire_key

    try:
        await retire_key(
            client, args.key_id, keyring_namespace=namespace, keyring_name=name, force=args.force
        )
    except KeyInUse as exc:
        print(f"calsync: key {exc.key_id} is still used by:", file=sys.stderr)
        for where in exc.secrets:
            print(f"  {where}", file=sys.stderr)
        print(
            "run `calsync keys rotate` to re-encrypt them, or pass --force to retire anyway "
            "(those connections then need consent again)",
            file=sys.stderr,
        )
        return 1
    print(f"retired key {args.key_id}: its material is gone from {namespace}/{name}")
    return 0


_ACTIONS: dict[str, Callable[[Any, str, str, argparse.Namespace], Awaitable[int]]] = {
    "list": _list,
    "init": _init,
    "rotate": _rotate,
    "retire": _retire,
}


def _api_error(exc: Any, namespace: str, name: str) -> str:
    code = exc.status.code
    message = exc.status.message or exc.status.reason or "no message"
    if code in (401, 403):
        return (
            f"not allowed ({code}): {message}. The keyring needs get/create/update on Secrets "
            f"in {namespace!r}; rotate, retire and list also list Secrets in every namespace."
        )
    if code == 404:
        return f"not found: {message} (keyring Secret {namespace}/{name})"
    return f"the API server refused ({code}): {message}"


async def _run(args: argparse.Namespace, namespace: str, name: str) -> int:
    from calsync.controllers.kube_transport import api_client

    config = _kubeconfig(args.kubeconfig, args.context)
    client = api_client(config, field_manager="calsync-keys")
    try:
        return await _ACTIONS[args.keys_action](client, namespace, name, args)
    finally:
        await client.close()


def run_keys(args: argparse.Namespace) -> int:
    """Entry point of `calsync keys`: exit code 0 on success, 1 on failure."""
    import httpx
    from lightkube import ApiError

    from calsync.controllers.tokens import KeyringConflict, TokenStoreError
    from calsync.security.keyring import KeyringError

    namespace = (
        args.namespace or os.environ.get(KEYRING_NAMESPACE_ENV) or default_keyring_namespace()
    )
    name = args.keyring_name or os.environ.get(KEYRING_NAME_ENV) or DEFAULT_KEYRING_NAME
    try:
        return asyncio.run(_run(args, namespace, name))
    except (CommandError, TokenStoreError, KeyringConflict, KeyringError) as exc:
        message = str(exc)
    except ApiError as exc:
        message = _api_error(exc, namespace, name)
    except httpx.HTTPError as exc:
        message = f"cannot reach the Kubernetes API server: {exc.__class__.__name__}: {exc}"
    except OSError as exc:
        message = f"cannot reach the Kubernetes API server: {exc}"
    print(f"calsync: {message}", file=sys.stderr)
    return 1
