"""Operator settings: seed defaults, `CALSYNC_*` variables, flags on top, and errors that say
which setting was wrong and where its value came from."""

from __future__ import annotations

from typing import Any

import pytest

from calsync.settings import Settings, SettingsError, env_name, load_settings

pytestmark = pytest.mark.unit

DAY = 86400.0


def test_seed_defaults() -> None:
    s = load_settings(environ={})
    assert s.sync_concurrency == 10
    assert s.sync_max_retries == 5
    assert s.sync_job_timeout == 600.0
    assert s.sync_batch_size == 100
    assert s.caldav_poll_interval == 900.0
    assert s.webhook_renewal_before_expiry == 86400.0
    assert s.webhook_timeout == 30.0
    assert s.google_rate_limit == 1000
    assert s.microsoft_rate_limit == 10_000
    assert s.caldav_rate_limit == 100
    assert s.scale_up_queue_depth == 500
    assert s.queue_cap == 5000
    assert s.key_rotation_interval == 90 * DAY
    # Kept in etcd, 30 days of SyncJobs would be millions of objects: one hour (decision 0010).
    assert s.syncjob_history == 3600.0
    assert s.purge_timeout == 300.0
    assert s.operator_concurrency == 8
    assert s.webhook_rate_limit == 1000
    assert s.webhook_renewal_before_expiry == DAY
    assert s.push_poll_interval == 3600.0
    assert s.webhook_allow_insecure is False


def test_scope_and_listener_defaults() -> None:
    s = load_settings(environ={})
    assert s.namespaces == ()
    assert s.log_level == "INFO"
    assert s.log_format == "auto"
    assert s.metrics_port == 9090
    assert s.health_port == 8081


def test_defaults_equal_the_model_defaults() -> None:
    assert load_settings(environ={}) == Settings()


def test_env_name() -> None:
    assert env_name("sync_job_timeout") == "CALSYNC_SYNC_JOB_TIMEOUT"


def test_reads_os_environ_when_no_environ_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALSYNC_SYNC_CONCURRENCY", "17")
    assert load_settings().sync_concurrency == 17


# -- environment ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("24h", 86400.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("90s", 90.0),
        ("3600", 3600.0),
        ("7200.5", 7200.5),
        (" 2h ", 7200.0),
    ],
)
def test_durations_from_env(value: str, seconds: float) -> None:
    s = load_settings(environ={"CALSYNC_WEBHOOK_RENEWAL_BEFORE_EXPIRY": value})
    assert s.webhook_renewal_before_expiry == seconds


def test_every_duration_field_parses_go_durations() -> None:
    fields = [
        "sync_job_timeout",
        "caldav_poll_interval",
        "syncjob_history",
        "webhook_timeout",
        "webhook_renewal_before_expiry",
        "push_poll_interval",
        "key_rotation_interval",
        "purge_timeout",
    ]
    s = load_settings(environ={env_name(f): "2h" for f in fields})
    for field in fields:
        assert getattr(s, field) == 7200.0, field


def test_integers_from_env() -> None:
    s = load_settings(
        environ={
            "CALSYNC_SYNC_CONCURRENCY": "20",
            "CALSYNC_QUEUE_CAP": "9000",
            "CALSYNC_METRICS_PORT": "0",
        }
    )
    assert (s.sync_concurrency, s.queue_cap, s.metrics_port) == (20, 9000, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("team-a", ("team-a",)),
        ("team-a,team-b", ("team-a", "team-b")),
        (" team-a , team-b ,, ", ("team-a", "team-b")),
        ("", ()),
        (" , ", ()),
    ],
)
def test_namespaces_from_env(value: str, expected: tuple[str, ...]) -> None:
    assert load_settings(environ={"CALSYNC_NAMESPACES": value}).namespaces == expected


