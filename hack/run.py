"""`make run`: a local control plane, a demo CalDAV calendar, and calsync syncing it.

Starts (or reuses) the named local cluster, installs the CRDs, starts a Radicale server with a
generated demo calendar (a few hundred events: recurring series with exceptions, all-day events,
several time zones), runs `calsync run` (operator and worker, SQLite store) against the cluster,
applies `examples/caldav-demo.yaml` and shows the result. Ctrl-C stops everything this script
started; a cluster that was already running before is left running.

calsync's log outlives the cluster: it is written to `run_log_path()` (beside the cluster
folders, not in one, since `devcluster down` removes the cluster's folder), the previous run's
log is kept next to it, and the path is printed again on the way out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from calsync.devcluster import Cluster
from calsync.devcluster.paths import state_root
from calsync.testing.icalgen import generate_events
from calsync.testing.radicale import RadicaleServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMESPACE = "default"
DEMO_PORT = 5232  # the URL in examples/caldav-demo.yaml
DEMO_EVENTS = 300
TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(BIN / "kubectl"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_radicale(folder: Path) -> RadicaleServer:
    shutil.rmtree(folder, ignore_errors=True)
    server = RadicaleServer(folder, port=DEMO_PORT if port_free(DEMO_PORT) else None)
    server.add_user("demo", "demo")
    server.seed_collection_files(
        "demo",
        "work",
        generate_events(DEMO_EVENTS, seed=2026, start=TODAY),
        name="Work",
        color="#1e88e5",
    )
    server.start()
    print(
        f"demo CalDAV server at {server.url} (user demo, password demo, "
        f"{DEMO_EVENTS} events in /demo/work/)",
        file=sys.stderr,
    )
    return server


def run_log_path(cluster: str) -> Path:
    """Where `make run` writes calsync's log for `cluster`: the same path every run."""
    return state_root().parent / "make-run" / cluster / "calsync.log"


def fresh_log(cluster: str) -> Path:
    """The log path, with the previous run's log moved to `calsync.previous.log`."""
    log = run_log_path(cluster)
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists():
        log.replace(log.with_name("calsync.previous.log"))
    return log


def _port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens on it, else a free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", default="calsync")
    args = parser.parse_args()

    cluster = Cluster(args.cluster)
    was_running = cluster.running()
    kubeconfig = cluster.up()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    radicale: RadicaleServer | None = None
    operator: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    try:
        kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        radicale = start_radicale(state_root().parent / "demo" / "radicale")
        log = fresh_log(args.cluster)
        gateway_port = _port_or_free(8080)
        print(f"starting `calsync run` (log: {log})", file=sys.stderr)
        with log.open("ab") as out:
            operator = subprocess.Popen(
                [
                    str(BIN / "calsync"),
                    "run",
                    "--allow-private-addresses",
                    "--metrics-port",
                    "0",
                    "--health-port",
                    "0",
                    "--bind-address",
                    "127.0.0.1",
                    "--gateway-port",
                    str(gateway_port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        manifest = (ROOT / "examples" / "caldav-demo.yaml").read_text()
        manifest = manifest.replace(f"127.0.0.1:{DEMO_PORT}/", f"127.0.0.1:{radicale.port}/")
        kubectl(env, "apply", "-n", NAMESPACE, "-f", "-", stdin=manifest)
        deadline = time.monotonic() + 120
        ready = ""
        while time.monotonic() < deadline and operator.poll() is None:
            ready = kubectl(
                env,
                "get",
                "calconn/demo",
                "-n",
                NAMESPACE,
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            )
            if ready == "True":
                break
            time.sleep(0.5)
        if operator.poll() is not None:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        print(kubectl(env, "get", "calconn,sj", "-n", NAMESPACE))
        if ready != "True":
            print(kubectl(env, "describe", "calconn/demo", "-n", NAMESPACE))
        print(
            "The cluster is yours while this runs:\n"
            f"  export KUBECONFIG={kubeconfig}\n"
            "  kubectl get calconn,sj -A\n"
            "  kubectl describe calconn demo\n"
            "  kubectl create -f examples/syncjob-manual.yaml      # sync now\n"
            "  .venv/bin/calsync events --connection default/demo "
            f"--from {TODAY.date()} --to {(TODAY + dt.timedelta(days=7)).date()}\n"
            f"gateway (OAuth consent, /healthz, /metrics): http://127.0.0.1:{gateway_port}\n"
            f"calsync log: {log}\nCtrl-C stops calsync, the demo server"
            + (" and nothing else." if was_running else " and the cluster."),
            flush=True,
        )
        code = operator.wait()
        print(f"calsync exited with {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            operator.wait(timeout=30)
        if radicale is not None:
            radicale.stop()
        if not was_running:
            cluster.down()
        if log is not None:
            print(f"calsync's log is kept at {log}", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
