"""The local control plane's build and cluster bookkeeping, without building or starting anything:
pinned versions come from the real go.mod files, missing tools fail with the step named, and
prebuilt or cached binaries are used as they are."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import re
import threading
from pathlib import Path
from types import ModuleType

import pytest

from calsync.cli import main as cli_main
from calsync.devcluster import build
from calsync.devcluster.build import COMPONENTS, BuildError, Component, ensure_binaries
from calsync.devcluster.cluster import Cluster, ClusterError, list_clusters
from calsync.devcluster.lock import exclusive_lock
from tests.support import poll

pytestmark = pytest.mark.unit

KUBERNETES, ETCD, HELM = COMPONENTS
NO_SUCH_PID = 2**22 + 1  # above the largest pid_max Linux allows


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test here may see the developer's overrides or real cache, nor find a Go toolchain."""
    for var in (
        "CALSYNC_CONTROLPLANE_SRC",
        "KUBEBUILDER_ASSETS",
        "CALSYNC_DEVCLUSTER_STATE",
        "XDG_STATE_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    empty_path = tmp_path / "empty-path"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


# -- pinned versions -----------------------------------------------------------------------------


def test_components() -> None:
    assert [c.name for c in COMPONENTS] == ["kubernetes", "etcd", "helm"]
    assert KUBERNETES.binaries == ("kube-apiserver", "kube-controller-manager")
    assert ETCD.binaries == ("etcd",)
    assert HELM.binaries == ("helm",)


@pytest.mark.parametrize(
    ("component", "pattern"),
    [
        (KUBERNETES, r"v1\.36\.\d+"),
        (ETCD, r"v3\.6\.\d+"),
        (HELM, r"v3\.\d+\.\d+"),
    ],
    ids=["kubernetes", "etcd", "helm"],
)
def test_pinned_versions_from_the_real_go_mod_files(component: Component, pattern: str) -> None:
    assert re.fullmatch(pattern, build.pinned_version(component))


def test_pinned_version_from_an_explicit_source(tmp_path: Path) -> None:
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd" / "go.mod").write_text(
        "module x\n\ngo 1.26.0\n\nrequire (\n"
        "\tgo.etcd.io/etcd/api/v3 v3.6.1 // indirect\n"
        "\tgo.etcd.io/etcd/server/v3 v3.6.2 // indirect\n)\n"
    )
    assert build.pinned_version(ETCD, tmp_path) == "v3.6.2"


def test_pinned_version_on_a_single_require_line(tmp_path: Path) -> None:
    (tmp_path / "helm").mkdir()
    (tmp_path / "helm" / "go.mod").write_text("module x\n\nrequire helm.sh/helm/v3 v3.99.1\n")
    assert build.pinned_version(HELM, tmp_path) == "v3.99.1"


def test_empty_source_dir_names_the_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.setenv("CALSYNC_CONTROLPLANE_SRC", str(src))
    with pytest.raises(BuildError) as info:
        build.pinned_version(KUBERNETES)
    message = str(info.value)
    assert "step 'read pinned versions'" in message
    assert str(src / "k8s" / "go.mod") in message
    assert "CALSYNC_CONTROLPLANE_SRC" in message


def test_go_mod_without_the_module_names_the_step(tmp_path: Path) -> None:
    (tmp_path / "k8s").mkdir()
    # Only a sub-package of k8s.io/kubernetes: not a pin of the module itself.
    (tmp_path / "k8s" / "go.mod").write_text(
        "module x\n\ntool k8s.io/kubernetes/cmd/kube-apiserver\n"
    )
    with pytest.raises(BuildError, match=r"step 'read pinned versions'.*does not require"):
        build.pinned_version(KUBERNETES, tmp_path)


def test_kubernetes_ldflags_stamp_the_version() -> None:
    flags = build._ldflags(KUBERNETES, "v1.36.3")
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=36" in flags
    assert build._ldflags(ETCD, "v3.6.16") == "-s -w"
    assert "helm.sh/helm/v3/internal/version.version=v3.22.0" in build._ldflags(HELM, "v3.22.0")