def test_log_level_is_case_insensitive() -> None:
    assert load_settings(environ={"CALSYNC_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_unrelated_variables_are_ignored() -> None:
    s = load_settings(environ={"CALSYNC_NO_SUCH_SETTING": "x", "SYNC_CONCURRENCY": "99"})
    assert s == Settings()


# -- overrides -----------------------------------------------------------------------------------


def test_overrides_beat_env() -> None:
    s = load_settings(
        {"sync_concurrency": 3, "caldav_poll_interval": "2h"},
        environ={"CALSYNC_SYNC_CONCURRENCY": "20", "CALSYNC_CALDAV_POLL_INTERVAL": "30m"},
    )
    assert s.sync_concurrency == 3
    assert s.caldav_poll_interval == 7200.0


def test_env_survives_where_no_override_is_given() -> None:
    s = load_settings({"queue_cap": 10}, environ={"CALSYNC_SYNC_CONCURRENCY": "20"})
    assert s.sync_concurrency == 20
    assert s.queue_cap == 10


def test_none_overrides_are_ignored() -> None:
    s = load_settings(
        {"sync_concurrency": None, "namespaces": None, "log_level": None},
        environ={"CALSYNC_SYNC_CONCURRENCY": "20"},
    )
    assert s.sync_concurrency == 20
    assert s.namespaces == ()
    assert s.log_level == "INFO"


def test_override_namespaces_as_list_or_string() -> None:
    assert load_settings({"namespaces": ["a", "b"]}, environ={}).namespaces == ("a", "b")
    assert load_settings({"namespaces": "a,b"}, environ={}).namespaces == ("a", "b")


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(ValueError, match="frozen"):
        s.sync_concurrency = 2  # type: ignore[misc]


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sync_concurrency", "many"),
        ("sync_concurrency", "0"),
        ("sync_job_timeout", "10 minutes"),
        ("sync_job_timeout", "0"),
        ("caldav_poll_interval", "30s"),  # below the 60 s floor
        ("metrics_port", "70000"),
        ("log_level", "chatty"),
        ("log_format", "xml"),
        ("key_rotation_interval", "-1"),
    ],
)
def test_bad_env_value_names_field_and_variable(field: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={env_name(field): value})
    message = str(info.value)
    assert field in message
    assert f"environment variable {env_name(field)}" in message


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("sync_concurrency", 0, "--sync-concurrency"),
        ("sync_batch_size", 10_001, "--sync-batch-size"),
        ("webhook_timeout", "soon", "--webhook-timeout"),
        ("health_port", -1, "--health-port"),
    ],
)
def test_bad_override_names_field_and_flag(field: str, value: Any, flag: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({field: value}, environ={})
    message = str(info.value)
    assert field in message
    assert flag in message
    assert "environment variable" not in message


def test_bad_override_blames_the_flag_even_when_env_is_set() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"sync_concurrency": 0}, environ={"CALSYNC_SYNC_CONCURRENCY": "4"})
    assert "--sync-concurrency" in str(info.value)
    assert "CALSYNC_SYNC_CONCURRENCY" not in str(info.value)


def test_every_problem_is_reported() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {"queue_cap": 0},
            environ={"CALSYNC_SYNC_CONCURRENCY": "x", "CALSYNC_WEBHOOK_TIMEOUT": "never"},
        )
    message = str(info.value)
    for text in (
        "queue_cap (from --queue-cap)",
        "sync_concurrency (from environment variable CALSYNC_SYNC_CONCURRENCY)",
        "webhook_timeout (from environment variable CALSYNC_WEBHOOK_TIMEOUT)",
    ):
        assert text in message


def test_duration_error_explains_the_expected_form() -> None:
    with pytest.raises(SettingsError, match=r"invalid duration '10 minutes'"):
        load_settings(environ={"CALSYNC_PURGE_TIMEOUT": "10 minutes"})


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"sync_concurency": 3}, environ={})
    message = str(info.value)
    assert "sync_concurency" in message
    assert "--sync-concurency" in message


def test_unknown_fields_are_rejected_by_the_model() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_infinite_durations_are_refused() -> None:
    with pytest.raises(SettingsError, match="sync_job_timeout"):
        load_settings(environ={"CALSYNC_SYNC_JOB_TIMEOUT": "inf"})


def test_settings_without_an_effect_are_gone() -> None:
    with pytest.raises(SettingsError, match="audit_retention"):
        load_settings({"audit_retention": "90d"})
