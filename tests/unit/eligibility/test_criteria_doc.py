"""docs/trial/criteria.md documents every criterion the packaged rule set decides, under its id."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.eligibility.rules import available_versions, load_ruleset

pytestmark = pytest.mark.unit

CRITERIA_DOC = Path(__file__).resolve().parents[3] / "docs" / "trial" / "criteria.md"


@pytest.mark.parametrize("version", available_versions())
def test_every_criterion_id_of_the_rule_set_is_in_the_criteria_doc(version: str) -> None:
    text = CRITERIA_DOC.read_text(encoding="utf-8")
    ruleset = load_ruleset(version)
    undocumented = [c.id for c in ruleset.criteria if f"`{c.id}`" not in text]
    assert not undocumented, f"docs/trial/criteria.md does not document {undocumented} of {version}"
    assert f"`{version}`" in text
