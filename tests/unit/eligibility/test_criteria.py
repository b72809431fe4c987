"""Every criterion of docs/trial/criteria.md at and around its boundaries, and what missing data does."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Any

import pytest

from services.eligibility.domain import CriterionResult, ScreeningInput, StudySettings, assess, whole_years
from services.eligibility.rules import load_ruleset, months_before
from shared.referral import EXAMPLE_REFERRAL as EXAMPLE
from shared.referral import ClinicalData

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 10)
ESCALATION = StudySettings()
EXPANSION = StudySettings(cohort="dose_expansion")


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def screening(age: int | None = 58, day: date = DAY, **clinical: Any) -> ScreeningInput:
    """The example referral's clinical block with some fields replaced (nested dicts merge)."""
    data = _merge(EXAMPLE["clinical"], clinical)
    return ScreeningInput(age_years=age, clinical=ClinicalData.model_validate(data), referral_day=day)


def result(criterion: str, inp: ScreeningInput, settings: StudySettings = ESCALATION) -> CriterionResult:
    found = [c for c in assess(inp, load_ruleset("ucart123-v1"), settings).criteria if c.id == criterion]
    assert len(found) == 1
    return found[0]


def verdict(criterion: str, inp: ScreeningInput, settings: StudySettings = ESCALATION) -> str:
    return result(criterion, inp, settings).verdict


def test_the_example_meets_every_criterion() -> None:
    outcome = assess(screening(), load_ruleset(), ESCALATION)
    assert {c.verdict for c in outcome.criteria} == {"met", "absent"}


# --- age ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected"),
    [(17, "not_met"), (18, "met"), (40, "met"), (65, "met"), (66, "not_met"), (None, "unknown")],
)
def test_age_18_to_65_inclusive(age: int | None, expected: str) -> None:
    assert verdict("age", screening(age=age)) == expected


def test_age_reason_names_the_age() -> None:
    assert "age 66" in result("age", screening(age=66)).reason


@pytest.mark.parametrize(
    ("born", "on", "years"),
    [
        (date(2008, 11, 10), date(2026, 11, 10), 18),
        (date(2008, 11, 11), date(2026, 11, 10), 17),
        (date(1961, 11, 10), date(2026, 11, 10), 65),
        (date(1960, 11, 11), date(2026, 11, 10), 65),
        (date(1960, 11, 10), date(2026, 11, 10), 66),
        (date(2008, 2, 29), date(2026, 2, 28), 17),
        (date(2008, 2, 29), date(2026, 3, 1), 18),
        (date(2008, 2, 29), date(2028, 2, 29), 20),
        (date(2026, 11, 10), date(2026, 11, 10), 0),
    ],
)
def test_whole_years_on_a_day(born: date, on: date, years: int) -> None:
    assert whole_years(born, on) == years


# --- rr_aml ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diagnosis", "status", "expected"),
    [
        ("aml", "relapsed", "met"),
        ("aml", "primary_refractory", "met"),
        ("aml", "newly_diagnosed", "not_met"),
        ("aml", "remission", "not_met"),
        ("apl", "relapsed", "met"),
        ("apl", "remission", "not_met"),
        ("mds", "relapsed", "not_met"),
        ("all", "primary_refractory", "not_met"),
        ("other", "relapsed", "not_met"),
        ("mds", None, "not_met"),
        (None, "newly_diagnosed", "not_met"),
        (None, "relapsed", "unknown"),
        ("aml", None, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_rr_aml(diagnosis: str | None, status: str | None, expected: str) -> None:
    inp = screening(diagnosis=diagnosis, disease_status=status)
    assert verdict("rr_aml", inp) == expected


def test_apl_passes_rr_aml_but_is_excluded_by_apl_or_cns() -> None:
    outcome = assess(screening(diagnosis="apl"), load_ruleset(), ESCALATION)
    verdicts = {c.id: c.verdict for c in outcome.criteria}
    assert (verdicts["rr_aml"], verdicts["apl_or_cns"], outcome.decision) == ("met", "present", "ineligible")


def test_rr_aml_reason_names_what_is_missing() -> None:
    assert result("rr_aml", screening(diagnosis=None, disease_status=None)).reason == (
        "diagnosis and disease_status not given"
    )


# --- marrow_blasts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blasts", "expected"),
    [
        (0, "not_met"),
        (5, "not_met"),
        (5.0, "not_met"),
        (5.01, "met"),
        (5.1, "met"),
        (100, "met"),
        (None, "unknown"),
    ],
)
def test_marrow_blasts_more_than_5_percent(blasts: float | None, expected: str) -> None:
    assert verdict("marrow_blasts", screening(marrow_blast_percent=blasts)) == expected


def test_marrow_blasts_reason() -> None:
    assert result("marrow_blasts", screening(marrow_blast_percent=5.0)).reason == (
        "marrow_blast_percent 5 is not more than 5"
    )


# --- cd123_positive -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("positive", "method", "expected"),
    [
        (True, "flow_cytometry", "met"),
        (True, "immunohistochemistry", "unknown"),
        (True, "other", "unknown"),
        (True, None, "unknown"),
        (False, "flow_cytometry", "not_met"),
        (False, "immunohistochemistry", "not_met"),
        (False, None, "not_met"),
        (None, "flow_cytometry", "unknown"),
    ],
)
def test_cd123_positive_by_flow_cytometry(positive: bool | None, method: str | None, expected: str) -> None:
    inp = screening(cd123={"positive": positive, "method": method})
    assert verdict("cd123_positive", inp) == expected


