"""Decision, score and routing flag of an assessment, and the rule set as versioned data."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services.eligibility.domain import Assessment, Ruleset, ScreeningInput, StudySettings, assess
from services.eligibility.rules import available_versions, load_ruleset, parse_ruleset
from shared.referral import ClinicalData
from tests.unit.eligibility.test_criteria import screening

pytestmark = pytest.mark.unit

RULESET_FILE = Path(__file__).parents[3] / "services" / "eligibility" / "rulesets" / "ucart123-v1.json"
CRITERIA_MD_IDS = [
    "age",
    "rr_aml",
    "marrow_blasts",
    "cd123_positive",
    "ecog",
    "organ_function",
    "donor_strategy",
    "apl_or_cns",
    "prior_gene_cell_therapy",
    "prior_allo_sct",
    "recent_anti_cd20",
    "active_infection",
]
EXCLUSIONS = {
    "apl_or_cns",
    "prior_gene_cell_therapy",
    "prior_allo_sct",
    "recent_anti_cd20",
    "active_infection",
}


def run(inp: ScreeningInput, settings: StudySettings | None = None) -> Assessment:
    return assess(inp, load_ruleset("ucart123-v1"), settings or StudySettings())


def ruleset_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RULESET_FILE.read_text())
    return data


def with_parameters(criterion: str, **parameters: Any) -> Ruleset:
    data = ruleset_data()
    entry = next(c for c in data["criteria"] if c["id"] == criterion)
    entry["parameters"].update(parameters)
    return parse_ruleset(data)


# --- decision, score, routing ---------------------------------------------------------------------


def test_the_example_referral_is_eligible() -> None:
    outcome = run(screening())
    assert (outcome.decision, outcome.score, outcome.routable, outcome.ruleset_version) == (
        "eligible",
        1.0,
        True,
        "ucart123-v1",
    )


def test_criteria_come_in_the_rule_set_order_with_their_kind() -> None:
    outcome = run(screening())
    assert [c.id for c in outcome.criteria] == CRITERIA_MD_IDS
    assert {c.id for c in outcome.criteria if c.kind == "exclusion"} == EXCLUSIONS


def test_an_unknown_makes_needs_review() -> None:
    outcome = run(screening(ecog=None))
    assert (outcome.decision, outcome.score) == ("needs_review", round(11 / 12, 4))


def test_a_failed_criterion_beats_an_unknown() -> None:
    outcome = run(screening(ecog=2, cd123=None))
    assert (outcome.decision, outcome.score) == ("ineligible", round(10 / 12, 4))


def test_a_present_exclusion_beats_unknowns() -> None:
    outcome = run(screening(active_infection=True, ecog=None, marrow_blast_percent=None))
    assert (outcome.decision, outcome.score) == ("ineligible", round(9 / 12, 4))


def test_score_counts_only_applicable_criteria() -> None:
    expansion = StudySettings(cohort="dose_expansion")
    assert run(screening(), expansion).score == 1.0
    assert run(screening(ecog=None, donor_identified=False), expansion).score == round(10 / 11, 4)
    assert run(screening(donor_identified=False), expansion).decision == "eligible"


def test_nothing_known_but_the_age() -> None:
    outcome = run(ScreeningInput(age_years=40, clinical=ClinicalData(), referral_day=date(2026, 11, 10)))
    assert (outcome.decision, outcome.score) == ("needs_review", 0.0833)


def test_every_verdict_failing() -> None:
    inp = screening(
        age=70,
        diagnosis="apl",
        disease_status="remission",
        marrow_blast_percent=1.0,
        cd123={"positive": False},
        ecog=3,
        organ_function={"renal": "inadequate"},
        donor_identified=False,
        prior_therapy={
            "gene_or_cell_therapy": True,
            "allogeneic_sct_count": 2,
            "last_anti_cd20_on": "2026-11-01",
        },
        active_infection=True,
    )
    outcome = run(inp)
    assert (outcome.decision, outcome.score, outcome.routable) == ("ineligible", 0.0, False)
    assert {c.verdict for c in outcome.criteria} == {"not_met", "present"}


@pytest.mark.parametrize(
    ("inp", "route_needs_review", "routable"),
    [
        (screening(), False, True),
        (screening(ecog=None), True, True),
        (screening(ecog=None), False, False),
        (screening(ecog=4), True, False),
    ],
)
def test_routable(inp: ScreeningInput, route_needs_review: bool, routable: bool) -> None:
    assert run(inp, StudySettings(route_needs_review=route_needs_review)).routable is routable


def test_assessment_as_plain_data() -> None:
    data = run(screening(ecog=None)).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["criteria"][4] == {
        "id": "ecog",
        "kind": "inclusion",
        "verdict": "unknown",
        "reason": "ecog not given",
    }


def test_assess_is_deterministic_and_does_not_mutate() -> None:
    inp = screening()
    before = inp.model_dump()
    assert run(inp) == run(inp)
    assert inp.model_dump() == before


# --- study settings -------------------------------------------------------------------------------


def test_study_settings_defaults() -> None:
    assert StudySettings() == StudySettings("dose_escalation", 28, True)
    assert load_ruleset().settings() == StudySettings()


def test_ruleset_defaults_yield_to_configured_values() -> None:
    settings = load_ruleset().settings(cohort="dose_expansion", screening_window_days=None)
    assert settings == StudySettings(cohort="dose_expansion", screening_window_days=28)


@pytest.mark.parametrize(
    "kwargs", [{"cohort": "phase_2"}, {"screening_window_days": -1}, {"screening_window_days": "28"}]
)
def test_study_settings_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StudySettings(**kwargs)


# --- the rule set as data -------------------------------------------------------------------------


def test_the_packaged_rule_set() -> None:
    ruleset = load_ruleset()
    assert (ruleset.version, ruleset.study) == ("ucart123-v1", "UCART123-AMELI-01")
    assert available_versions() == ("ucart123-v1",)
    assert [c.id for c in ruleset.criteria] == CRITERIA_MD_IDS
    assert all(c.text and c.explanation for c in ruleset.criteria)


def test_published_parameters() -> None:
    parameters = {c.id: c.parameters for c in load_ruleset().criteria}
    assert parameters["age"] == {"min_years": 18, "max_years": 65}
    assert parameters["marrow_blasts"] == {"above_percent": 5}
    assert parameters["ecog"] == {"max": 1}
    assert parameters["recent_anti_cd20"] == {"window_months": 3}
    assert parameters["prior_allo_sct"] == {"excluded_from_count": 2}
    assert parameters["cd123_positive"] == {"methods": ["flow_cytometry"]}
    donor = next(c for c in load_ruleset().criteria if c.id == "donor_strategy")
    assert donor.applies_to_cohorts == ("dose_escalation",)
    assert load_ruleset().settings_defaults.screening_window_days == 28


def test_loading_is_cached() -> None:
    assert load_ruleset("ucart123-v1") is load_ruleset("ucart123-v1")
    assert load_ruleset() is load_ruleset("ucart123-v1")


@pytest.mark.parametrize("version", ["ucart123-v9", "../rulesets/ucart123-v1", "", "UCART123-V1"])
def test_unknown_versions_are_refused(version: str) -> None:
    with pytest.raises(LookupError):
        load_ruleset(version)


IHC_POSITIVE = {"positive": True, "method": "immunohistochemistry"}


@pytest.mark.parametrize(
    ("criterion", "parameters", "inp", "verdict"),
    [
        ("age", {"max_years": 70}, screening(age=70), "met"),
        ("ecog", {"max": 2}, screening(ecog=2), "met"),
        ("marrow_blasts", {"above_percent": 20}, screening(marrow_blast_percent=20.0), "not_met"),
        (
            "recent_anti_cd20",
            {"window_months": 6},
            screening(prior_therapy={"last_anti_cd20_on": "2026-06-01"}),
            "present",
        ),
        ("prior_allo_sct", {"excluded_from_count": 1}, screening(), "present"),
        (
            "cd123_positive",
            {"methods": ["flow_cytometry", "immunohistochemistry"]},
            screening(cd123=IHC_POSITIVE),
            "met",
        ),
    ],
)
def test_thresholds_are_data(
    criterion: str, parameters: dict[str, Any], inp: ScreeningInput, verdict: str
) -> None:
    outcome = assess(inp, with_parameters(criterion, **parameters), StudySettings())
    assert next(c.verdict for c in outcome.criteria if c.id == criterion) == verdict


def test_a_new_version_may_drop_reorder_and_scope_criteria() -> None:
    data = ruleset_data()
    data["version"] = "ucart123-v2"
    data["criteria"] = [data["criteria"][4], data["criteria"][0]]
    data["criteria"][0]["applies_to_cohorts"] = ["dose_expansion"]
    outcome = assess(screening(ecog=3), parse_ruleset(json.dumps(data)), StudySettings())
    assert [(c.id, c.verdict) for c in outcome.criteria] == [("ecog", "not_applicable"), ("age", "met")]
    assert (outcome.ruleset_version, outcome.decision, outcome.score) == ("ucart123-v2", "eligible", 1.0)


def _broken(mutate: Any) -> dict[str, Any]:
    data = copy.deepcopy(ruleset_data())
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_broken(lambda d: d["criteria"][0].update(id="age_limit")), "no evaluator"),
        (_broken(lambda d: d["criteria"][0].update(kind="exclusion")), "inclusion criterion"),
        (_broken(lambda d: d["criteria"][0]["parameters"].update(min_years=70)), "min_years"),
        (_broken(lambda d: d["criteria"][0]["parameters"].update(min_age=1)), "min_age"),
        (_broken(lambda d: d["criteria"][4]["parameters"].pop("max")), "max"),
        (_broken(lambda d: d["criteria"][1]["parameters"].update(diagnoses=["cml"])), "diagnoses"),
        (_broken(lambda d: d["criteria"][6].update(applies_to_cohorts=["phase_2"])), "applies_to_cohorts"),
        (_broken(lambda d: d["criteria"].append(d["criteria"][0])), "duplicate criterion ids: age"),
        (_broken(lambda d: d.update(thresholds={})), "thresholds"),
        (_broken(lambda d: d.update(criteria=[])), "criteria"),
    ],
)
def test_a_broken_rule_set_fails_at_load_time(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ruleset(data)
