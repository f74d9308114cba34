"""The Helm chart's RBAC, proven on a real API server: sufficient for the work, and no more.

The chart is rendered (`helm template`, PostgreSQL store: three components, the built-in
scaler on) and its ServiceAccounts, RBAC, settings ConfigMap and Deployments are applied to a
real kube-apiserver with RBAC on (no kubelet: the Deployments' pods never run).
`calsync operator`, `calsync worker` and `calsync gateway` then run as local processes with the
ConfigMap's settings, each with a kubeconfig holding a token the API server issued for that
component's ServiceAccount (the TokenRequest API, what `kubectl create token` calls;
tests/fixtures/serviceaccounts.py). So no process impersonates its ServiceAccount through an
admin identity: each authenticates *as* the ServiceAccount, exactly like the chart's pod
would, and RBAC decides every call it makes (`kubectl auth whoami` checks who it is).

With that: a CalDAV connection (Radicale, credentials in a Secret) syncs until Ready with its
events in the PostgreSQL store; a Google connection (the simulator) is consented to through
the gateway, which stores its tokens, then subscribes, after which an event created in the
simulator reaches the store through the gateway alone (the connection polls once a day, so
only a notification can explain the sync); the operator sizes the chart's worker Deployment
through its `scale` subresource and posts the Event; deleting both connections stops the
channel and purges the store. None of the three logs shows a 403 or Forbidden answer (the
gateway's own 403 answers to webhook calls aside), and none of the processes exited. Then what
the chart must not grant is refused, asked as each ServiceAccount: reading Secrets in a
namespace the chart does not watch (`kubectl get secrets`), listing Secrets cluster-wide, any
Secret but the keyring in the release namespace, and rights no component has a use for
(`kubectl auth can-i`). Last, the rights the code uses only on paths the scenario does not
reach reliably (re-reads after a conflict, key rotation) are asked for the same way.

Both RBAC shapes run: `watchNamespaces: [NS]` (a Role and RoleBinding per watched namespace)
on the session's quiet cluster, and `watchNamespaces: []` (ClusterRoles) on a cluster of this
module's own, because the components then watch the whole cluster and would take up other
tests' connections on the shared one. The scenario also runs in the chart's SQLite shape:
one `calsync run` as the one ServiceAccount `<fullname>-run` (namespaced; no scaler there).
The operator starts before the worker and gateway: it creates the keyring Secret, which the
chart lets the other two read but not create (started first, they exit 2 until it exists,
and their pods restart).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from calsync.controllers.tokens import token_secret_name
from tests.fixtures.manifests import secret
from tests.fixtures.radicale import CalDAVCalendar
from tests.fixtures.serviceaccounts import (
    api_errors,
    can_i,
    documents,
    fullname,
    render,
    token_kubeconfig,
    whoami,
)
from tests.fixtures.simulators import Simulator
from tests.queue_fleet import (
    Component,
    condition_of,
    connection_manifest,
    is_ready,
    nothing_stored,
    secret_manifest,
    stored_pairs,
    vevent,
)
from tests.support import ROOT, Kubectl, free_port, poll, private_cluster

pytestmark = pytest.mark.e2e

CHART = ROOT / "charts" / "calsync"
TEMPLATES = (
    "templates/serviceaccounts.yaml",
    "templates/rbac.yaml",
    "templates/configmap.yaml",
    "templates/deployments.yaml",
)
POSTGRESQL = (
    "store.type=postgresql",
    "store.postgresql.existingSecret=calsync-store",
    # The built-in scaler, brought to act at once: a minimum of 2 against the 1 replica the
    # Deployment starts with, so it reads and writes the scale subresource within a second.
    "scaling.enabled=true",
    "scaling.minReplicas=2",
    "scaling.interval=1s",
    "scaling.scaleDownStabilization=0s",
)
# shape: (values, watch one namespace, components)
SHAPES = {
    "namespaced": (POSTGRESQL, True, ("operator", "worker", "gateway")),
    "cluster": (POSTGRESQL, False, ("operator", "worker", "gateway")),
    # SQLite: the chart's one `calsync run` pod, with the union of the three rule sets.
    "sqlite": (("store.type=sqlite",), True, ("run",)),
}
THREE = ["namespaced", "cluster"]
FINISHED = {"Succeeded", "Failed", "Superseded"}
NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


# -- the release --------------------------------------------------------------------------------


@dataclass
class Release:
    """The chart's ServiceAccounts, RBAC, settings ConfigMap and (inert: no kubelet runs their
    pods) Deployments, applied; a kubeconfig per ServiceAccount."""

    admin: Kubectl
    name: str
    namespace: str  # the release namespace: keyring, Lease, worker Deployment
    watched: str  # where the connections live
    other: str  # a namespace the components have no business in
    scoped: bool  # watchNamespaces: [watched], else []
    components: tuple[str, ...]  # operator, worker, gateway; or run (SQLite)
    objects: list[dict[str, Any]]
    settings: dict[str, str]  # the chart's settings ConfigMap: the components' environment
    accounts: dict[str, Kubectl] = field(default_factory=dict)

    def account(self, component: str) -> str:
        return f"{fullname(self.name)}-{component}"


@pytest.fixture(scope="module")
def private_kubectl() -> Iterator[Kubectl]:
    """A cluster of this module's own (CRDs applied), for the cluster-wide RBAC shape."""
    with private_cluster("e2e-rbac") as own:
        yield own


