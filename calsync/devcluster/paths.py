"""Where the control plane's sources, cached binaries and per-cluster state live.

Binaries are cached by version under the XDG cache directory so that every checkout and every
clean clone on the machine shares one build; cluster state (certificates, etcd data, logs, pids)
lives under the XDG state directory, one folder per cluster name.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calsync" / "controlplane"


def state_root() -> Path:
    override = os.environ.get("CALSYNC_DEVCLUSTER_STATE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "calsync" / "devcluster"


def source_root() -> Path:
    """The `hack/controlplane` folder that pins the component versions (a checkout is needed)."""
    override = os.environ.get("CALSYNC_CONTROLPLANE_SRC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "hack" / "controlplane"
