"""What the platform benchmarks (syncjob_throughput, idle_cost) stand on, all real and local.

- `AuditedCluster`: the local control plane of `calsync devcluster` (etcd, kube-apiserver,
  kube-controller-manager), with two kube-apiserver flags added: a static token file that gives
  every process of the benchmark an identity of its own (`calsync-operator`, `calsync-worker-N`,
  `bench-client`), and an audit log (level Metadata, those users only). kube-apiserver's
  `apiserver_request_total` has no user-agent or client label, so the audit log is how requests
  are attributed: one line per request (a watch also logs its end; lines are de-duplicated by
  auditID), counted by the time the API server received the request.
- `ThrowawayPostgres`: initdb + pg_ctl in a temporary folder, as tests/fixtures/postgres.py does
  (its binary lookup is imported from there), durability off, trust authentication.
- `Radicale`: a real Radicale with one user and a few seeded calendars, shared by many
  connections (each connection has its own UID, so its own rows in the store).
- `Component`: `calsync operator` or `calsync worker` as a process of its own, with the shipped
  defaults (no CALSYNC_* setting from the caller's environment leaks in) except what a
  deployment must set: the kubeconfig, the PostgreSQL store URL, private addresses allowed
  (Radicale listens on 127.0.0.1), the keyring namespace and free metrics/health ports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from calsync.devcluster import Cluster, ensure_binaries

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BENCH_USER = "bench-client"
OPERATOR_USER = "calsync-operator"
RADICALE_USER = "bench"
RADICALE_PASSWORD = "bench-password"  # noqa: S105  # a throwaway local Radicale user
SECRET_NAME = "bench-caldav"  # noqa: S105  # the name of a Secret, not a password
FINISHED = frozenset({"Succeeded", "Failed", "Superseded"})


def worker_user(index: int) -> str:
    return f"calsync-worker-{index}"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def env_ints(name: str, default: Sequence[int]) -> list[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return list(default)
    return [int(part) for part in value.replace(" ", ",").split(",") if part]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of a live process; with `reaped` also of its children that
    exited and were waited for. 0 when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this machine wanted it (all cores)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live children and the children it already reaped (a
    PostgreSQL server and its backends)."""
    return _proc_cpu(pid, reaped=True) + sum(_proc_cpu(c) for c in _children(pid))


# -- the control plane with identities and an audit log --------------------------------------

_AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: {users}
  - level: None