@pytest.fixture
def release(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Release]:
    """The chart rendered in the shape the test is parametrized with (indirect: SHAPES)."""
    shape_values, scoped, names = SHAPES[request.param]
    admin: Kubectl = request.getfixturevalue("quiet_kubectl" if scoped else "private_kubectl")
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"rbac{suffix}", f"rbac-rel-{suffix}"
    watched, other = f"rbac-watched-{suffix}", f"rbac-other-{suffix}"
    for ns in (namespace, watched, other):
        admin("create", "namespace", ns)
    values = [*shape_values, *([f"watchNamespaces={{{watched}}}"] if scoped else [])]
    rendered = render(CHART, name, namespace, values=values, show_only=TEMPLATES)
    (tmp_path / "release.yaml").write_text(rendered)
    objects = documents(rendered)
    [config] = [o for o in objects if o["kind"] == "ConfigMap"]
    settings = {k: str(v) for k, v in config["data"].items()}
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    assert accounts == {f"{fullname(name)}-{c}" for c in names}, accounts
    rel = Release(admin, name, namespace, watched, other, scoped, names, objects, settings)
    try:
        admin("apply", "-f", str(tmp_path / "release.yaml"))
        for component in names:
            rel.accounts[component] = token_kubeconfig(
                admin, rel.account(component), namespace, tmp_path / f"{component}.kubeconfig"
            )
        yield rel
    finally:
        # The namespaced objects go with their namespaces; ClusterRoles and bindings do not.
        admin("delete", "-f", str(tmp_path / "release.yaml"), "--ignore-not-found", "--wait=false")
        for ns in (namespace, watched, other):
            admin("delete", "namespace", ns, "--wait=false", check=False)


# -- the components -----------------------------------------------------------------------------


@dataclass
class Components:
    processes: list[Component]
    gateway: Component  # the process serving the gateway
    gateway_url: str
    store_url: str

    def dump(self) -> str:
        """For a failure message: each log's refusals first, then its last lines (without
        the HTTP client's debug lines)."""
        parts = []
        for c in self.processes:
            lines = [ln for ln in c.output().splitlines() if '"logger": "httpcore' not in ln]
            refused = api_errors(c.output())
            parts.append(
                f"--- {c.label} (alive: {c.alive}), refused:\n"
                + "\n".join(refused[:5])
                + "\n... last lines:\n"
                + "\n".join(lines[-15:])
            )
        return "\n".join(parts)