def test_cd123_not_reported() -> None:
    assert verdict("cd123_positive", screening(cd123=None)) == "unknown"


# --- ecog -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ecog", "expected"), [(0, "met"), (1, "met"), (2, "not_met"), (5, "not_met"), (None, "unknown")]
)
def test_ecog_0_or_1(ecog: int | None, expected: str) -> None:
    assert verdict("ecog", screening(ecog=ecog)) == expected


# --- organ_function -------------------------------------------------------------------------------


def organs(days_old: int | None = 5, **systems: str | None) -> dict[str, Any]:
    assessed = None if days_old is None else (DAY - timedelta(days=days_old)).isoformat()
    return {"organ_function": {"assessed_on": assessed, **systems}}


@pytest.mark.parametrize(
    ("days_old", "expected"), [(0, "met"), (27, "met"), (28, "met"), (29, "unknown"), (400, "unknown")]
)
def test_organ_function_within_the_28_day_window(days_old: int, expected: str) -> None:
    assert verdict("organ_function", screening(**organs(days_old))) == expected


def test_a_stale_assessment_says_so() -> None:
    reason = result("organ_function", screening(**organs(29))).reason
    assert "29 days before" in reason and "28-day screening window" in reason


def test_an_assessment_after_the_referral_day_is_unknown() -> None:
    assert verdict("organ_function", screening(**organs(-1))) == "unknown"


def test_an_adequate_assessment_without_a_date_is_unknown() -> None:
    found = result("organ_function", screening(**organs(None)))
    assert (found.verdict, found.reason) == ("unknown", "organ_function adequate but assessed_on not given")


@pytest.mark.parametrize("system", ["bone_marrow", "renal", "hepatic", "pulmonary", "cardiac"])
def test_any_inadequate_system_fails_even_when_stale_or_undated(system: str) -> None:
    for days_old in (5, 400, None):
        inp = screening(**organs(days_old, **{system: "inadequate"}))
        assert verdict("organ_function", inp) == "not_met"
        assert system in result("organ_function", inp).reason


@pytest.mark.parametrize("status", ["unknown", None])
def test_a_system_not_known_adequate_is_unknown(status: str | None) -> None:
    assert verdict("organ_function", screening(**organs(5, cardiac=status))) == "unknown"


def test_inadequate_beats_unknown_systems() -> None:
    assert (
        verdict("organ_function", screening(**organs(5, renal="unknown", hepatic="inadequate"))) == "not_met"
    )


def test_organ_function_not_reported() -> None:
    assert verdict("organ_function", screening(organ_function=None)) == "unknown"
    empty = ClinicalData.model_validate({"organ_function": {}})
    assert (
        verdict("organ_function", ScreeningInput(age_years=58, clinical=empty, referral_day=DAY)) == "unknown"
    )


@pytest.mark.parametrize(("days_old", "expected"), [(14, "met"), (15, "unknown")])
def test_the_screening_window_is_a_study_setting(days_old: int, expected: str) -> None:
    settings = StudySettings(screening_window_days=14)
    assert verdict("organ_function", screening(**organs(days_old)), settings) == expected


def test_a_zero_day_window_accepts_only_the_referral_day() -> None:
    settings = StudySettings(screening_window_days=0)
    assert verdict("organ_function", screening(**organs(0)), settings) == "met"
    assert verdict("organ_function", screening(**organs(1)), settings) == "unknown"


