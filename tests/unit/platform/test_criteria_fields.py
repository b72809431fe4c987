"""The criterion → referral field table that information requests are made of."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.eligibility.rules import EVALUATORS
from shared.criteria_fields import CRITERION_FIELDS, settling_fields
from shared.referral import EXAMPLE_REFERRAL

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_every_criterion_eligibility_decides_has_its_settling_fields() -> None:
    assert set(CRITERION_FIELDS) == set(EVALUATORS)


def test_every_json_path_is_a_field_of_the_referral_and_documented() -> None:
    referral_doc = (DOCS / "referral.md").read_text()
    fhir_doc = (DOCS / "fhir.md").read_text()
    for fields in CRITERION_FIELDS.values():
        for field in fields:
            node: object = EXAMPLE_REFERRAL
            for part in field.json_path.split("."):
                assert isinstance(node, dict) and part in node, field.json_path
                node = node[part]
            leaf = field.json_path.rsplit(".", 1)[-1]
            assert leaf in referral_doc, f"{field.json_path} not in docs/referral.md"
            assert field.json_path.removeprefix("clinical.").split(".")[0] in fhir_doc


def test_the_fields_asked_for_are_the_missing_ones_or_all_when_none_is() -> None:
    absent = settling_fields("donor_strategy", {"clinical": {"donor_identified": True}})
    assert [f.json_path for f in absent] == ["clinical.transplant_strategy_defined"]
    given = settling_fields("cd123_positive", {"clinical": {"cd123": {"positive": True, "method": "other"}}})
    assert [f.json_path for f in given] == ["clinical.cd123.positive", "clinical.cd123.method"]
    assert [f.fhir for f in settling_fields("ecog", {"clinical": {}})] == [
        "Observation[LOINC 89247-1].valueInteger"
    ]
