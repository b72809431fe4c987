"""The service's pure parts: the input hash, event translation, study settings and the public rules."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from services.eligibility.commands import screened_event, screening_input
from services.eligibility.config import EligibilitySettings
from services.eligibility.domain import StudySettings, assess, input_hash
from services.eligibility.rules import load_ruleset
from services.eligibility.schemas import RulesetPublic
from shared.events import ReferralSubmitted
from shared.handlers import PoisonMessage
from shared.referral import EXAMPLE_REFERRAL as EXAMPLE
from shared.referral import ClinicalData, ScreeningInput
from tests.support import builders
from tests.support.builders import DAY, submitted

pytestmark = pytest.mark.unit


def snapshot(**clinical: Any) -> ReferralSubmitted:
    data = submitted(clinical=builders.clinical(**clinical))
    assert isinstance(data, ReferralSubmitted)
    return data


# --- input hash -----------------------------------------------------------------------------------


def _input(clinical: dict[str, Any]) -> ScreeningInput:
    return ScreeningInput(age_years=58, clinical=ClinicalData.model_validate(clinical), referral_day=DAY)


def test_the_hash_ignores_key_order_and_absent_versus_null() -> None:
    base = screening_input(snapshot())
    shuffled = dict(reversed(list(EXAMPLE["clinical"].items())))
    with_null = {**EXAMPLE["clinical"], "cns_leukemia": None}
    without = {k: v for k, v in EXAMPLE["clinical"].items() if k != "cns_leukemia"}
    assert input_hash(base) == input_hash(_input(shuffled))
    assert input_hash(_input(with_null)) == input_hash(_input(without)) != input_hash(base)
    assert len(input_hash(base)) == 64


@pytest.mark.parametrize(
    "change",
    [{"age_years": 59}, {"referral_day": date(2026, 11, 11)}, {"clinical": ClinicalData(ecog=0)}],
)
def test_the_hash_changes_with_any_fact(change: dict[str, Any]) -> None:
    base = screening_input(snapshot())
    assert input_hash(base.model_copy(update=change)) != input_hash(base)


# --- translation ----------------------------------------------------------------------------------


def test_a_snapshot_becomes_the_engine_input() -> None:
    inp = screening_input(snapshot())
    assert (inp.age_years, inp.referral_day, inp.clinical.ecog) == (58, DAY, 1)


@pytest.mark.parametrize(
    ("clinical", "field"),
    [
        ({"ecog": "high"}, "clinical.ecog"),
        ({"ecog": "1"}, "clinical.ecog"),
        ({"organ_function": {"assessed_on": "2026-11-05T10:00:00"}}, "clinical.organ_function.assessed_on"),
        ({"cd123": "positive"}, "clinical.cd123"),
    ],
)
def test_an_unreadable_clinical_block_is_poison(clinical: dict[str, Any], field: str) -> None:
    with pytest.raises(PoisonMessage, match=rf"^unreadable clinical block: {field}"):
        screening_input(snapshot(**clinical))


def test_the_screened_event_passes_the_snapshot_through() -> None:
    data = snapshot(ecog=3)
    assessment = assess(screening_input(data), load_ruleset(), StudySettings())
    event = screened_event(data, assessment)
    assert (event.decision, event.routable, event.ruleset, event.revision) == (
        "ineligible",
        False,
        "ucart123-v1",
        1,
    )
    assert (event.age_years, event.postal_code, event.country, event.referrer) == (
        58,
        "10021",
        "US",
        data.referrer,
    )
    assert [(c.id, c.verdict) for c in event.criteria if c.verdict == "not_met"] == [("ecog", "not_met")]


# --- settings -------------------------------------------------------------------------------------


def test_unset_study_settings_take_the_rule_set_defaults() -> None:
    settings = EligibilitySettings()
    ruleset = settings.load_ruleset()
    assert ruleset.version == "ucart123-v1"
    assert settings.study(ruleset) == StudySettings("dose_escalation", 28, True)
    assert (settings.port, settings.database_url) == (8002, "sqlite+aiosqlite:///.run/data/eligibility.db")


def test_study_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELIGIBILITY_COHORT", "dose_expansion")
    monkeypatch.setenv("ELIGIBILITY_SCREENING_WINDOW_DAYS", "14")
    monkeypatch.setenv("ELIGIBILITY_ROUTE_NEEDS_REVIEW", "false")
    monkeypatch.setenv("ELIGIBILITY_RULESET", "ucart123-v1")
    settings = EligibilitySettings()
    assert settings.study(settings.load_ruleset()) == StudySettings("dose_expansion", 14, False)


@pytest.mark.parametrize(
    ("name", "value"), [("ELIGIBILITY_COHORT", "phase_2"), ("ELIGIBILITY_SCREENING_WINDOW_DAYS", "-1")]
)
def test_a_bad_study_setting_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        EligibilitySettings()


def test_a_rule_set_not_packaged_stops_the_start() -> None:
    with pytest.raises(LookupError, match="no rule set 'ucart123-v9'"):
        EligibilitySettings(ruleset="ucart123-v9").load_ruleset()


# --- the public rules -----------------------------------------------------------------------------


def test_the_public_rules_follow_the_cohort_in_force() -> None:
    ruleset = load_ruleset()
    escalation = RulesetPublic.of(ruleset, StudySettings())
    expansion = RulesetPublic.of(ruleset, StudySettings(cohort="dose_expansion"))
    assert [c.id for c in escalation.criteria] == [c.id for c in ruleset.criteria]
    donor = {c.id: c for c in expansion.criteria}["donor_strategy"]
    assert (donor.applies_to_cohorts, donor.applies_now) == (["dose_escalation"], False)
    assert all(c.applies_now for c in escalation.criteria)
    age = escalation.criteria[0]
    assert (age.kind, age.parameters) == ("inclusion", {"min_years": 18, "max_years": 65})
    assert age.applies_to_cohorts == ["dose_escalation", "dose_expansion"]
    assert expansion.settings.cohort == "dose_expansion" and "other criteria may apply" in expansion.note
