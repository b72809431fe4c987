"""The accepting site's steps to enrolment: the one order, the outcomes, the fields each step needs."""

import pytest

from services.site_router.domain import (
    PROGRESS_ORDER,
    StepRefusal,
    next_steps,
    step_fields_refusal,
    step_refusal,
)

pytestmark = pytest.mark.unit

OUTCOMES = ("enrolled", "screen_failed", "not_enrolled")


def test_the_steps_follow_one_order_after_acceptance():
    current = None
    for step in PROGRESS_ORDER:
        assert step_refusal("accepted", current, step) is None, step
        current = step
    assert next_steps("accepted", None) == ["contacted", "screen_failed", "not_enrolled"]
    assert next_steps("accepted", "consented") == ["enrolled", "screen_failed", "not_enrolled"]


@pytest.mark.parametrize(
    ("current", "step"),
    [
        (None, "screening_scheduled"),
        (None, "enrolled"),
        ("contacted", "consented"),
        ("contacted", "contacted"),
        ("screening_scheduled", "enrolled"),
        ("consented", "contacted"),
        ("consented", "screening_scheduled"),
    ],
)
def test_a_step_out_of_order_is_refused_and_says_what_comes_next(current, step):
    refusal = step_refusal("accepted", current, step)
    assert isinstance(refusal, StepRefusal) and refusal.field is None
    assert f"cannot follow {current or 'acceptance'}" in refusal.reason


def test_screening_may_be_rescheduled():
    assert step_refusal("accepted", "screening_scheduled", "screening_scheduled") is None


@pytest.mark.parametrize("current", [None, "contacted", "screening_scheduled", "consented"])
@pytest.mark.parametrize("outcome", ["screen_failed", "not_enrolled"])
def test_a_negative_outcome_may_end_any_step_after_acceptance(current, outcome):
    assert step_refusal("accepted", current, outcome) is None


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("step", [*PROGRESS_ORDER, "screen_failed", "not_enrolled"])
def test_outcomes_are_final(outcome, step):
    refusal = step_refusal("closed", outcome, step)
    assert refusal is not None and "final" in refusal.reason
    assert next_steps("closed", outcome) == []


@pytest.mark.parametrize(("state", "words"), [("routed", "accept it first"), ("declined", "declined")])
def test_nothing_is_recorded_before_acceptance_or_after_the_site_let_it_go(state, words):
    for step in [*PROGRESS_ORDER, "screen_failed", "not_enrolled"]:
        refusal = step_refusal(state, None, step)
        assert refusal is not None and words in refusal.reason


@pytest.mark.parametrize(
    ("step", "given", "field", "words"),
    [
        ("screening_scheduled", set(), "screening_date", "required"),
        ("enrolled", set(), "subject_id", "required"),
        ("screen_failed", set(), "reason", "required"),
        ("not_enrolled", {"subject_id"}, "reason", "required"),
        ("contacted", {"reason"}, "reason", "not a field"),
        ("enrolled", {"subject_id", "screening_date"}, "screening_date", "not a field"),
        ("screen_failed", {"reason", "subject_id"}, "subject_id", "not a field"),
    ],
)
def test_each_step_needs_its_field_and_takes_no_other(step, given, field, words):
    refusal = step_fields_refusal(step, given)
    assert refusal is not None and refusal.field == field and words in refusal.reason


@pytest.mark.parametrize(
    ("step", "given"),
    [
        ("contacted", set()),
        ("screening_scheduled", {"screening_date"}),
        ("consented", set()),
        ("enrolled", {"subject_id"}),
        ("screen_failed", {"reason"}),
        ("not_enrolled", {"reason"}),
    ],
)
def test_a_step_with_its_fields_passes(step, given):
    assert step_fields_refusal(step, given) is None
