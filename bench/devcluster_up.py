"""Warm start of the local control plane, beside the bare readiness of its own processes.

The reference is what the binaries themselves need to become healthy (etcd /health,
kube-apiserver /readyz, kube-controller-manager /healthz, as recorded per step); the
difference is calsync's own overhead (certificates, kubeconfig, polling granularity).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench._results import Row
from calsync.devcluster import Cluster, ensure_binaries

ROUNDS = 5


def run() -> list[Row]:
    bins = ensure_binaries(helm=False, log=True)
    totals: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        for i in range(ROUNDS):
            cluster = Cluster(f"bench-{i}", Path(root))
            started = time.monotonic()
            cluster.up(bins, log=False)
            totals.append(time.monotonic() - started)
            state = cluster.state()
            assert state is not None
            bare.append(
                sum(state.timings[k] for k in ("etcd", "kube-apiserver", "kube-controller-manager"))
            )
            cluster.down(log=False)
    total, ref = statistics.median(totals), statistics.median(bare)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"warm `devcluster up`, median of {ROUNDS}: {total:.2f} s")
    print(f"reference, the processes' own time to healthy: {ref:.2f} s")
    print(f"ratio: {total / ref:.2f}x   (peak RSS of this process: {rss:.0f} MiB)")
    return [
        Row(
            benchmark="devcluster_up",
            case="warm `calsync devcluster up`",
            ours=total,
            reference_name="the processes' own time to healthy",
            reference=ref,
            ratio=total / ref,
            extra={"rounds": ROUNDS, "raw_ours_s": totals, "raw_reference_s": bare},
        )
    ]
