"""Helpers for the soak test: its world at the providers, the gateway, memory and API figures.

- `build_world`: the providers' accounts and calendars and the Secrets and connections for them,
  about a third each for Radicale, the Google simulator and the Graph simulator. The data and the
  way it changes are the chaos test's (`World`, `DavCalendar`, ...), sized by the soak's settings.
- `start_gateway`: a `calsync gateway` process of a `Fleet`, the address the push channels are
  registered with.
- `RssSampler`: VmRSS of each component process, sampled in a thread.
- `apiserver_requests`: kube-apiserver's own `apiserver_request_total`, summed per
  (verb, group, resource), read through `kubectl get --raw /metrics`.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from calsync.testing.radicale import RadicaleServer
from tests.e2e.test_chaos import (
    USER,
    World,
    add_google_account,
    add_google_client,
    add_graph_account,
    add_graph_client,
    seed_dav_calendar,
)
from tests.fixtures.manifests import caldav_connection, oauth_connection, secret
from tests.fixtures.radicale import USERS
from tests.fixtures.simulators import Simulator
from tests.stress import Fleet
from tests.support import Kubectl, Process, poll


def env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


# -- the providers' data --------------------------------------------------------------------


@dataclass
class Sizes:
    connections: int
    per_calendar: int  # CalDAV connections that share one Radicale calendar
    events: int  # events in each Radicale calendar at the start
    caldav_poll: str  # spec.sync.pollInterval of the CalDAV connections
    push_poll: str  # ... and of the Google and Microsoft ones (a backstop to push)

    @property
    def split(self) -> tuple[int, int, int]:
        """(CalDAV, Google, Microsoft) connections: a third each, CalDAV takes the rest."""
        third = max(1, self.connections // 3)
        return max(1, self.connections - 2 * third), third, third


def pick_change(world: World, rng: random.Random) -> str:
    """One change at a provider picked with equal odds (the chaos `World.change` favours
    CalDAV); the provider's name."""
    kind = rng.choice(["caldav", "google", "microsoft"])
    if kind == "caldav":
        world.change_caldav(rng, rng.choice(world.calendars))
    elif kind == "google":
        world.change_google(rng, rng.choice(world.google_accounts))
    else:
        world.change_graph(rng, rng.choice(world.graph_accounts))
    return kind


