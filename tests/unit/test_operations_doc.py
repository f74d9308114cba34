"""docs/operations.md keeps up with the chart: every setting value is in its table, with the
chart's default, and every section the contents list links to exists."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support import ROOT

pytestmark = pytest.mark.unit

DOC = (ROOT / "docs" / "operations.md").read_text()
VALUES = yaml.safe_load((ROOT / "charts" / "calsync" / "values.yaml").read_text())


def _env(key: str) -> str:
    return "CALSYNC_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


@pytest.mark.parametrize("key", sorted(VALUES["settings"]))
def test_every_setting_value_is_in_the_settings_table_with_its_default(key: str) -> None:
    value = VALUES["settings"][key]
    default = str(value).lower() if isinstance(value, bool) else str(value)
    row = f"| `{key}` | `{_env(key)}` | `{default}` |"
    assert row in DOC, f"docs/operations.md lacks the row {row}"


def test_the_contents_link_to_sections_that_exist() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#{2,3} (.+)$", DOC, flags=re.MULTILINE)
    }
    links = re.findall(r"\]\(#([a-z0-9-]+)\)", DOC)
    assert links
    assert not [link for link in links if link not in anchors]


def test_seed_settings_not_carried_over_are_named_and_still_absent() -> None:
    """The audit and webhook log retentions of the seed are listed with a reason, and the reason
    still holds: no setting, chart value or event store table keeps such logs."""
    from calsync.settings import Settings
    from calsync.store.schema import metadata

    section = DOC.split("\n### Seed settings not carried over\n", 1)[1].split("\n## ", 1)[0]
    assert "`AUDIT_LOG_RETENTION`, 90 d" in section
    assert "**Webhook log retention** (7 d)" in section
    names = [*Settings.model_fields, *VALUES["settings"], *metadata.tables]
    assert not [n for n in names if re.search(r"audit|retention|log_?s?$|webhook_?log", n, re.I)]