# -- the Go toolchain ----------------------------------------------------------------------------


def test_no_go_on_path_names_the_step() -> None:
    with pytest.raises(BuildError) as info:
        build._go()
    message = str(info.value)
    assert "find the Go toolchain" in message
    assert "KUBEBUILDER_ASSETS" in message


# -- KUBEBUILDER_ASSETS and the cache ------------------------------------------------------------


def test_assets_and_cache_are_used_without_building(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assets = tmp_path / "assets"
    etcd = executable(assets / "etcd")
    apiserver = executable(assets / "kube-apiserver")
    kcm = executable(assets / "kube-controller-manager")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    helm_version = build.pinned_version(HELM)
    helm = executable(cache / "calsync" / "controlplane" / f"helm-{helm_version}" / "bin" / "helm")

    # PATH holds no `go` (see clean_env): any attempt to build would raise BuildError.
    binaries = ensure_binaries(log=False)

    assert binaries.etcd == etcd
    assert binaries.kube_apiserver == apiserver
    assert binaries.kube_controller_manager == kcm
    assert binaries.helm == helm
    assert binaries.kubernetes_version == build.pinned_version(KUBERNETES)
    assert re.fullmatch(r"v1\.36\.\d+", binaries.kubernetes_version)


def test_without_helm_only_the_assets_are_needed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assets = tmp_path / "assets"
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        executable(assets / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    binaries = ensure_binaries(helm=False, log=False)
    assert binaries.etcd == assets / "etcd"
    assert not binaries.helm.exists()


def test_non_executable_asset_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "etcd").write_text("not a program")
    (assets / "etcd").chmod(0o644)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert build._from_assets("etcd") is None
    # ...so it would have to be built, which needs Go.
    with pytest.raises(BuildError, match="find the Go toolchain"):
        ensure_binaries(helm=False, log=False)


def test_missing_binaries_are_built_and_building_needs_go(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="find the Go toolchain"):
        build.build_component(ETCD, log=False)
    # Nothing half-built is left for a later run to trust.
    assert not build._built(ETCD, build.pinned_version(ETCD))


# -- clusters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad/name", "", "..", "a b", "x" * 64, "under_score"])
def test_invalid_cluster_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="invalid cluster name"):
        Cluster(name, tmp_path)


def test_valid_cluster_name_and_paths(tmp_path: Path) -> None:
    cluster = Cluster("e2e-123", tmp_path)
    assert cluster.dir == tmp_path / "e2e-123"
    assert cluster.kubeconfig == tmp_path / "e2e-123" / "admin.kubeconfig"


def test_cluster_without_state(tmp_path: Path) -> None:
    cluster = Cluster("dev", tmp_path / "state")
    assert cluster.state() is None
    assert cluster.running() is False
    assert cluster.state_server() == "(not running)"
    assert cluster.down(log=False) is False
    assert not cluster.dir.exists()


def test_list_clusters_on_an_empty_root(tmp_path: Path) -> None:
    assert list_clusters(tmp_path) == []
    assert list_clusters(tmp_path / "does-not-exist") == []


def test_down_leaves_an_empty_list(tmp_path: Path) -> None:
    Cluster("dev", tmp_path).down(log=False)
    assert list_clusters(tmp_path) == []


def write_state(cluster: Cluster, pids: dict[str, int]) -> None:
    cluster.dir.mkdir(parents=True)
    state = {
        "name": cluster.name,
        "etcd_port": 1,
        "etcd_peer_port": 2,
        "apiserver_port": 3,
        "kcm_port": 4,
        "pids": pids,
        "kubernetes_version": "v1.36.3",
        "started_at": 0.0,
    }
    (cluster.dir / "state.json").write_text(json.dumps(state))


