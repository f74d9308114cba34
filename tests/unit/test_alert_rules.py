"""The alert rules the chart ships (charts/calsync/files/alerts.yaml) pass `promtool check rules`,
and `promtool test rules` runs their unit tests (tests/prometheus/alerts_test.yaml), which must
cover every alert. promtool comes from Debian's `prometheus` package (.ci/run installs it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support import ROOT

pytestmark = pytest.mark.unit

RULES = ROOT / "charts/calsync/files/alerts.yaml"
TESTS = ROOT / "tests/prometheus/alerts_test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not on PATH: install Debian's `prometheus` package (.ci/run does)")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_both_ways() -> None:
    """Each alert has a case where it fires and one where it must not."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) <= fires
    assert set(alerts()) <= quiet


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    runbook = "https://github.com/calsync/calsync/blob/main/docs/operations.md#"
    operations = (ROOT / "docs/operations.md").read_text()
    for name, rule in alerts().items():
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in ("critical", "warning"), name
        assert isinstance(annotations, dict)
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == runbook + name.lower(), name
        assert f"### {name}\n" in operations, f"docs/operations.md has no runbook for {name}"


# The seed's alerting configuration (deployment guide, "Alerting Configuration"): the threshold
# each alert ends in and how long it must hold. The queue alert's seed condition has no duration;
# its `for` is calsync's and its runbook says why.
SEED = {
    "CalsyncWebhookErrorRate": ("> 0.10", "10m"),  # webhook error rate > 10% for 10 minutes
    "CalsyncProviderErrorRate": ("> 0.50", "5m"),  # provider API error rate > 50% for 5 minutes
    "CalsyncSyncSuccessRateLow": ("< 0.95", "1h"),  # provider sync success rate < 95% for 1 hour
    "CalsyncSyncQueueBacklog": ("> 1000", None),  # sync queue depth > 1000 jobs
}


@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_thresholds_and_durations_are_kept(name: str) -> None:
    threshold, duration = SEED[name]
    rule = alerts()[name]
    assert str(rule["expr"]).strip().endswith(threshold), rule["expr"]
    if duration is not None:
        assert rule["for"] == duration
    else:
        operations = (ROOT / "docs/operations.md").read_text()
        runbook = operations.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"`for: {rule['for']}` is calsync's" in runbook
