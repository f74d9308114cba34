"""The initial sync as users run it: `kubectl apply` until the connection reads Ready.

A local control plane (`calsync devcluster`'s binaries) with the CRDs and one long-running
`calsync run` on the shipped defaults: only what a user must set on a shared machine (the
kubeconfig, a SQLite store URL under a temporary folder, free ports, private addresses allowed
for loopback servers, and the provider URLs of a simulator). Each round `kubectl apply`s a fresh
Namespace with what a user writes for one connection (the benchmark's `manifest`), and is timed
from the start of `kubectl apply` until the connection reads Ready with `status.eventCount`
equal to what the calendar holds. The connection is read every `APPLY_POLL` seconds (plus one
GET's time), so the figure is late by up to that. `clean` deletes the round's namespace and
waits until the connection's purge let it go.

Used by the CalDAV, Google and Microsoft benchmarks for their headline rows.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APPLY_POLL = 0.05  # seconds between two reads of the connection while waiting for Ready
CONNECTION = "work"  # the connection's name in every round's namespace


@dataclass
class ApplyRun:
    seconds: float  # kubectl apply started -> the connection seen Ready with every event
    apply: float  # the kubectl apply process alone
    polls: int
    job: dict[str, Any]  # the SyncJob's status (startedAt, durationSeconds, counts)
    created_to_ready: float  # the job's creationTimestamp -> Ready seen (1 s resolution)
    events: int  # the connection's status.eventCount when seen Ready


class ApplyPath:
    """A local control plane, the CRDs and one long-running `calsync run` on shipped defaults.

    `manifest(namespace)` is the YAML a user applies for one connection named `work` in that
    (new) namespace; `expected` the `status.eventCount` that means every event is stored (None:
    any, for a calendar whose count in the connection's own window is not known beforehand;
    a new connection reads Ready only once its first sync succeeded); `env` what the run needs
    besides the defaults (a simulator's URLs).
    """

    def __init__(
        self,
        root: Path,
        name: str,
        manifest: Callable[[str], str],
        expected: int | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.manifest = manifest
        self.expected = expected
        self.extra_env = dict(env or {})
        self.cluster: Any = None
        self.component: Any = None
        self.client: Any = None
        self.kubeconfig = Path()
        self.env: dict[str, str] = {}
        self.kubectl_bin = "kubectl"
        self.rounds = 0

    def up(self) -> None:
        import yaml
        from lightkube import Client
        from lightkube.config.kubeconfig import KubeConfig

        from bench._platform import BIN, Component, free_port
        from calsync.devcluster import Cluster, ensure_binaries

        self.root.mkdir(parents=True, exist_ok=True)
        bins = ensure_binaries(helm=False, log=True)
        self.cluster = Cluster(f"bench-{self.name}-{os.getpid()}", self.root / "clusters")
        self.kubeconfig = self.cluster.up(bins, log=False)
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        kubectl = BIN / "kubectl"
        self.kubectl_bin = str(kubectl) if kubectl.exists() else "kubectl"
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        names = [
            yaml.safe_load(p.read_text())["metadata"]["name"]
            for p in sorted((ROOT / "crds").glob("*.yaml"))
        ]
        self._kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
        )
        (self.root / "logs").mkdir(exist_ok=True)
        self.component = Component(
            "run",
            "calsync-run",
            self.kubeconfig,
            f"sqlite+aiosqlite:///{self.root / 'calsync-run.db'}",
            self.root / "logs",
            {"CALSYNC_GATEWAY_PORT": str(free_port()), **self.extra_env},
        )
        self.component.wait_for_log("operator bound to event store", timeout=90)
        self.component.wait_for_log("writes to event store", timeout=90)
        self.client = Client(config=KubeConfig.from_file(str(self.kubeconfig)))

    def _kubectl(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [self.kubectl_bin, *args], env=self.env, input=input, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def _ready(self, body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        count = status.get("eventCount")
        if self.expected is None:
            return ready and isinstance(count, int)
        return ready and count == self.expected

    def sync_once(self) -> ApplyRun:
        from calsync.controllers.kube import CalendarConnectionResource, SyncJobResource

        self.rounds += 1
        namespace = f"bench-{self.rounds}"
        manifest = self.manifest(namespace)
        started = time.perf_counter()
        self._kubectl("apply", "-f", "-", input=manifest)
        applied = time.perf_counter() - started
        polls = 0
        deadline = started + 300
        while True:
            polls += 1
            body = self.client.get(CalendarConnectionResource, CONNECTION, namespace=namespace)
            seen_body = body.to_dict()
            if self._ready(seen_body):
                seconds = time.perf_counter() - started
                seen = time.time()
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"not Ready with {self.expected} events in 300 s: {body.to_dict()}"
                )
            self.component.check()
            time.sleep(APPLY_POLL)
        # The clock has stopped. The worker may write the job's final status just after the
        # connection's: wait for it (briefly) so that the report has the job's own figures.
        job_deadline = time.perf_counter() + 10
        while True:
            jobs = [j.to_dict() for j in self.client.list(SyncJobResource, namespace=namespace)]
            if len(jobs) != 1:
                raise RuntimeError(f"the apply made {len(jobs)} SyncJobs, not one")
            job: dict[str, Any] = jobs[0]
            finished = "durationSeconds" in (job.get("status") or {})
            if finished or time.perf_counter() > job_deadline:
                break
            time.sleep(APPLY_POLL)
        created = job.get("metadata", {}).get("creationTimestamp")
        created_to_ready = (
            seen - dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
            if created
            else float("nan")
        )
        events = int(seen_body["status"]["eventCount"])
        return ApplyRun(seconds, applied, polls, job.get("status") or {}, created_to_ready, events)

    def clean(self) -> None:
        """Delete the round's namespace and wait until the connection's purge let it go."""
        self._kubectl(
            "delete", "namespace", f"bench-{self.rounds}", "--wait=true", "--timeout=180s"
        )

    def log_tail(self) -> str:
        return self.component.output()[-4000:] if self.component is not None else ""

    def down(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.component is not None:
            self.component.stop()
        if self.cluster is not None:
            self.cluster.down(log=False)


def namespace_yaml(namespace: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"


def secret_yaml(namespace: str, name: str, data: Mapping[str, str]) -> str:
    """A Secret labelled for calsync (its credentials label), as a user writes one."""
    pairs = ", ".join(f"{key}: {value}" for key, value in data.items())
    return (
        "apiVersion: v1\n"
        "kind: Secret\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
        '  labels: {calsync.io/credentials: "true"}\n'
        f"stringData: {{{pairs}}}\n"
    )


def connection_yaml(namespace: str, spec: str) -> str:
    """The CalendarConnection `work` with `spec` (its YAML lines, indented by two)."""
    return (
        "apiVersion: calsync.io/v1alpha1\n"
        "kind: CalendarConnection\n"
        f"metadata: {{name: {CONNECTION}, namespace: {namespace}}}\n"
        f"spec:\n{spec}"
    )


def oauth_manifest(
    namespace: str, provider: str, owner: str, client: tuple[str, str], refresh_token: str
) -> str:
    """What a user applies for a Google or Microsoft connection named `work`: a fresh
    namespace, the OAuth app's Secret, the Secret with the refresh token consent gave (both
    labelled for calsync) and the CalendarConnection on shipped defaults."""
    client_id, client_secret = client
    return "---\n".join(
        [
            namespace_yaml(namespace),
            secret_yaml(
                namespace, "oauth-client", {"client_id": client_id, "client_secret": client_secret}
            ),
            secret_yaml(namespace, "work-token", {"refresh_token": refresh_token}),
            connection_yaml(
                namespace,
                f"  provider: {provider}\n"
                f"  owner: {owner}\n"
                "  oauth:\n"
                "    clientSecretRef: {name: oauth-client}\n"
                "    tokenSecretRef: {name: work-token}\n",
            ),
        ]
    )


@dataclass
class Interleaved:
    """The headline's rounds: ours through `kubectl apply`, and the reference's beside them."""

    runs: list[ApplyRun]
    reference: list[float]
    warm: float  # the untimed warm-up round of ours


def interleaved(path: ApplyPath, rounds: int, reference: Callable[[], float]) -> Interleaved:
    """Start `path`, run one untimed warm-up round, then `rounds` rounds of ours and of
    `reference` (seconds of one run of it), the order rotating round by round; each round's
    namespace deleted before the next. `path` is stopped afterwards."""
    from bench._platform import say
    from bench._util import rotate

    runs: list[ApplyRun] = []
    timed: list[float] = []
    try:
        say("starting the local control plane and `calsync run`")
        path.up()
        warm = path.sync_once().seconds
        path.clean()
        for round_ in range(rounds):
            for side in rotate(("ours", "reference"), round_):
                if side == "ours":
                    runs.append(path.sync_once())
                    path.clean()
                else:
                    timed.append(reference())
            say(f"apply round {round_}: ours {runs[-1].seconds:.3f} s, reference {timed[-1]:.3f} s")
    except BaseException:
        print(f"calsync run log tail:\n{path.log_tail()}", file=sys.stderr)
        raise
    finally:
        path.down()
    return Interleaved(runs, timed, warm)


def print_rounds(runs: list[ApplyRun]) -> None:
    """One line per round: kubectl's own time, the reads, the SyncJob's duration and counts."""
    for i, r in enumerate(runs):
        print(
            f"  round {i}: kubectl apply {r.apply:.3f} s, {r.polls} reads; SyncJob "
            f"durationSeconds {r.job.get('durationSeconds')}, created -> Ready seen "
            f"{r.created_to_ready:.2f} s (1 s resolution), counts {r.job.get('counts')}"
        )


def raw_extra(runs: list[ApplyRun]) -> dict[str, Any]:
    """The per-round figures every headline row keeps in `extra`."""
    return {
        "poll_interval_s": APPLY_POLL,
        "raw_ours_s": [r.seconds for r in runs],
        "raw_kubectl_apply_s": [r.apply for r in runs],
        "raw_job_duration_s": [r.job.get("durationSeconds") for r in runs],
    }