def answers(url: str, component: Component) -> bool:
    component.alive_or_fail()
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def components(
    request: pytest.FixtureRequest, release: Release, google_sim: Simulator, tmp_path: Path
) -> Iterator[Components]:
    """Operator, worker and gateway, each as its own ServiceAccount, on one PostgreSQL store
    (or `calsync run` as the one ServiceAccount of the SQLite shape, on a SQLite file).

    Their environment is the chart's settings ConfigMap (watched namespaces, keyring namespace
    and name, Lease name, scaler), with what a local run has to change on top: listeners on
    127.0.0.1 and free ports, the simulator as Google, the gateway's URL, plain HTTP.
    The worker and the gateway start first and wait for the operator to create the keyring."""
    if release.components == ("run",):
        store = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    else:
        postgres_url: str = request.getfixturevalue("postgres_url")
        store = make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    base = {
        **os.environ,
        **release.settings,
        "CALSYNC_STORE_URL": store,
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_LOG_LEVEL": "DEBUG",
        "CALSYNC_LOG_FORMAT": "json",
        "CALSYNC_METRICS_PORT": "0",
        "CALSYNC_HEALTH_PORT": "0",
        "CALSYNC_GATEWAY_PORT": "0",
        "CALSYNC_GATEWAY_URL": gateway_url,
        "CALSYNC_WEBHOOK_ALLOW_INSECURE": "true",
        "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
        "CALSYNC_SYNC_RETRY_BACKOFF": "0.2",
        "CALSYNC_GOOGLE_API_URL": google_sim.url,
        "CALSYNC_GOOGLE_AUTHORIZE_URL": f"{google_sim.url}/o/oauth2/v2/auth",
        "CALSYNC_GOOGLE_TOKEN_URL": f"{google_sim.url}/token",
    }

    def start(command: str, **extra: str) -> Component:
        kubeconfig = release.accounts[command].kubeconfig
        env = {**base, "KUBECONFIG": str(kubeconfig), **extra}
        env["CALSYNC_WORKER_IDENTITY"] = f"{command}-{uuid.uuid4().hex[:6]}"
        return Component(
            command, command, env["CALSYNC_WORKER_IDENTITY"], env, tmp_path / f"{command}.log"
        )

    started: list[Component] = []
    try:
        health = free_port()
        if release.components == ("run",):
            run = start(
                "run", CALSYNC_HEALTH_PORT=str(health), CALSYNC_GATEWAY_PORT=str(gateway_port)
            )
            started.append(run)
            poll(
                lambda: answers(f"http://127.0.0.1:{health}/healthz", run),
                timeout=90,
                what="run /healthz",
            )
            poll(lambda: answers(f"{gateway_url}/readyz", run), timeout=90, what="run /readyz")
            yield Components([run], run, gateway_url, store)
            return
        # The operator creates the keyring Secret, which the others may only read. Started
        # first, as on a fresh install where any pod may win the race, they wait for it.
        # (With ClusterRoles they may create Secrets everywhere, the keyring included.)
        worker = start("worker")
        started.append(worker)
        gateway = start("gateway", CALSYNC_GATEWAY_PORT=str(gateway_port))
        started.append(gateway)
        for waiting in (worker, gateway) if release.scoped else ():
            poll(
                lambda w=waiting: (
                    w.alive_or_fail()
                    and any("waiting up to" in m and "keyring" in m for m in w.messages())
                ),
                timeout=60,
                what=f"{waiting.label} waiting for the keyring",
            )
        operator = start("operator", CALSYNC_HEALTH_PORT=str(health))
        started.append(operator)
        poll(
            lambda: answers(f"http://127.0.0.1:{health}/healthz", operator),
            timeout=90,
            what="operator /healthz",
        )
        poll(
            lambda: (
                worker.alive_or_fail()
                and any("writes to event store" in m for m in worker.messages())
            ),
            timeout=90,
            what="worker joined its store",
        )
        poll(lambda: answers(f"{gateway_url}/readyz", gateway), timeout=90, what="gateway /readyz")
        yield Components([operator, worker, gateway], gateway, gateway_url, store)
    finally:
        codes = {c.label: c.stop() for c in started}
        assert all(code == 0 for code in codes.values()), codes


# -- cluster objects ----------------------------------------------------------------------------


def google_connection(name: str, email: str) -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": "google",
            "owner": email,
            # No token Secret: the owner consents through the gateway.
            "oauth": {"clientSecretRef": {"name": f"{name}-client"}},
            # Only a notification can explain a sync after the first one.
            "sync": {"push": True, "pollInterval": "24h"},
        },
    }


def google_event(summary: str, start: dt.datetime) -> dict[str, Any]:
    def stamp(when: dt.datetime) -> str:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "summary": summary,
        "start": {"dateTime": stamp(start), "timeZone": "UTC"},
        "end": {"dateTime": stamp(start + dt.timedelta(hours=1)), "timeZone": "UTC"},
    }