"""


class AuditedCluster(Cluster):
    """A devcluster whose API server knows one token per benchmark identity and audits them."""

    def __init__(self, name: str, root: Path, users: Iterable[str]) -> None:
        super().__init__(name, root)
        self.tokens = {user: secrets.token_urlsafe(24) for user in users}

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def _spawn(self, name: str, argv: list[str], logs: Path) -> int:
        if name == "kube-apiserver":
            tokens = self.dir / "bench-tokens.csv"
            lines = [f'{tok},{user},{user},"system:masters"\n' for user, tok in self.tokens.items()]
            tokens.write_text("".join(lines))
            tokens.chmod(0o600)
            policy = self.dir / "bench-audit-policy.yaml"
            policy.write_text(_AUDIT_POLICY.format(users=json.dumps(sorted(self.tokens))))
            argv = [
                *argv,
                f"--token-auth-file={tokens}",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
            ]
        return super()._spawn(name, argv, logs)

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig that authenticates as `user` (its static token)."""
        path = self.dir / f"{user}.kubeconfig"
        if not path.exists():
            config = yaml.safe_load(self.kubeconfig.read_text())
            config["users"] = [{"name": user, "user": {"token": self.tokens[user]}}]
            for context in config["contexts"]:
                context["context"]["user"] = user
            path.touch(mode=0o600)
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@dataclass(frozen=True)
class Request:
    audit_id: str
    user: str
    verb: str
    resource: str  # "resource[/subresource]" or the non-resource URL
    code: int
    received: float  # epoch seconds, as the API server received it


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class AuditLog:
    """Reads the audit log incrementally; one `Request` per auditID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._seen: set[str] = set()
        self.requests: list[Request] = []

    def refresh(self) -> list[Request]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self.requests
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            audit_id = event.get("auditID", "")
            if audit_id in self._seen:
                continue
            self._seen.add(audit_id)
            ref = event.get("objectRef") or {}
            resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            self.requests.append(
                Request(
                    audit_id=audit_id,
                    user=(event.get("user") or {}).get("username", "?"),
                    verb=event.get("verb", "?"),
                    resource=resource,
                    code=int((event.get("responseStatus") or {}).get("code") or 0),
                    received=_epoch(event["requestReceivedTimestamp"]),
                )
            )
        return self.requests

    def between(
        self, start: float, end: float, users: Callable[[str], bool] | None = None
    ) -> list[Request]:
        self.refresh()
        return [
            r
            for r in self.requests
            if start <= r.received < end and (users is None or users(r.user))
        ]


def is_calsync(user: str) -> bool:
    return user == OPERATOR_USER or user.startswith("calsync-worker-")


def role(user: str) -> str:
    if user == OPERATOR_USER:
        return "operator"
    if user.startswith("calsync-worker-"):
        return "worker"
    return user


def breakdown(requests: Iterable[Request]) -> Counter[tuple[str, str, str]]:
    """(operator|worker, verb, resource) -> count; workers summed."""
    return Counter((role(r.user), r.verb, r.resource) for r in requests)


def breakdown_rows(counts: Counter[tuple[str, str, str]], per: float, unit: str) -> list[str]:
    rows = []
    for (who, verb, resource), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(f"| {who} | {verb} | {resource} | {n} | {n / per:.3f} {unit} |")
    return rows


# -- PostgreSQL --------------------------------------------------------------------------------


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary folder (as tests/fixtures/postgres.py starts one)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port = 0
        self._as_user: list[str] = []
        self._pg_ctl = ""

    def pid(self) -> int | None:
        """The postmaster's pid (from its pid file) while the server runs."""
        if self.root is None:
            return None
        try:
            return int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, database: str = "calsync") -> str:
        """Start the server, create `database`; return its SQLAlchemy (asyncpg) URL."""
        external = os.environ.get("CALSYNC_TEST_POSTGRES_URL", "").strip()
        if external:
            raise RuntimeError(
                "the platform benchmarks start their own PostgreSQL: "
                "unset CALSYNC_TEST_POSTGRES_URL"
            )
        from tests.fixtures.postgres import _INSTALL_HINT, find_binaries

        bindir = find_binaries()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL server binaries not found: {_INSTALL_HINT}")
        as_root = os.geteuid() == 0
        # Under root the folder must be reachable by the postgres user: not under a private TMPDIR.
        folder = "/tmp" if as_root else None  # noqa: S108
        self.root = Path(tempfile.mkdtemp(prefix="calsync-bench-pg-", dir=folder))
        if as_root:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        data, log = self.root / "data", self.root / "server.log"
        self._pg_ctl = str(bindir / "pg_ctl")
        subprocess.run(
            [
                *self._as_user,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        for _ in range(3):
            self.port = free_port()
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            argv = [*self._as_user, self._pg_ctl, "-D", str(data), "-l", str(log), "-o", options]
            result = subprocess.run(
                [*argv, "-w", "-t", "60", "start"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode == 0:
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()[-2000:]}")
        asyncio.run(self._create(database))
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def _create(self, database: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.root is None:
            return
        argv = [*self._as_user, self._pg_ctl, "-D", str(self.root / "data"), "-m", "fast"]
        subprocess.run(
            [*argv, "-w", "-t", "60", "stop"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


# -- Radicale ----------------------------------------------------------------------------------


def start_radicale(folder: Path, calendars: int, events: int) -> tuple[Any, list[str]]:
    """A Radicale with `calendars` calendars of `events` generated events each; their URLs."""
    from calsync.testing.icalgen import generate_events
    from calsync.testing.radicale import RadicaleServer

    server = RadicaleServer(folder)
    server.add_user(RADICALE_USER, RADICALE_PASSWORD)
    # Around today, so that the events fall inside the connections' sync window.
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for i in range(calendars):
        server.seed_collection_files(
            RADICALE_USER,
            f"cal-{i}",
            generate_events(events, seed=i, prefix=f"c{i}", start=today),
            name=f"Calendar {i}",
        )
    server.start()  # the port is known from here on
    return server, [server.collection_url(RADICALE_USER, f"cal-{i}") for i in range(calendars)]


# -- calsync processes -------------------------------------------------------------------------


class Component:
    """`calsync operator` or `calsync worker` as a real process, logging to a file."""

    def __init__(
        self,
        command: str,
        user: str,
        kubeconfig: Path,
        store_url: str,
        log_dir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = command
        self.user = user
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "CALSYNC_STORE_URL": store_url,
                "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
                "CALSYNC_KEYRING_NAMESPACE": "default",
                "CALSYNC_BIND_ADDRESS": "127.0.0.1",
                "CALSYNC_METRICS_PORT": str(self.metrics_port),
                "CALSYNC_HEALTH_PORT": str(free_port()),
                "CALSYNC_WORKER_IDENTITY": user,
                **(extra_env or {}),
            }
        )
        self.log = log_dir / f"{user}.log"
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "calsync"), command],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.user} exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
            )

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if text in self.output():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.user} did not log {text!r} in {timeout:.0f} s")

    def rss_bytes(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.pid)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return int(self.proc.returncode)


