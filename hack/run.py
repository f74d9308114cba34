"""`make run`: a local control plane, the CRDs, the demo connection and the operator.

Starts (or reuses) the named local cluster, installs the CRDs, starts `calsync operator` against
it, applies `examples/caldav-demo.yaml` and shows the result. Ctrl-C stops everything this
script started; a cluster that was already running before is left running.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from calsync.devcluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMESPACE = "default"


def kubectl(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "kubectl"), *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", default="calsync")
    args = parser.parse_args()

    cluster = Cluster(args.cluster)
    was_running = cluster.running()
    kubeconfig = cluster.up()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    operator: subprocess.Popen[bytes] | None = None
    try:
        kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        log = cluster.dir / "logs" / "operator.log"
        print(f"starting the operator (log: {log})", file=sys.stderr)
        with log.open("ab") as out:
            operator = subprocess.Popen(
                [str(BIN / "calsync"), "operator", "--metrics-port", "0", "--health-port", "0"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        kubectl(env, "apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "caldav-demo.yaml"))
        deadline = time.monotonic() + 60
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
            if ready:
                break
            time.sleep(0.5)
        if operator.poll() is not None:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        print(kubectl(env, "get", "calconn,sj", "-n", NAMESPACE))
        print(
            f"The cluster is yours while this runs:\n"
            f"  export KUBECONFIG={kubeconfig}\n"
            f"  kubectl get calconn -A\n"
            f"  kubectl describe calconn demo\n"
            f"Operator log: {log}\nCtrl-C stops the operator"
            + ("." if was_running else " and the cluster."),
            flush=True,
        )
        code = operator.wait()
        print(f"the operator exited with {code}; its log: {log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            operator.wait(timeout=30)
        if not was_running:
            cluster.down()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