def test_stale_state_is_listed_but_not_running(tmp_path: Path) -> None:
    cluster = Cluster("stale", tmp_path)
    write_state(cluster, {"etcd": NO_SUCH_PID})
    state = cluster.state()
    assert state is not None
    assert state.server == "https://127.0.0.1:3"
    assert cluster.running() is False  # its process is gone: no network call is made
    assert [c.name for c in list_clusters(tmp_path)] == ["stale"]
    assert cluster.down(log=False) is True
    assert not cluster.dir.exists()
    assert list_clusters(tmp_path) == []


def test_state_without_pids_is_not_running(tmp_path: Path) -> None:
    cluster = Cluster("nopids", tmp_path)
    write_state(cluster, {})
    assert cluster.running() is False


def test_garbled_state_is_no_state(tmp_path: Path) -> None:
    cluster = Cluster("garbled", tmp_path)
    cluster.dir.mkdir()
    (cluster.dir / "state.json").write_text("[1, 2")
    assert cluster.state() is None
    (cluster.dir / "state.json").write_text('{"unexpected": 1}')
    assert cluster.state() is None
    assert cluster.running() is False


# -- what `make run` and `make test` build, and how they wait --------------------------------------


def fake_assets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    assets = tmp_path / "assets"
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        executable(assets / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    return assets


def test_devcluster_build_leaves_helm_out_unless_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make controlplane` (under `make run` and `make test`) runs `calsync devcluster build`:
    with the cluster's binaries at hand it must not start building helm, which needs Go."""
    assets = fake_assets(monkeypatch, tmp_path)
    assert cli_main(["devcluster", "build"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [
        str(assets / "etcd"),
        str(assets / "kube-apiserver"),
        str(assets / "kube-controller-manager"),
    ]
    assert "helm" not in out + err

    assert cli_main(["devcluster", "build", "--with-helm"]) == 1  # no Go here to build it
    assert "find the Go toolchain" in capsys.readouterr().err


def test_a_build_that_waits_for_another_says_so_with_the_lock_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    version = build.pinned_version(ETCD)
    lock = build.cache_lock_path()
    lock.parent.mkdir(parents=True)
    result: list[Path] = []
    with lock.open("a+") as other:  # another build holds the lock (flock is per open file)
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("4242\n")
        other.flush()
        waiter = threading.Thread(
            target=lambda: result.append(build.build_component(ETCD, log=True))
        )
        waiter.start()
        said = ""

        def told() -> bool:
            nonlocal said
            said += capsys.readouterr().err
            return "waiting for another build" in said

        poll(told, timeout=30, interval=0.02, what="the waiting message")
        assert str(lock) in said
        assert "pid 4242" in said
        assert waiter.is_alive()
        # the other build finishes: it leaves the binary in the cache and lets go
        executable(build.component_dir(ETCD, version) / "bin" / "etcd")
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert result == [build.component_dir(ETCD, version) / "bin"]  # reused, not built again


def test_waiting_for_a_lock_nobody_holds_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with exclusive_lock(tmp_path / "x.lock", waiting_for="nobody"):
        assert (tmp_path / "x.lock").read_text().strip().isdigit()  # our pid, for waiters
    assert capsys.readouterr().err == ""
    assert (tmp_path / "x.lock").read_text() == ""


def load_run_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "hack" / "run.py"
    spec = importlib.util.spec_from_file_location("make_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_runs_log_outlives_the_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CALSYNC_DEVCLUSTER_STATE", str(tmp_path / "clusters"))
    run = load_run_script()
    cluster = Cluster("calsync")
    cluster.dir.mkdir(parents=True)
    log = run.fresh_log("calsync")
    assert log == run.run_log_path("calsync")
    assert not log.is_relative_to(cluster.dir)
    log.write_text("first run\n")

    cluster.down(log=False)  # what Ctrl-C does to a cluster `make run` started
    assert log.read_text() == "first run\n"

    assert run.fresh_log("calsync") == log  # the same path every run ...
    assert not log.exists()
    assert log.with_name("calsync.previous.log").read_text() == "first run\n"  # ... and one back
