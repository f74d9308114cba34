"""CalDAV DNS SRV discovery (RFC 6764, docs/decisions/0015) as a user meets it: a connection
names a domain instead of a URL, `calsync run` asks DNS (the session's responder on 127.0.0.1,
`CALSYNC_DNS_NAMESERVERS`), and the calendar of a real Radicale is mirrored; the connection says
where DNS led. A domain without records, and an SRV target the Secret's allowed host does not
name, end in a clear message (Ready and Synced False, reason SyncFailed, as any failed sync; the
SyncJob's Failed condition carries the specific reason) and no sync."""

from __future__ import annotations

import time
from typing import Any

import pytest

from calsync.testing.dns import DnsResponder
from calsync.testing.radicale import put_event
from tests.fixtures.manifests import caldav_connection, secret
from tests.fixtures.radicale import CalDAVCalendar
from tests.support import Kubectl, Process, poll, ready_reason

pytestmark = pytest.mark.e2e

EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//calsync tests//EN
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20260101T000000Z
DTSTART:{start}
DURATION:PT1H
SUMMARY:{summary}
END:VEVENT
END:VCALENDAR
"""


def dav_secret(name: str, user: str, password: str, allowed_host: str | None) -> dict[str, Any]:
    annotations = {"calsync.io/allowed-host": allowed_host} if allowed_host else None
    return secret(name, annotations=annotations, username=user, password=password)


def job_failure(kubectl: Kubectl, namespace: str, connection_name: str) -> dict[str, Any]:
    """The Failed condition of the connection's (one) SyncJob."""

    def check() -> dict[str, Any] | None:
        for job in kubectl.json("get", "sj", "-n", namespace)["items"]:
            if job["spec"]["connection"] != connection_name:
                continue
            for cond in (job.get("status") or {}).get("conditions", []):
                if cond["type"] == "Failed" and cond["status"] == "True":
                    return dict(cond)
        return None

    return dict(poll(check, timeout=60, what=f"a Failed SyncJob of {connection_name}"))


def test_a_connection_by_domain_syncs_the_calendar_dns_names(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    dns_responder: DnsResponder,
    caldav_calendar: CalDAVCalendar,
) -> None:
    domain = f"{namespace}.test"
    port = caldav_calendar.server.port
    dns_responder.add(f"_caldav._tcp.{domain}", "SRV", f"0 1 {port} localhost.")
    dns_responder.add(f"_caldav._tcp.{domain}", "TXT", f'"path=/{caldav_calendar.user}/"')
    start = time.strftime("%Y%m%dT100000Z", time.gmtime(time.time() + 86400))
    put_event(
        caldav_calendar.url,
        "dns-1.ics",
        EVENT.format(uid="dns-1@test", start=start, summary="found through DNS"),
        caldav_calendar.auth,
    )
    kubectl.apply(
        dav_secret("dav", caldav_calendar.user, caldav_calendar.password, allowed_host="localhost"),
        namespace,
    )
    kubectl.apply(caldav_connection("by-domain", None, "dav", domain=domain), namespace)

    ready = ready_reason(kubectl, namespace, "by-domain", "Synced")
    assert ready["status"] == "True"
    expected = f"http://localhost:{port}/{caldav_calendar.user}/"
    assert f"_caldav._tcp.{domain}" in ready["message"] and expected in ready["message"], ready
    # The TXT path names the user's principal: every calendar of the user is mirrored (other
    # tests of the session leave theirs), this test's among them with its one event.
    status = kubectl.json("get", "calconn/by-domain", "-n", namespace)["status"]
    calendars = {c["id"]: c for c in status["calendars"]}
    assert calendars[caldav_calendar.path].get("events") == 1, status["calendars"]
    assert f"spec.caldav.domain {domain}: _caldav._tcp.{domain} SRV" in operator.output()
    # TLS first: _caldavs._tcp was asked before the plain-HTTP record.
    asked = [name for name, rdtype in dns_responder.queries if rdtype == "SRV"]
    assert asked.index(f"_caldavs._tcp.{domain}.") < asked.index(f"_caldav._tcp.{domain}.")


def test_a_domain_without_records_says_so_and_nothing_syncs(
    kubectl: Kubectl, namespace: str, operator: Process
) -> None:
    domain = f"{namespace}-nothing.test"
    kubectl.apply(dav_secret("dav", "alice", "irrelevant", allowed_host=None), namespace)
    kubectl.apply(caldav_connection("nowhere", None, "dav", domain=domain), namespace)

    ready = ready_reason(kubectl, namespace, "nowhere", "SyncFailed")
    assert ready["status"] == "False"
    assert f"no CalDAV server found for {domain}" in ready["message"], ready
    assert f"_caldavs._tcp.{domain} has no SRV record" in ready["message"], ready
    assert job_failure(kubectl, namespace, "nowhere")["reason"] == "DNSDiscoveryFailed"
    status = kubectl.json("get", "calconn/nowhere", "-n", namespace)["status"]
    assert not status.get("eventCount")


def test_the_allowed_host_is_judged_on_the_srv_target(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    dns_responder: DnsResponder,
    caldav_calendar: CalDAVCalendar,
) -> None:
    domain = f"{namespace}.test"
    port = caldav_calendar.server.port
    dns_responder.add(f"_caldav._tcp.{domain}", "SRV", f"0 1 {port} localhost.")
    # The Secret allows the domain itself, but DNS sends the credentials to another host.
    kubectl.apply(
        dav_secret("dav", caldav_calendar.user, caldav_calendar.password, allowed_host=domain),
        namespace,
    )
    kubectl.apply(caldav_connection("elsewhere", None, "dav", domain=domain), namespace)

    ready = ready_reason(kubectl, namespace, "elsewhere", "SyncFailed")
    assert ready["status"] == "False"
    assert job_failure(kubectl, namespace, "elsewhere")["reason"] == "CredentialsHostMismatch"
    assert f"_caldav._tcp.{domain}" in ready["message"] and "'localhost'" in ready["message"]
    assert caldav_calendar.password not in ready["message"]
    assert not kubectl.json("get", "calconn/elsewhere", "-n", namespace)["status"].get("eventCount")