# -- the whole platform ------------------------------------------------------------------------


class Platform:
    """Cluster + CRDs + PostgreSQL + Radicale; components started on request. Context manager."""

    def __init__(self, name: str, *, workers: int, calendars: int, events: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"calsync-{name}-"))
        users = [OPERATOR_USER, BENCH_USER, *(worker_user(i + 1) for i in range(workers))]
        self.cluster = AuditedCluster(f"{name}-{os.getpid()}", self.tmp / "clusters", users)
        self.postgres = ThrowawayPostgres()
        self.calendars = calendars
        self.events = events
        self.radicale: Any = None
        self.calendar_urls: list[str] = []
        self.store_url = ""
        self.components: list[Component] = []
        self.audit: AuditLog | None = None
        (self.tmp / "logs").mkdir(parents=True)

    def __enter__(self) -> Platform:
        try:
            self._up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """Run kubectl as the cluster's admin; its output."""
        kubectl = BIN / "kubectl"
        result = subprocess.run(
            [str(kubectl) if kubectl.exists() else "kubectl", *args],
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result.stdout

    def _up(self) -> None:
        started = time.monotonic()
        bins = ensure_binaries(helm=False, log=True)
        self.cluster.up(bins, log=False)
        self.audit = AuditLog(self.cluster.audit_log)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        names = [
            yaml.safe_load(p.read_text())["metadata"]["name"]
            for p in sorted((ROOT / "crds").glob("*.yaml"))
        ]
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
        )
        self.store_url = self.postgres.start()
        self.radicale, self.calendar_urls = start_radicale(
            self.tmp / "radicale", self.calendars, self.events
        )
        say(
            f"control plane, CRDs, PostgreSQL and Radicale ({self.calendars} calendars of "
            f"{self.events} events) up in {time.monotonic() - started:.1f} s"
        )

    def __exit__(self, *_: object) -> None:
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception as exc:
                say(f"stopping {component.user}: {exc}")
        self.components.clear()
        if self.radicale is not None:
            self.radicale.stop()
        self.postgres.stop()
        if os.environ.get("BENCH_KEEP") and self.cluster.audit_log.exists():
            shutil.copy2(self.cluster.audit_log, self.tmp / "audit.log")
        try:
            self.cluster.down(log=False)
        except Exception as exc:
            say(f"stopping the cluster: {exc}")
        if os.environ.get("BENCH_KEEP"):
            say(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start(
        self, command: str, user: str, extra_env: Mapping[str, str] | None = None
    ) -> Component:
        component = Component(
            command,
            user,
            self.cluster.kubeconfig_for(user),
            self.store_url,
            self.tmp / "logs",
            extra_env,
        )
        self.components.append(component)
        return component

    def start_operator(self, extra_env: Mapping[str, str] | None = None) -> Component:
        component = self.start("operator", OPERATOR_USER, extra_env)
        component.wait_for_log("operator bound to event store", timeout=90)
        return component

    def start_worker(self, index: int) -> Component:
        component = self.start("worker", worker_user(index))
        component.wait_for_log("writes to event store", timeout=90)
        return component

    def stop(self, component: Component) -> None:
        component.stop()
        self.components.remove(component)

    def check(self) -> None:
        for component in self.components:
            component.check()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by every process of the machine's share of the benchmark:
        the control plane's, PostgreSQL (with its backends), Radicale, each component, and this
        benchmark process itself (its client). Differences of two readings give a round's cost."""
        import resource

        cpu: dict[str, float] = {}
        state = self.cluster.state()
        for name, pid in (state.pids if state else {}).items():
            cpu[name] = _proc_cpu(pid)
        postmaster = self.postgres.pid()
        if postmaster is not None:
            cpu["postgres"] = tree_cpu(postmaster)
        if self.radicale is not None and self.radicale.pid is not None:
            cpu["radicale"] = _proc_cpu(self.radicale.pid)
        for component in self.components:
            cpu[component.user] = component.cpu_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu["benchmark"] = usage.ru_utime + usage.ru_stime
        return cpu

    def client(self, user: str = BENCH_USER) -> Any:
        from lightkube.config.kubeconfig import KubeConfig

        from calsync.controllers.kube_transport import api_client

        # The client calsync's own processes use (decision 0019): on httpx's transport the
        # benchmark's creates and watch took CPU the components under test then lacked.
        config = KubeConfig.from_file(str(self.cluster.kubeconfig_for(user)))
        return api_client(config, field_manager="calsync-bench")


# -- objects -----------------------------------------------------------------------------------


async def bounded(concurrency: int, items: Iterable[Awaitable[Any]]) -> list[Any]:
    slots = asyncio.Semaphore(concurrency)

    async def one(item: Awaitable[Any]) -> Any:
        async with slots:
            return await item

    return await asyncio.gather(*(one(i) for i in items))


async def create_namespace(client: Any, name: str) -> None:
    from lightkube import ApiError
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace

    try:
        await client.create(Namespace(metadata=ObjectMeta(name=name)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise


async def create_connections(
    client: Any,
    namespace: str,
    count: int,
    calendar_urls: Sequence[str],
    *,
    poll_interval: str | None = None,
    concurrency: int = 20,
) -> list[str]:
    """The CalDAV Secret and `count` connections over the calendars, round robin; their names."""
    from lightkube import ApiError
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Secret

    from calsync.controllers.kube import CalendarConnectionResource

    await create_namespace(client, namespace)
    try:
        await client.create(
            Secret(
                metadata=ObjectMeta(
                    name=SECRET_NAME,
                    namespace=namespace,
                    labels={"calsync.io/credentials": "true"},
                ),
                stringData={"username": RADICALE_USER, "password": RADICALE_PASSWORD},
            )
        )
    except ApiError as exc:
        if exc.status.code != 409:
            raise
        # Left by an older run: make sure it carries the opt-in label calsync needs.
        await client.patch(
            Secret,
            SECRET_NAME,
            {"metadata": {"labels": {"calsync.io/credentials": "true"}}},
            namespace=namespace,
        )
    names = [f"conn-{i:05d}" for i in range(count)]

    async def make(i: int, name: str) -> None:
        spec: dict[str, Any] = {
            "provider": "caldav",
            "owner": f"user{i}@example.com",
            "caldav": {
                "url": calendar_urls[i % len(calendar_urls)],
                "allowInsecureHTTP": True,
                "credentialsSecretRef": {"name": SECRET_NAME},
            },
        }
        if poll_interval:
            spec["sync"] = {"pollInterval": poll_interval}
        await client.create(
            CalendarConnectionResource(
                metadata=ObjectMeta(name=name, namespace=namespace), spec=spec
            )
        )

    await bounded(concurrency, (make(i, n) for i, n in enumerate(names)))
    return names


def _ready(body: Mapping[str, Any]) -> bool:
    status = body.get("status") or {}
    if not status.get("lastSyncTime"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


async def wait_synced(
    platform: Platform, client: Any, namespace: str, count: int, limit: float
) -> float:
    """Wait until `count` connections are Ready with a sync behind them and no job is active."""
    from calsync.controllers.kube import CalendarConnectionResource, SyncJobResource

    started = time.monotonic()
    last_report = 0.0
    while True:
        platform.check()
        listing = client.list(CalendarConnectionResource, namespace=namespace)
        conns = [obj.to_dict() async for obj in listing]
        ready = sum(1 for c in conns if _ready(c))
        active = 0
        async for job in client.list(SyncJobResource, namespace=namespace):
            status = job.to_dict().get("status") or {}
            phase = status.get("phase") or "Pending"
            if phase == "Failed":
                raise RuntimeError(f"SyncJob {job.metadata.name} failed: {status.get('error')}")
            if phase not in FINISHED:
                active += 1
        if ready >= count and active == 0:
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        if elapsed > limit:
            raise RuntimeError(
                f"only {ready} of {count} connections synced after {limit:.0f} s"
                f" ({active} jobs active)"
            )
        if elapsed - last_report > 15:
            last_report = elapsed
            say(f"{ready}/{count} connections synced after {elapsed:.0f} s")
        await asyncio.sleep(2.0 if count < 200 else 5.0)