def items(kc: Kubectl, kind: str, ns: str, *selector: str) -> list[dict[str, Any]]:
    return list(kc.json("get", kind, "-n", ns, *selector)["items"])


def phase(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def is_true(obj: dict[str, Any], ctype: str) -> bool:
    cond = condition_of(obj, ctype)
    return cond is not None and cond.get("status") == "True"


def subscribed(kc: Kubectl, ns: str, conn: str) -> list[dict[str, Any]] | None:
    """The connection's WebhookSubscriptions once all are Ready, the connection is Subscribed
    and none of its SyncJobs is waiting or running."""
    obj = kc.json("get", f"calconn/{conn}", "-n", ns)
    calendars = (obj.get("status") or {}).get("calendars") or []
    if not calendars or not is_true(obj, "Subscribed"):
        return None
    subs = items(kc, "whsub", ns, "-l", f"calsync.io/connection={conn}")
    if len(subs) != len(calendars) or not all(is_true(s, "Ready") for s in subs):
        return None
    if any(
        phase(j) not in FINISHED for j in items(kc, "sj", ns, "-l", f"calsync.io/connection={conn}")
    ):
        return None
    return subs


# -- 1. the work gets done with the chart's RBAC --------------------------------------------------


@pytest.mark.parametrize("release", [*THREE, "sqlite"], indirect=True)
def test_the_components_sync_caldav_and_push_as_their_service_accounts(
    release: Release,
    components: Components,
    caldav_calendar: CalDAVCalendar,
    google_sim: Simulator,
) -> None:
    kc, ns, store = release.admin, release.watched, components.store_url
    for component, account in release.accounts.items():
        expected = f"system:serviceaccount:{release.namespace}:{release.account(component)}"
        assert whoami(account) == expected

    # CalDAV: polled, credentials from a Secret of the watched namespace.
    wanted = set()
    for i in range(3):
        uid = f"rbac-{i}-{uuid.uuid4().hex[:6]}@rbac.test"
        caldav_calendar.put(
            f"rbac-{i}.ics", vevent(uid, f"rbac event {i}", NOW + dt.timedelta(hours=i))
        )
        wanted.add((uid, f"rbac event {i}"))
    kc.apply(secret_manifest("dav", caldav_calendar.user, caldav_calendar.password), ns)
    kc.apply(connection_manifest("dav", caldav_calendar.url, "dav"), ns)

    # Google: consent through the gateway (which stores the tokens), then push channels
    # registered to the gateway's URL.
    email = f"rbac-{uuid.uuid4().hex[:6]}@example.com"
    google_sim.admin("POST", "users", {"email": email})
    google_sim.admin(
        "POST", f"calendars/{email}/events", google_event("seed", NOW + dt.timedelta(days=1))
    )
    callback = f"{components.gateway_url}/auth/google/callback"
    client = google_sim.admin("POST", "clients", {"redirect_uris": [callback]})
    kc.apply(
        secret("g-client", client_id=client["client_id"], client_secret=client["client_secret"]),
        ns,
    )
    kc.apply(google_connection("g", email), ns)

    def dav_synced() -> bool:
        conn = kc.json("get", "calconn/dav", "-n", ns)
        return is_ready(conn) and stored_pairs(store, conn["metadata"]["uid"]) == wanted

    try:
        poll(dav_synced, timeout=60, interval=0.5, what="the CalDAV connection Ready and stored")
        link = poll(
            lambda: (kc.json("get", "calconn/g", "-n", ns).get("status") or {}).get(
                "authorizationURL"
            ),
            timeout=30,
            what="g's consent link (status.authorizationURL)",
        )
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            page = browser.get(link)  # gateway, provider's consent, gateway's callback
        assert page.status_code == 200, page.text
        assert "consent granted" in components.gateway.messages()
        poll(lambda: subscribed(kc, ns, "g"), timeout=60, interval=0.5, what="g subscribed")
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}\n{components.dump()}")

    # Push: a change in the simulator reaches the store through the gateway.
    before = {j["metadata"]["name"] for j in items(kc, "sj", ns, "-l", "calsync.io/connection=g")}
    key = kc.json("get", "calconn/g", "-n", ns)["metadata"]["uid"]
    marker = f"pushed {uuid.uuid4().hex[:8]}"
    google_sim.admin(
        "POST", f"calendars/{email}/events", google_event(marker, NOW + dt.timedelta(days=2))
    )
    try:
        poll(
            lambda: any(summary == marker for _, summary in stored_pairs(store, key)),
            timeout=45,
            interval=0.5,
            what="the pushed event in the store",
        )
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}\n{components.dump()}")
    new = [
        j
        for j in items(kc, "sj", ns, "-l", "calsync.io/connection=g")
        if j["metadata"]["name"] not in before
    ]
    assert {j["spec"]["reason"] for j in new} == {"webhook"}, [j["spec"] for j in new]

    # The scaler (PostgreSQL shapes) read and wrote the chart's worker Deployment's scale
    # and posted its Event.
    deployment = release.settings.get("CALSYNC_WORKER_DEPLOYMENT")
    if "worker" in release.components:
        assert deployment == release.account("worker")

        def replicas() -> int:
            obj = kc.json("get", f"deployment/{deployment}", "-n", release.namespace)
            return int(obj["spec"]["replicas"])

        poll(lambda: replicas() == 2, timeout=30, what="the worker Deployment scaled up")
        poll(
            lambda: any(e["reason"] == "ScaledUp" for e in items(kc, "events", release.namespace)),
            timeout=30,
            what="a ScaledUp Event on the worker Deployment",
        )

    # Deleting the connections: channels stopped, tokens and store purged, finalizers off.
    dav_key = kc.json("get", "calconn/dav", "-n", ns)["metadata"]["uid"]
    kc("delete", "calconn", "dav", "g", "-n", ns, "--timeout=60s")
    poll(lambda: not items(kc, "whsub", ns), timeout=30, what="the subscriptions gone")
    tokens = token_secret_name("g")
    poll(
        lambda: kc("get", f"secret/{tokens}", "-n", ns, check=False).returncode != 0,
        timeout=30,
        what=f"the token Secret {tokens} gone",
    )
    assert nothing_stored(store, dav_key) and nothing_stored(store, key)

    for process in components.processes:
        assert process.alive, f"{process.label} exited:\n{process.output()[-3000:]}"
        refused = api_errors(after_start(process.output()))
        assert not refused, f"{process.label} was refused:\n" + "\n".join(refused[:10])

    # The leak check, on the chart's settings (JSON logs, here at DEBUG): no token, client
    # secret or password outside the Secrets that hold them.
    issued = google_sim.admin("GET", "tokens/issued")
    secrets = set(issued["access_tokens"]) | set(issued["refresh_tokens"])
    assert secrets, "the consent above should have issued tokens"
    secrets |= {client["client_secret"], caldav_calendar.password}
    places = {f"{p.label} log": p.output() for p in components.processes}
    places["gateway metrics"] = httpx.get(f"{components.gateway_url}/metrics", timeout=10).text
    for kind in ("events", "calconn", "sj", "whsub"):
        places[kind] = json.dumps(kc.json("get", kind, "-n", ns))
    for place, text in places.items():
        leaked = [f"{secret[:6]}..." for secret in secrets if secret in text]
        assert not leaked, f"secrets found in the {place}: {leaked}"


