"""Build etcd, kube-apiserver, kube-controller-manager and helm once per version, then reuse them.

A cluster needs only the first three; helm is built when asked for (`calsync devcluster build
--with-helm`, `calsync devcluster helm`), so `make run` and `make test` never wait for it.

The versions are pinned by the Go modules in `hack/controlplane/{k8s,etcd,helm}`: their go.mod
files are the single source of truth, read here. Each component is built into a temporary folder
and renamed into the cache only when the build succeeded, so an interrupted build never leaves a
half-written binary that a later run would trust. A file lock keeps two concurrent builds (two
test sessions, `make run` beside `make test`) from racing; the one that waits says so.

`KUBEBUILDER_ASSETS` (the envtest convention) is honoured: binaries found there are used as they
are and only the missing ones are built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from calsync.devcluster.lock import exclusive_lock
from calsync.devcluster.paths import cache_root, source_root

MIN_GO = (1, 26)


class BuildError(RuntimeError):
    """A control-plane binary could not be found or built; the message names the step."""


@dataclass(frozen=True)
class Component:
    name: str  # cache folder prefix and go module folder
    module: str  # the module whose version is pinned in go.mod
    packages: tuple[str, ...]  # what `go build` builds
    binaries: tuple[str, ...]  # what ends up in bin/


COMPONENTS = (
    Component(
        "kubernetes",
        "k8s.io/kubernetes",
        ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager"),
        ("kube-apiserver", "kube-controller-manager"),
    ),
    Component("etcd", "go.etcd.io/etcd/server/v3", ("go.etcd.io/etcd/server/v3",), ("etcd",)),
    Component("helm", "helm.sh/helm/v3", ("helm.sh/helm/v3/cmd/helm",), ("helm",)),
)
_MODULE_DIRS = {"kubernetes": "k8s", "etcd": "etcd", "helm": "helm"}


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    helm: Path
    kubernetes_version: str


def pinned_version(component: Component, src: Path | None = None) -> str:
    gomod = (src or source_root()) / _MODULE_DIRS[component.name] / "go.mod"
    try:
        text = gomod.read_text()
    except OSError as exc:
        raise BuildError(
            f"step 'read pinned versions': cannot read {gomod} ({exc}); the control plane is "
            "built from a calsync checkout, or set CALSYNC_CONTROLPLANE_SRC"
        ) from exc
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(component.module)}\s+(v\S+)", text, re.M)
    if not match:
        raise BuildError(
            f"step 'read pinned versions': {gomod} does not require {component.module}"
        )
    return match.group(1)


def _ldflags(component: Component, version: str) -> str:
    flags = ["-s", "-w"]
    if component.name == "kubernetes":
        major, minor = version.lstrip("v").split(".")[:2]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={version}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
            ]
    elif component.name == "helm":
        flags.append(f"-X helm.sh/helm/v3/internal/version.version={version}")
    return " ".join(flags)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "step 'find the Go toolchain': `go` is not on PATH. Building the local control plane "
            f"needs Go >= {MIN_GO[0]}.{MIN_GO[1]} (or point KUBEBUILDER_ASSETS at prebuilt "
            "etcd, kube-apiserver and kube-controller-manager binaries)"
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    match = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if not match or (int(match.group(1)), int(match.group(2))) < MIN_GO:
        raise BuildError(
            f"step 'find the Go toolchain': {go} reports "
            f"{out.stdout.strip() or out.stderr.strip()!r}; Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed"
        )
    return go


def cache_lock_path() -> Path:
    return cache_root() / ".lock"


def _cache_lock(*, log: bool) -> AbstractContextManager[None]:
    return exclusive_lock(
        cache_lock_path(), waiting_for="another build of the control plane", log=log
    )


def component_dir(component: Component, version: str) -> Path:
    return cache_root() / f"{component.name}-{version}"


def _built(component: Component, version: str) -> bool:
    bindir = component_dir(component, version) / "bin"
    return all((bindir / b).is_file() for b in component.binaries)


def build_component(component: Component, *, log: bool = True) -> Path:
    """Build one component into the cache unless it is there already; return its bin folder."""
    version = pinned_version(component)
    final = component_dir(component, version)
    if _built(component, version):
        return final / "bin"
    with _cache_lock(log=log):
        if _built(component, version):
            return final / "bin"
        go = _go()
        moddir = source_root() / _MODULE_DIRS[component.name]
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{component.name}-", dir=final.parent))
        logfile = final.parent / f"{component.name}-{version}.build.log"
        started = time.monotonic()
        if log:
            print(
                f"building {component.name} {version} (once; cached in {final}) ...",
                file=sys.stderr,
                flush=True,
            )
        (work / "bin").mkdir()
        # one package: -o names the file (etcd's main package would be called "server");
        # several: -o names the folder.
        if len(component.packages) == 1:
            out_flag = str(work / "bin" / component.binaries[0])
        else:
            out_flag = str(work / "bin") + "/"
        cmd = [
            go, "build", "-trimpath", "-ldflags", _ldflags(component, version),
            "-o", out_flag, *component.packages,
        ]  # fmt: skip
        env = {**os.environ, "CGO_ENABLED": "0"}
        with logfile.open("w") as fh:
            fh.write(" ".join(cmd) + "\n")
            fh.flush()
            result = subprocess.run(cmd, cwd=moddir, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            tail = "\n".join(logfile.read_text().splitlines()[-15:])
            raise BuildError(
                f"step 'go build {component.name} {version}' failed (exit {result.returncode}); "
                f"full log: {logfile}\n{tail}"
            )
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        (final / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        if log:
            print(
                f"built {component.name} {version} in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        return final / "bin"


def _from_assets(name: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return None
    candidate = Path(assets) / name
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _resolve(component: Component, binary: str, *, log: bool) -> Path:
    found = _from_assets(binary)
    if found is not None:
        return found
    return build_component(component, log=log) / binary


def ensure_binaries(*, helm: bool = True, log: bool = True) -> Binaries:
    """Return the control-plane binaries, building whatever is missing from the cache."""
    k8s, etcd, helm_c = COMPONENTS
    return Binaries(
        etcd=_resolve(etcd, "etcd", log=log),
        kube_apiserver=_resolve(k8s, "kube-apiserver", log=log),
        kube_controller_manager=_resolve(k8s, "kube-controller-manager", log=log),
        helm=_resolve(helm_c, "helm", log=log) if helm else Path("/nonexistent/helm"),
        kubernetes_version=pinned_version(k8s),
    )
