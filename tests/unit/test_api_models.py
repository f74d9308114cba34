"""The API models parse what users write, refuse what the API server would refuse, and
serialise back to the exact wire form (camelCase, odd casings, UTC timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from calsync.api import (
    API_VERSION,
    CALENDAR_CONNECTION,
    KINDS,
    SYNC_JOB,
    WEBHOOK_SUBSCRIPTION,
    CalendarConnection,
    CalendarConnectionSpec,
    CalendarConnectionStatus,
    SyncJob,
    SyncJobSpec,
    SyncJobStatus,
    WebhookSubscriptionSpec,
    WebhookSubscriptionStatus,
    format_duration,
    parse_duration,
)
from calsync.api.meta import format_timestamp

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def caldav_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": "caldav",
        "caldav": {
            "url": "https://cloud.example.com/",
            "credentialsSecretRef": {"name": "alice-caldav"},
        },
    }
    spec.update(overrides)
    return spec


def test_kind_names() -> None:
    assert API_VERSION == "calsync.io/v1alpha1"
    assert [k.kind for k in KINDS] == ["CalendarConnection", "WebhookSubscription", "SyncJob"]
    assert CALENDAR_CONNECTION.short_names == ("calconn",)
    assert WEBHOOK_SUBSCRIPTION.short_names == ("whsub",)
    assert SYNC_JOB.crd_name == "syncjobs.calsync.io"
    assert SYNC_JOB.list_kind == "SyncJobList"


def test_connection_spec_round_trip_fills_defaults() -> None:
    wire = {
        "provider": "caldav",
        "owner": "alice@example.com",
        "caldav": {
            "url": "http://127.0.0.1:5232/",
            "allowInsecureHTTP": True,
            "credentialsSecretRef": {"name": "alice-caldav"},
        },
        "calendars": {"include": ["work"], "exclude": []},
        "sync": {"pollInterval": "1h30m", "push": False, "window": {"pastDays": 30}},
    }
    spec = CalendarConnectionSpec.model_validate(wire)
    assert spec.caldav is not None
    assert spec.caldav.allow_insecure_http is True
    assert spec.sync.poll_interval_seconds == 5400
    assert spec.to_wire() == {
        **wire,
        "sync": {
            "pollInterval": "1h30m",
            "push": False,
            "window": {"pastDays": 30, "futureDays": 730},
        },
        "suspend": False,
    }


def test_wire_names_keep_their_exact_casing() -> None:
    spec = CalendarConnectionSpec.model_validate(caldav_spec())
    assert "allowInsecureHTTP" in spec.to_wire()["caldav"]
    status = CalendarConnectionStatus(authorization_url="https://gw.example.com/auth/google")
    assert status.to_wire()["authorizationURL"] == "https://gw.example.com/auth/google"
    assert CalendarConnectionStatus.model_validate(status.to_wire()) == status


def test_models_accept_python_names_too() -> None:
    spec = SyncJobSpec(connection="demo", calendar_id="primary", ttl_seconds_after_finished=0)
    assert spec.to_wire() == {
        "connection": "demo",
        "calendarId": "primary",
        "reason": "manual",
        "mode": "incremental",
        "ttlSecondsAfterFinished": 0,
    }


def test_minimal_specs_get_documented_defaults() -> None:
    spec = CalendarConnectionSpec.model_validate(
        {"provider": "google", "oauth": {"clientSecretRef": {"name": "google-oauth-client"}}}
    )
    assert spec.sync.poll_interval is None  # the operator's CALDAV_POLL_INTERVAL applies
    assert spec.sync.push is True
    assert (spec.sync.window.past_days, spec.sync.window.future_days) == (365, 730)
    assert spec.calendars.include == [] and spec.calendars.exclude == []
    assert spec.suspend is False
    job = SyncJobSpec.model_validate({"connection": "demo"})
    assert (job.calendar_id, job.reason, job.mode) == ("", "manual", "incremental")
    assert job.ttl_seconds_after_finished == 3600


def test_icloud_url_defaults_to_apple() -> None:
    spec = CalendarConnectionSpec.model_validate(
        {"provider": "icloud", "caldav": {"credentialsSecretRef": {"name": "carol"}}}
    )
    assert spec.caldav_url == "https://caldav.icloud.com/"
    assert CalendarConnectionSpec.model_validate(caldav_spec()).caldav_url == (
        "https://cloud.example.com/"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (caldav_spec(pollInterval="5m"), "Extra inputs are not permitted"),
        (caldav_spec(sync={"pollIntervall": "5m"}), "Extra inputs are not permitted"),
        (caldav_spec(provider="exchange"), "'google', 'microsoft', 'caldav' or 'icloud'"),
        (
            caldav_spec(caldav={"credentialsSecretRef": {"name": "x"}}),
            "spec.caldav.url or spec.caldav.domain is required when provider is caldav",
        ),
        (
            {"provider": "icloud"},
            "spec.caldav.credentialsSecretRef is required when provider is caldav or icloud",
        ),
        (
            {"provider": "caldav", "caldav": {"url": "https://x.example/"}},
            "credentialsSecretRef\n  Field required",
        ),
        (
            {"provider": "microsoft"},
            "spec.oauth.clientSecretRef is required when provider is google or microsoft",
        ),
        (
            caldav_spec(oauth={"clientSecretRef": {"name": "g"}}),
            "spec.oauth is only valid when provider is google or microsoft",
        ),
        (
            {
                "provider": "google",
                "oauth": {"clientSecretRef": {"name": "g"}},
                "caldav": {"credentialsSecretRef": {"name": "x"}},
            },
            "spec.caldav is only valid when provider is caldav or icloud",
        ),
        (
            caldav_spec(caldav={"url": "http://x.example/", "credentialsSecretRef": {"name": "x"}}),
            "spec.caldav.url must use https:// unless spec.caldav.allowInsecureHTTP is true",
        ),
        (
            caldav_spec(
                caldav={
                    "url": "ftp://x.example/",
                    "allowInsecureHTTP": True,
                    "credentialsSecretRef": {"name": "x"},
                }
            ),
            "spec.caldav.url is not a usable server URL",
        ),
        (caldav_spec(sync={"pollInterval": "30s"}), "spec.sync.pollInterval must be at least 1m"),
        (
            caldav_spec(sync={"pollInterval": "15 minutes"}),
            "spec.sync.pollInterval must be a duration like 15m or 1h30m",
        ),
        (caldav_spec(sync={"window": {"pastDays": 3651}}), "less than or equal to 3650"),
        (caldav_spec(sync={"window": {"futureDays": -1}}), "greater than or equal to 0"),
        (
            caldav_spec(
                caldav={"url": "https://x.example/", "credentialsSecretRef": {"name": "Bad_Name"}}
            ),
            "String should match pattern",
        ),
        (caldav_spec(owner="x" * 254), "at most 253 characters"),
        (
            caldav_spec(
                caldav={"url": "https://x/" + "a" * 2048, "credentialsSecretRef": {"name": "x"}}
            ),
            "at most 2048 characters",
        ),
    ],
)
def test_invalid_connection_specs_are_rejected(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CalendarConnectionSpec.model_validate(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"connection": "demo", "mode": "partial"},
        {"connection": "demo", "reason": "cron"},
        {"connection": "demo", "ttlSecondsAfterFinished": -1},
        {"connection": "Demo"},
        {"connection": "demo", "calendarID": "x"},
    ],
)
def test_invalid_syncjob_specs_are_rejected(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SyncJobSpec.model_validate(spec)


def test_subscription_spec_needs_a_push_provider_and_a_calendar() -> None:
    ok = WebhookSubscriptionSpec.model_validate(
        {"connection": "alice", "calendarId": "primary", "provider": "google"}
    )
    assert ok.to_wire() == {"connection": "alice", "calendarId": "primary", "provider": "google"}
    for bad in (
        {"connection": "alice", "calendarId": "primary", "provider": "caldav"},
        {"connection": "alice", "calendarId": "", "provider": "google"},
    ):
        with pytest.raises(ValidationError):
            WebhookSubscriptionSpec.model_validate(bad)


def test_timestamps_are_utc_with_a_z_suffix() -> None:
    berlin = timezone(timedelta(hours=2))
    status = SyncJobStatus(
        started_at=datetime(2026, 5, 1, 12, 0, 0, tzinfo=berlin),
        completed_at=datetime(2026, 5, 1, 10, 0, 1, 500000),
    )
    wire = status.to_wire()
    assert wire["startedAt"] == "2026-05-01T10:00:00Z"
    assert wire["completedAt"] == "2026-05-01T10:00:01.500000Z"
    assert status.started_at is not None and status.started_at.tzinfo is UTC
    parsed = SyncJobStatus.model_validate({"leaseExpiresAt": "2026-05-01T10:00:00Z"})
    assert parsed.lease_expires_at == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"


def test_status_round_trip_and_tolerance_of_unknown_fields() -> None:
    wire = {
        "channelId": "calsync-3f2a",
        "resourceId": "r-1",
        "expiration": "2026-05-08T10:00:00Z",
        "nextRenewalTime": "2026-05-07T10:00:00Z",
        "notificationsReceived": 12,
        "lastNotificationTime": "2026-05-01T09:59:00Z",
        "channelGeneration": 2,
        "previousChannelId": "calsync-3f2a-1",
        "lifecycleEvents": [{"event": "missed", "receivedAt": "2026-05-01T09:58:00Z"}],
        "consecutiveFailures": 0,
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Subscribed",
                "message": "",
                "lastTransitionTime": "2026-05-01T09:00:00Z",
            }
        ],
    }
    status = WebhookSubscriptionStatus.model_validate({**wire, "addedByANewerOperator": 1})
    assert status.to_wire() == wire


def test_syncjob_status_defaults_and_phases() -> None:
    status = SyncJobStatus()
    assert status.phase == "Pending" and not status.finished
    assert status.to_wire() == {
        "phase": "Pending",
        "attempts": 0,
        "counts": {"fetched": 0, "upserted": 0, "deleted": 0},
        "conditions": [],
    }
    assert SyncJobStatus(phase="Superseded").finished
    with pytest.raises(ValidationError):
        SyncJobStatus.model_validate({"phase": "Done"})


def test_whole_objects_parse_with_status() -> None:
    obj = {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "SyncJob",
        "metadata": {"name": "j", "namespace": "team-a", "generation": 1},
        "spec": {"connection": "alice"},
        "status": {"phase": "Running", "attempts": 1, "claimedBy": "worker-0"},
    }
    job = SyncJob.model_validate(obj)
    assert job.status is not None and job.status.claimed_by == "worker-0"
    assert job.to_wire()["apiVersion"] == API_VERSION
    with pytest.raises(ValidationError):
        CalendarConnection.model_validate({**obj, "kind": "SyncJob", "spec": caldav_spec()})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 900),
        ("1h30m", 5400),
        ("90s", 90),
        ("2h", 7200),
        ("1.5h", 5400),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("0s", 0),
        ("1h0m0s", 3600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "15 m", "-5m", "1d", "1.h", "PT15M", "15M"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 5400, 3661)] == [
        "0s",
        "59s",
        "1m",
        "1h30m",
        "1h1m1s",
    ]
    assert parse_duration(format_duration(86400)) == 86400
    with pytest.raises(ValueError):
        format_duration(1.5)


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                documents.append((path.name, document))
    return documents


def test_examples_exist() -> None:
    names = {path.name for path in EXAMPLES.glob("*.yaml")}
    assert {
        "caldav-demo.yaml",
        "google.yaml",
        "microsoft.yaml",
        "icloud.yaml",
        "syncjob-manual.yaml",
    } <= names


@pytest.mark.parametrize(
    ("file", "document"),
    [(f, d) for f, d in _example_documents() if d["kind"] in ("CalendarConnection", "SyncJob")],
    ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"],
)
def test_examples_parse(file: str, document: dict[str, Any]) -> None:
    model = CalendarConnection if document["kind"] == "CalendarConnection" else SyncJob
    parsed = model.model_validate(document)
    assert "namespace" not in parsed.metadata, "examples stay namespace-free for kubectl -n"
    if isinstance(parsed, CalendarConnection):
        secrets = {d["metadata"]["name"] for f, d in _example_documents() if d["kind"] == "Secret"}
        spec = parsed.spec
        refs = [spec.caldav.credentials_secret_ref] if spec.caldav else []
        refs += [spec.oauth.client_secret_ref] if spec.oauth else []
        assert refs and all(ref.name in secrets for ref in refs), f"{file}: Secret missing"