def after_start(log: str) -> str:
    """The log from "calsync starting" on: before it, a worker or gateway that came up first
    was refused the keyring Secret's creation, as it should be, while it waited for it."""
    marker = log.find('"message": "calsync starting"')
    assert marker >= 0, "the component never got past its start-up"
    return log[marker:]


# -- 2. and nothing more ------------------------------------------------------------------------


@pytest.mark.parametrize("release", THREE, indirect=True)
def test_what_the_chart_does_not_grant_is_refused(release: Release) -> None:
    kc, watched, own = release.accounts, release.watched, release.namespace
    keyring = release.settings["CALSYNC_KEYRING_NAME"]
    lease = release.settings["CALSYNC_OPERATOR_LEASE_NAME"]
    for component, account in kc.items():
        # The Secrets of a namespace the chart was not given. With ClusterRoles the operator
        # and worker may list Secrets everywhere (credentials and tokens of any connection);
        # the gateway reads them by name only (OAuth consent), never lists them.
        if release.scoped or component == "gateway":
            done = account("get", "secrets", "-n", release.other, check=False)
            assert done.returncode != 0, f"{component} listed the Secrets of {release.other}"
            assert "forbidden" in done.stderr.lower(), done.stderr
        if release.scoped:
            assert not can_i(account, "get", "secrets", release.other), component
            assert not can_i(account, "list", "secrets"), f"{component}: Secrets cluster-wide"
            assert not can_i(account, "list", "calendarconnections.calsync.io"), component
        # Nobody runs pods, grants rights or creates the users' connections.
        for verb, resource in (
            ("create", "pods"),
            ("create", "rolebindings.rbac.authorization.k8s.io"),
            ("create", "calendarconnections.calsync.io"),
        ):
            assert not can_i(account, verb, resource, watched), (component, verb, resource)
        # In the release namespace (not watched): the keyring Secret by name, no other.
        assert can_i(account, "get", f"secrets/{keyring}", own), component
        if release.scoped:
            assert not can_i(account, "get", "secrets/someone-elses", own), component
            assert not can_i(account, "list", "secrets", own), component
            if component != "operator":
                assert not can_i(account, "update", f"secrets/{keyring}", own), component

    worker, gateway, operator = kc["worker"], kc["gateway"], kc["operator"]
    assert not can_i(worker, "create", "webhooksubscriptions.calsync.io", watched)
    assert not can_i(worker, "delete", "secrets", watched)
    assert not can_i(worker, "create", "leases.coordination.k8s.io", own)
    assert not can_i(gateway, "list", "secrets", watched)
    assert not can_i(gateway, "delete", "secrets", watched)
    assert not can_i(gateway, "delete", "syncjobs.calsync.io", watched)
    assert not can_i(gateway, "create", "webhooksubscriptions.calsync.io", watched)
    assert not can_i(gateway, "update", "deployments.apps", own, subresource="scale")
    # The operator's release-namespace rights name their objects and stay there.
    worker_deployment = release.account("worker")
    assert can_i(
        operator, "update", f"deployments.apps/{worker_deployment}", own, subresource="scale"
    )
    assert not can_i(operator, "update", "deployments.apps/another", own, subresource="scale")
    assert not can_i(operator, "update", "deployments.apps", watched, subresource="scale")
    assert can_i(operator, "update", f"leases.coordination.k8s.io/{lease}", own)
    assert not can_i(operator, "update", "leases.coordination.k8s.io/another", own)
    if release.scoped:
        assert not can_i(operator, "update", "secrets/someone-elses", own)