def _push(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["spec"].setdefault("sync", {})["push"] = True
    return manifest


def build_world(
    sizes: Sizes,
    radicale: RadicaleServer,
    google: Simulator,
    microsoft: Simulator,
    rng: random.Random,
) -> tuple[World, list[dict[str, Any]]]:
    """Accounts, calendars and events at the providers; the Secrets and connections for them
    (Secrets first)."""
    world = World(google, microsoft)
    n_dav, n_google, n_graph = sizes.split
    secrets: list[dict[str, Any]] = [secret("dav", username=USER, password=USERS[USER])]
    connections: list[dict[str, Any]] = []

    calendars = max(1, -(-n_dav // sizes.per_calendar))
    for c in range(calendars):
        slug = f"soak-{uuid.uuid4().hex[:10]}"
        world.calendars.append(seed_dav_calendar(radicale, rng, slug, f"Soak {c}", sizes.events))
    for i in range(n_dav):
        cal = world.calendars[i % len(world.calendars)]
        connections.append(caldav_connection(f"dav-{i:04d}", cal.url, "dav", sizes.caldav_poll))

    secrets.append(add_google_client(google, world))
    for i in range(n_google):
        email = f"soak{i}-{uuid.uuid4().hex[:8]}@example.com"
        secrets.append(add_google_account(google, world, email, i))
        connections.append(
            _push(
                oauth_connection(
                    f"google-{i:04d}", "google", email, "g-client", f"g-token-{i}", sizes.push_poll
                )
            )
        )

    secrets.append(add_graph_client(microsoft, world))
    for i in range(n_graph):
        address = f"soak{i}-{uuid.uuid4().hex[:8]}@example.com"
        secrets.append(add_graph_account(microsoft, world, address, i))
        connections.append(
            _push(
                oauth_connection(
                    f"ms-{i:04d}",
                    "microsoft",
                    address,
                    "ms-client",
                    f"ms-token-{i}",
                    sizes.push_poll,
                )
            )
        )
    return world, secrets + connections


# -- the gateway ----------------------------------------------------------------------------


def start_gateway(fleet: Fleet, port: int) -> Process:
    """`calsync gateway` on `port` with the fleet's settings, once it is ready."""
    proc = fleet._spawn(  # one more component of the fleet, its log among the fleet's
        ["gateway"],
        "gateway",
        fleet.env(
            CALSYNC_GATEWAY_PORT=str(port), CALSYNC_METRICS_PORT="0", CALSYNC_HEALTH_PORT="0"
        ),
    )

    def ready() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"gateway exited with {proc.proc.returncode}:\n{proc.output()[-4000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    poll(ready, timeout=120, interval=0.5, what="the gateway's /readyz")
    return proc


# -- memory ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Sample:
    seconds: float  # since the sampler started
    rss: dict[str, int]  # component -> KiB
    pids: dict[str, int]


@dataclass
class RssSampler:
    """Samples the VmRSS of each component (`components()` -> {name: pid}) every `every` s."""

    components: Callable[[], dict[str, int]]
    every: float = 15.0
    samples: list[Sample] = field(default_factory=list)
    _began: float = 0.0
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> Sample:
        pids = self.components()
        rss = {name: kib for name, pid in pids.items() if (kib := rss_kib(pid)) is not None}
        taken = Sample(round(time.monotonic() - self._began, 1), rss, pids)
        self.samples.append(taken)
        return taken

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.sample()

    def start(self) -> None:
        self._began = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def stop(self) -> Sample:
        """Stop sampling; the last sample, taken now."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        return self.sample()

    def baseline(self, seconds: float) -> Sample:
        """The first sample taken at or after `seconds`."""
        return next(s for s in self.samples if s.seconds >= seconds)

    def growth(self, seconds: float) -> dict[str, dict[str, Any]]:
        """Per component: RSS at the baseline sample and at the last one, and the growth."""
        first, last = self.baseline(seconds), self.samples[-1]
        out: dict[str, dict[str, Any]] = {}
        for name, kib in last.rss.items():
            base = first.rss.get(name)
            out[name] = {
                "baseline_mib": round(base / 1024, 1) if base else None,
                "final_mib": round(kib / 1024, 1),
                "peak_mib": round(max(s.rss.get(name, 0) for s in self.samples) / 1024, 1),
                "growth_percent": round(100 * (kib - base) / base, 1) if base else None,
                "growth_mib_per_minute": (
                    round((kib - base) / 1024 / (last.seconds - first.seconds) * 60, 2)
                    if base and last.seconds > first.seconds
                    else None
                ),
                "same_process": first.pids.get(name) == last.pids.get(name),
            }
        return out


# -- the API server's own count -------------------------------------------------------------

RequestCounts = Counter[tuple[str, str, str]]


def apiserver_requests(kubectl: Kubectl) -> RequestCounts:
    """`apiserver_request_total` summed per (verb, group, resource)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = kubectl("get", "--raw", "/metrics", timeout=60).stdout
    counts: RequestCounts = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                key = (labels.get("verb", ""), labels.get("group", ""), labels.get("resource", ""))
                counts[key] += sample.value
    return counts


def per_minute(before: RequestCounts, after: RequestCounts, minutes: float) -> dict[str, Any]:
    """Requests per minute in total and for the busiest (verb, group/resource) pairs."""
    delta = Counter({k: after[k] - before.get(k, 0) for k in after})
    top = [
        {
            "verb": verb,
            "resource": f"{group}/{resource}" if group else resource,
            "per_minute": round(n / minutes, 1),
        }
        for (verb, group, resource), n in delta.most_common(10)
        if n > 0
    ]
    calsync = sum(n for (_, group, _), n in delta.items() if group == "calsync.io")
    return {
        "total_per_minute": round(sum(delta.values()) / minutes, 1),
        "calsync_io_per_minute": round(calsync / minutes, 1),
        "busiest": top,
    }
