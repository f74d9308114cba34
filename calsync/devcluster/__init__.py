"""A local Kubernetes control plane for development, demos and the e2e tests.

There is no Docker engine on the machines calsync is developed on, so instead of kind we build
etcd, kube-apiserver, kube-controller-manager and helm from the Go module proxy once per version
(`build`), cache them outside the work tree, and run them as plain processes on loopback
(`cluster`). `calsync devcluster up|down|kubeconfig` is the user-facing surface.
"""

from calsync.devcluster.build import Binaries, BuildError, ensure_binaries
from calsync.devcluster.cluster import Cluster, ClusterError

__all__ = ["Binaries", "BuildError", "Cluster", "ClusterError", "ensure_binaries"]