# --- donor_strategy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("donor", "strategy", "expected"),
    [
        (True, True, "met"),
        (False, True, "not_met"),
        (True, False, "not_met"),
        (False, None, "not_met"),
        (None, False, "not_met"),
        (None, True, "unknown"),
        (True, None, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_donor_strategy_in_dose_escalation(donor: bool | None, strategy: bool | None, expected: str) -> None:
    inp = screening(donor_identified=donor, transplant_strategy_defined=strategy)
    assert verdict("donor_strategy", inp) == expected


@pytest.mark.parametrize("donor", [True, False, None])
def test_donor_strategy_does_not_apply_in_dose_expansion(donor: bool | None) -> None:
    inp = screening(donor_identified=donor, transplant_strategy_defined=donor)
    found = result("donor_strategy", inp, EXPANSION)
    assert found.verdict == "not_applicable"
    assert "dose_escalation" in found.reason


# --- apl_or_cns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diagnosis", "cns", "expected"),
    [
        ("aml", False, "absent"),
        ("mds", False, "absent"),
        ("apl", False, "present"),
        ("apl", None, "present"),
        ("aml", True, "present"),
        (None, True, "present"),
        (None, False, "unknown"),
        ("aml", None, "unknown"),
        (None, None, "unknown"),
    ],
)
def test_apl_or_cns_leukemia(diagnosis: str | None, cns: bool | None, expected: str) -> None:
    assert verdict("apl_or_cns", screening(diagnosis=diagnosis, cns_leukemia=cns)) == expected


# --- prior therapies and infection ----------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(True, "present"), (False, "absent"), (None, "unknown")])
def test_prior_gene_or_cell_therapy(value: bool | None, expected: str) -> None:
    inp = screening(prior_therapy={"gene_or_cell_therapy": value})
    assert verdict("prior_gene_cell_therapy", inp) == expected


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "absent"), (1, "absent"), (2, "present"), (3, "present"), (None, "unknown")]
)
def test_two_or_more_prior_allogeneic_transplants(count: int | None, expected: str) -> None:
    inp = screening(prior_therapy={"allogeneic_sct_count": count})
    assert verdict("prior_allo_sct", inp) == expected


def test_no_prior_therapy_block_makes_its_criteria_unknown() -> None:
    inp = screening(prior_therapy=None)
    assert {verdict(c, inp) for c in ("prior_gene_cell_therapy", "prior_allo_sct", "recent_anti_cd20")} == {
        "unknown"
    }


@pytest.mark.parametrize(("value", "expected"), [(True, "present"), (False, "absent"), (None, "unknown")])
def test_active_infection(value: bool | None, expected: str) -> None:
    assert verdict("active_infection", screening(active_infection=value)) == expected


# --- recent_anti_cd20 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "day", "expected"),
    [
        ("2026-08-10", DAY, "present"),  # exactly three months before: "on or after" counts it
        ("2026-08-11", DAY, "present"),  # one day inside
        ("2026-08-09", DAY, "absent"),  # one day outside
        ("2026-11-10", DAY, "present"),  # on the referral day
        ("2026-11-11", DAY, "unknown"),  # after the referral day: contradictory, a person decides
        ("2020-01-01", DAY, "absent"),
        ("never", DAY, "absent"),
        (None, DAY, "unknown"),
        ("2026-02-28", date(2026, 5, 31), "present"),  # 31 May - 3 months = 28 February
        ("2026-02-27", date(2026, 5, 31), "absent"),
        ("2028-02-29", date(2028, 5, 31), "present"),  # leap year
        ("2026-10-15", date(2027, 1, 15), "present"),  # across a year
        ("2026-10-14", date(2027, 1, 15), "absent"),
    ],
)
def test_anti_cd20_within_3_months(last: str | None, day: date, expected: str) -> None:
    inp = screening(day=day, prior_therapy={"last_anti_cd20_on": last})
    assert verdict("recent_anti_cd20", inp) == expected


def test_anti_cd20_reason_names_the_cutoff() -> None:
    reason = result("recent_anti_cd20", screening(prior_therapy={"last_anti_cd20_on": "2026-08-10"})).reason
    assert reason == "prior_therapy.last_anti_cd20_on 2026-08-10 is on or after 2026-08-10 (3 months)"


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 11, 10), 3, date(2026, 8, 10)),
        (date(2026, 5, 31), 3, date(2026, 2, 28)),
        (date(2028, 5, 31), 3, date(2028, 2, 29)),
        (date(2026, 3, 31), 1, date(2026, 2, 28)),
        (date(2027, 2, 15), 3, date(2026, 11, 15)),
        (date(2026, 1, 1), 12, date(2025, 1, 1)),
    ],
)
def test_months_before(day: date, months: int, expected: date) -> None:
    assert months_before(day, months) == expected


# --- missing data ---------------------------------------------------------------------------------


def test_missing_data_is_never_a_failure() -> None:
    outcome = assess(
        ScreeningInput(age_years=None, clinical=ClinicalData(), referral_day=DAY), load_ruleset(), ESCALATION
    )
    assert {c.verdict for c in outcome.criteria} == {"unknown"}
    assert all("not given" in c.reason for c in outcome.criteria)
