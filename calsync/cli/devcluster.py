"""`calsync devcluster up|down|kubeconfig|list|build|helm`: the local control plane.

The control plane (calsync.devcluster) is a development tool, not part of the operator; it is
imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def devcluster(args: argparse.Namespace) -> int:
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


def add_devcluster_parser(sub: Any) -> None:
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
    dev.set_defaults(func=devcluster)
