"""Run a named local control plane: etcd, kube-apiserver and kube-controller-manager.

Each cluster owns one folder under the state root holding its certificates, etcd data, logs,
admin kubeconfig and `state.json` (ports and pids). The processes run in their own sessions so
they outlive the `calsync devcluster up` that started them; `down` stops exactly those pids, and
only after checking through /proc that each one still is the process we started (its command
line names the cluster's folder), so a recycled pid is never signalled.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml

from calsync.devcluster import pki
from calsync.devcluster.build import Binaries, ensure_binaries
from calsync.devcluster.lock import exclusive_lock
from calsync.devcluster.paths import state_root

DEFAULT_NAME = "calsync"
_READY_TIMEOUT = 90.0
_STOP_TIMEOUT = 15.0
_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "clusterrole-aggregation-controller",
)


class ClusterError(RuntimeError):
    """The local control plane could not be started or stopped; the message says which step."""


@dataclass
class State:
    name: str
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    kcm_port: int
    pids: dict[str, int]
    kubernetes_version: str
    started_at: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per start-up step

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _valid_name(name: str) -> str:
    if not name or len(name) > 63 or not all(c.isalnum() or c == "-" for c in name):
        raise ClusterError(f"invalid cluster name {name!r}: use 1-63 letters, digits and '-'")
    return name


class Cluster:
    """One named local control plane; `up()` is idempotent, `down()` removes everything."""

    def __init__(self, name: str = DEFAULT_NAME, root: Path | None = None) -> None:
        self.name = _valid_name(name)
        self.dir = (root or state_root()) / self.name
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self._state_file = self.dir / "state.json"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> State | None:
        try:
            return State(**json.loads(self._state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _ours(self, pid: int) -> bool:
        """True when `pid` is alive and is one of this cluster's processes."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        return not zombie and str(self.dir).encode() in cmdline

    def running(self) -> bool:
        state = self.state()
        return (
            state is not None
            and bool(state.pids)
            and all(self._ours(pid) for pid in state.pids.values())
            and self._ready(state)
        )

    def _lock(self, *, log: bool) -> AbstractContextManager[None]:
        return exclusive_lock(
            self.dir.parent / f".{self.name}.lock",
            waiting_for=f"another `calsync devcluster up/down` of cluster {self.name!r}",
            log=log,
        )

    # -- health --------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        ctx.load_cert_chain(self.dir / "pki" / "admin.crt", self.dir / "pki" / "admin.key")
        return httpx.Client(verify=ctx, timeout=5.0)

    def _ready(self, state: State) -> bool:
        try:
            with self._client() as client:
                return client.get(f"{state.server}/readyz").status_code == 200
        except (httpx.HTTPError, OSError, ssl.SSLError):
            return False

    # -- up ------------------------------------------------------------------------------------

    def up(self, binaries: Binaries | None = None, *, log: bool = True) -> Path:
        """Start the cluster unless it already runs; return the admin kubeconfig path."""
        with self._lock(log=log):
            if self.running():
                if log:
                    print(f"cluster {self.name!r} is already running", file=sys.stderr)
                return self.kubeconfig
            self._stop_processes()
            shutil.rmtree(self.dir, ignore_errors=True)
            bins = binaries or ensure_binaries(helm=False, log=log)
            started = time.monotonic()
            try:
                self._start(bins)
            except BaseException:
                self._stop_processes()
                raise
            if log:
                print(
                    f"cluster {self.name!r} is up at {self.state_server()} "
                    f"in {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                )
            return self.kubeconfig

    def state_server(self) -> str:
        state = self.state()
        return state.server if state else "(not running)"

    def _start(self, bins: Binaries) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        clock = time.monotonic()
        keys = pki.generate(self.dir / "pki")
        pki_seconds = time.monotonic() - clock
        logs = self.dir / "logs"
        logs.mkdir()
        etcd_port, peer_port, api_port, kcm_port = _free_ports(4)
        state = State(
            name=self.name,
            etcd_port=etcd_port,
            etcd_peer_port=peer_port,
            apiserver_port=api_port,
            kcm_port=kcm_port,
            pids={},
            kubernetes_version=bins.kubernetes_version,
            started_at=time.time(),
            timings={"pki": round(pki_seconds, 3)},
        )
        self._write_kubeconfig(state, keys)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        state.pids["etcd"] = self._spawn(
            "etcd",
            [
                str(bins.etcd),
                f"--data-dir={self.dir / 'etcd'}",
                "--name=devcluster",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=devcluster={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            logs,
        )
        self._save(state)
        self._wait("etcd", state, lambda: self._etcd_healthy(etcd_url))

        state.pids["kube-apiserver"] = self._spawn(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={keys.serving_cert}",
                f"--tls-private-key-file={keys.serving_key}",
                f"--client-ca-file={keys.ca_cert}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={state.server}",
                f"--service-account-key-file={keys.sa_public}",
                f"--service-account-signing-key-file={keys.sa_private}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            logs,
        )
        self._save(state)
        self._wait("kube-apiserver", state, lambda: self._ready(state))

        state.pids["kube-controller-manager"] = self._spawn(
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--controllers={','.join(_CONTROLLERS)}",
                f"--service-account-private-key-file={keys.sa_private}",
                f"--root-ca-file={keys.ca_cert}",
                "--use-service-account-credentials=false",
            ],
            logs,
        )
        self._save(state)
        self._wait("kube-controller-manager", state, lambda: self._kcm_healthy(kcm_port))

    def _spawn(self, name: str, argv: list[str], logs: Path) -> int:
        with (logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._procs[name] = proc
        return proc.pid

    def _save(self, state: State) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self._state_file)

    def _wait(self, what: str, state: State, check: Callable[[], bool]) -> None:
        started = time.monotonic()
        try:
            self._poll(what, check)
        finally:
            state.timings[what] = round(time.monotonic() - started, 3)
            self._save(state)

    def _poll(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        proc = self._procs[what]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(
                    f"step 'start {what}': the process exited with {proc.returncode}; "
                    f"last lines of {self.dir / 'logs' / (what + '.log')}:\n{self._tail(what)}"
                )
            if check():
                return
            time.sleep(0.2)
        raise ClusterError(
            f"step 'start {what}': not healthy after {_READY_TIMEOUT:.0f} s; last lines of its "
            f"log:\n{self._tail(what)}"
        )

    def _tail(self, what: str, lines: int = 20) -> str:
        try:
            text = (self.dir / "logs" / f"{what}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    @staticmethod
    def _kcm_healthy(port: int) -> bool:
        try:
            # The controller manager serves its own self-signed certificate; /healthz is public.
            response = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2.0)  # noqa: S501
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _write_kubeconfig(self, state: State, keys: pki.Pki) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {
                        "server": state.server,
                        "certificate-authority-data": b64(keys.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": f"{self.name}-admin",
                    "user": {
                        "client-certificate-data": b64(keys.admin_cert),
                        "client-key-data": b64(keys.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": self.name,
                    "context": {"cluster": self.name, "user": f"{self.name}-admin"},
                }
            ],
            "current-context": self.name,
        }
        self.kubeconfig.touch(mode=0o600)
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- down ----------------------------------------------------------------------------------

    def down(self, *, log: bool = True) -> bool:
        """Stop the cluster's processes and remove its state; False when there was nothing."""
        with self._lock(log=log):
            existed = self.dir.exists()
            # Its state is removed next, so nothing is lost by not waiting for a graceful stop
            # (kube-apiserver drains its watches for a long time on SIGTERM).
            self._stop_processes(graceful=False)
            shutil.rmtree(self.dir, ignore_errors=True)
        if log:
            what = "stopped and removed" if existed else "was not running"
            print(f"cluster {self.name!r} {what}", file=sys.stderr)
        return existed

    def restart_apiserver(self) -> None:
        """Kill the kube-apiserver (SIGKILL: a graceful stop drains watches for minutes) and
        start it again with the same arguments; return once it is ready. An API server outage
        for tests: etcd keeps the data and the port stays the same."""
        with self._lock(log=False):
            state = self.state()
            pid = state.pids.get("kube-apiserver") if state else None
            if state is None or pid is None or not self._ours(pid):
                raise ClusterError(f"cluster {self.name!r} has no running kube-apiserver")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            old = self._procs.pop("kube-apiserver", None)
            if old is not None:
                old.wait(timeout=_STOP_TIMEOUT)
            deadline = time.monotonic() + _STOP_TIMEOUT
            while time.monotonic() < deadline and self._ours(pid):
                time.sleep(0.1)
            state.pids["kube-apiserver"] = self._spawn(
                "kube-apiserver", [a for a in argv if a], self.dir / "logs"
            )
            self._save(state)
            self._poll("kube-apiserver", lambda: self._ready(state))

    def _stop_processes(self, *, graceful: bool = True) -> None:
        state = self.state()
        known = list(state.pids.values()) if state else []
        ours = [pid for pid in reversed(known) if self._ours(pid)]
        # Children this object spawned are ours even before they exec'd (cmdline not yet set).
        ours += [p.pid for p in self._procs.values() if p.poll() is None and p.pid not in ours]
        for pid in ours:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline and any(self._alive(pid) for pid in ours):
            time.sleep(0.1)
        for pid in ours:
            if self._alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self._procs.values():
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()

    def _alive(self, pid: int) -> bool:
        proc = next((p for p in self._procs.values() if p.pid == pid), None)
        if proc is not None:
            return proc.poll() is None
        return self._ours(pid)


def list_clusters(root: Path | None = None) -> list[Cluster]:
    base = root or state_root()
    if not base.is_dir():
        return []
    return [Cluster(p.name, base) for p in sorted(base.iterdir()) if (p / "state.json").exists()]