# -- 3. rights the code uses on paths the scenario does not reach ---------------------------------

# (component, verb, resource in the watched namespace, where the code uses it). These paths
# run after a conflicting write or on rare objects, so the scenario cannot be relied on to
# reach them; the API server is asked instead. Both RBAC shapes render the same rule lists
# (_helpers.tpl), so the namespaced shape answers for both.
OFF_SCENARIO = [
    ("worker", "get", "syncjobs.calsync.io", "worker/reporting.py: re-read after a 409"),
    ("worker", "update", "secrets", "tokens.py TokenVault.save: a refreshed token, replaced"),
    ("gateway", "get", "syncjobs.calsync.io", "webhook_gateway/recorder.py: after 409/exists"),
    ("gateway", "get", "webhooksubscriptions.calsync.io", "webhook_gateway/counters.py: 409"),
    ("gateway", "get", "calendarconnections.calsync.io", "webhook_gateway/push.py: no owner"),
    ("operator", "get", "webhooksubscriptions.calsync.io", "controllers/subscriptions.py"),
    ("operator", "list", "secrets", "tokens.py list_token_secrets: key rotation"),
    ("operator", "update", "secrets", "tokens.py _reencrypt_one: key rotation"),
    ("operator", "delete", "secrets", "tokens.py TokenVault.delete: a deleted connection"),
]


@pytest.mark.parametrize("release", ["namespaced"], indirect=True)
def test_rights_used_off_the_scenario_are_granted(release: Release) -> None:
    missing = [
        (component, verb, resource, where)
        for component, verb, resource, where in OFF_SCENARIO
        if not can_i(release.accounts[component], verb, resource, release.watched)
    ]
    assert not missing, missing
