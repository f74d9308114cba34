"""Helpers for the tests: polling with a deadline, kubectl, components as processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def poll(
    check: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.25, what: str = ""
) -> Any:
    """Call `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or check!r} (last: {last!r})")


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        exe = BIN / "kubectl"
        self.exe = str(exe) if exe.exists() else "kubectl"

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.exe, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return yaml.safe_load(self(*args, "-o", "json").stdout)

    def apply(self, manifest: str | dict[str, Any], namespace: str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self("apply", "-n", namespace, "-f", "-", input=text)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A calsync component run as a real process, its output kept for failure reports."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "calsync"), *args], env=env, stdout=self._fh, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


def condition(kubectl: Kubectl, namespace: str, name: str, ctype: str) -> dict[str, Any] | None:
    """One condition of a CalendarConnection, or None while it has none of that type."""
    obj = kubectl.json("get", f"calconn/{name}", "-n", namespace)
    for cond in (obj.get("status") or {}).get("conditions", []):
        if cond["type"] == ctype:
            return dict(cond)
    return None


def ready_reason(
    kubectl: Kubectl, namespace: str, name: str, reason: str, *, timeout: float = 90.0
) -> dict[str, Any]:
    """The connection's Ready condition once its reason is `reason` (polled with a deadline)."""

    def check() -> dict[str, Any] | None:
        cond = condition(kubectl, namespace, name, "Ready")
        return cond if cond is not None and cond.get("reason") == reason else None

    return dict(poll(check, timeout=timeout, what=f"Ready reason {reason} on {name}"))


async def until(check: Callable[[], Any], *, within: float = 15.0, what: str = "") -> Any:
    """`poll` for async tests: other tasks run while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what or check!r}")
        await asyncio.sleep(0.02)


def stored_events(store: Path, key: str, *args: str) -> list[dict[str, Any]]:
    """`calsync events --format json` for the connection whose store key (its UID) is `key`,
    read from a SQLite store without a cluster, with `args` (range, filters) passed on."""
    out = subprocess.run(
        [
            str(BIN / "calsync"),
            "events",
            "--connection-key",
            key,
            "--format",
            "json",
            "--store",
            f"sqlite+aiosqlite:///{store}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(out.stdout))


def holds(check: Callable[[], Any], *, seconds: float, what: str, interval: float = 1.0) -> None:
    """Fail as soon as `check` returns something falsy within `seconds` (a thing that must not
    happen, watched for a while: nothing here waits for a state to arrive)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if not value:
            pytest.fail(f"{what} stopped holding (last: {value!r})")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def backdate_last_attempt(kubectl: Kubectl, namespace: str, name: str, seconds: float) -> str:
    """Move the connection's `status.lastAttemptTime` `seconds` into the past, as if its last
    sync had been that long ago: a poll interval (at least 1m) then passes at once instead of
    after a wait. Returns the new time."""
    stamp = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=seconds)
    text = stamp.isoformat().replace("+00:00", "Z")
    patch = json.dumps({"status": {"lastAttemptTime": text}})
    kubectl(
        "patch",
        f"calconn/{name}",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    )
    return text


def connection_uid(kubectl: Kubectl, namespace: str, name: str) -> str:
    """The store key of a connection: its metadata.uid."""
    return str(kubectl.json("get", f"calconn/{name}", "-n", namespace)["metadata"]["uid"])


@contextlib.contextmanager
def private_cluster(name: str) -> Iterator[Kubectl]:
    """A local control plane of its own, `crds/` applied and established, removed afterwards:
    for tests that change the whole cluster (delete CRDs, watch every namespace)."""
    from calsync.devcluster import Cluster

    cluster = Cluster(f"{name}-{os.getpid()}")
    own = Kubectl(cluster.up(log=False))
    try:
        own("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        names = [
            yaml.safe_load(p.read_text())["metadata"]["name"]
            for p in sorted((ROOT / "crds").glob("*.yaml"))
        ]
        own("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
        yield own
    finally:
        cluster.down(log=False)
