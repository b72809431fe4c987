"""Intake's pure rules: ages, the state machine over out-of-order timelines, fingerprints, cursors."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.domain import (
    Fact,
    Status,
    age_in_years,
    change_refusal,
    decode_cursor,
    describe,
    encode_cursor,
    project,
    request_fingerprint,
)
from shared.events import (
    CriterionVerdict,
    ReferralNotified,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    Referrer,
    SiteRef,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
REFERRER = Referrer(name="Dr. Ana Smith", email="asmith@clinic.example.org")


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def fact(
    status: Status | None, minute: int, seq: int, revision: int | None = None, **details: object
) -> Fact:
    return Fact("test", at(minute), seq, status, revision, dict(details))


@pytest.mark.parametrize(
    ("born", "on", "years"),
    [
        (date(1968, 3, 14), date(2026, 3, 13), 57),
        (date(1968, 3, 14), date(2026, 3, 14), 58),
        (date(2000, 2, 29), date(2026, 2, 28), 25),
        (date(2000, 2, 29), date(2026, 3, 1), 26),
        (date(2000, 2, 29), date(2028, 2, 29), 28),
        (date(2026, 11, 10), date(2026, 11, 10), 0),
    ],
)
def test_age_counts_whole_years_completed(born: date, on: date, years: int) -> None:
    assert age_in_years(born, on) == years


def test_the_timeline_is_folded_in_order_of_occurrence_not_of_arrival() -> None:
    received = fact(Status.RECEIVED, 0, 1, 1)
    routed = fact(Status.ROUTED, 2, 2, 1, site={"code": "S1"})  # arrived before the screening
    screened = fact(Status.SCREENED, 1, 3, 1, decision={"decision": "eligible"})
    view = project([received, routed, screened], revision=1)
    assert view.status is Status.ROUTED and view.status_at == at(2)
    assert view.decision == {"decision": "eligible"} and view.site == {"code": "S1"}


def test_a_stale_event_does_not_overwrite_a_newer_status() -> None:
    facts = [
        fact(Status.RECEIVED, 0, 1, 1),
        fact(Status.SCREENED, 1, 2, 1),
        fact(Status.WAITLISTED, 5, 3),
        fact(Status.ROUTED, 3, 4, 1, site={"code": "S1"}),  # occurred before the waitlisting
    ]
    view = project(facts, revision=1)
    assert view.status is Status.WAITLISTED and view.site is None


def test_events_about_an_older_revision_stay_history_only() -> None:
    facts = [
        fact(Status.RECEIVED, 0, 1, 1),
        fact(Status.RECEIVED, 2, 2, 2),  # the amendment
        fact(Status.SCREENED, 3, 3, 1, decision={"revision": 1}),  # late verdict on revision 1
    ]
    view = project(facts, revision=2)
    assert view.status is Status.RECEIVED and view.decision is None
    facts.append(fact(Status.NOT_ROUTED, 4, 4, 2, decision={"revision": 2}))
    assert project(facts, revision=2).decision == {"revision": 2}


def test_withdrawn_and_closed_are_final() -> None:
    base = [fact(Status.RECEIVED, 0, 1, 1), fact(Status.WITHDRAWN, 1, 2)]
    assert project([*base, fact(Status.ROUTED, 2, 3, 1)], 1).status is Status.WITHDRAWN
    closed = [fact(Status.RECEIVED, 0, 1, 1), fact(Status.CLOSED, 1, 2), fact(Status.DECLINED, 2, 3)]
    assert project(closed, 1).status is Status.CLOSED


def test_after_acceptance_only_closure_changes_the_status() -> None:
    facts = [
        fact(Status.RECEIVED, 0, 1, 1),
        fact(Status.ROUTED, 1, 2, 1),
        fact(Status.ACCEPTED, 2, 3),
        fact(Status.NOTIFIED, 3, 4),  # the patient is told of the acceptance
    ]
    assert project(facts, 1).status is Status.ACCEPTED
    assert project([*facts, fact(Status.CLOSED, 4, 5)], 1).status is Status.CLOSED


def test_a_notification_is_a_state_only_after_routing() -> None:
    waitlisted = [fact(Status.RECEIVED, 0, 1, 1), fact(Status.WAITLISTED, 1, 2), fact(Status.NOTIFIED, 2, 3)]
    assert project(waitlisted, 1).status is Status.WAITLISTED
    routed = [fact(Status.RECEIVED, 0, 1, 1), fact(Status.ROUTED, 1, 2), fact(Status.NOTIFIED, 2, 3)]
    assert project(routed, 1).status is Status.NOTIFIED


def test_a_decline_is_followed_by_routing_again() -> None:
    facts = [
        fact(Status.RECEIVED, 0, 1, 1),
        fact(Status.ROUTED, 1, 2, 1, site={"code": "S1"}),
        fact(Status.DECLINED, 2, 3),
        fact(Status.ROUTED, 3, 4, 1, site={"code": "S2"}),
    ]
    view = project(facts, 1)
    assert view.status is Status.ROUTED and view.site == {"code": "S2"}


def test_ties_in_time_follow_the_order_of_recording() -> None:
    facts = [fact(Status.RECEIVED, 0, 1, 1), fact(Status.UNROUTABLE, 1, 3), fact(Status.WAITLISTED, 1, 2)]
    assert project(facts, 1).status is Status.UNROUTABLE


def test_amendment_and_withdrawal_are_refused_after_acceptance_and_at_the_end() -> None:
    for status in (Status.ACCEPTED, Status.WITHDRAWN, Status.CLOSED):
        assert change_refusal(status, "amended")
    assert "accepted" in (change_refusal(Status.ACCEPTED, "withdrawn") or "")
    for status in (Status.RECEIVED, Status.ROUTED, Status.NOTIFIED, Status.DECLINED, Status.NOT_ROUTED):
        assert change_refusal(status, "amended") is None


def test_describe_status_events() -> None:
    screened = ReferralScreened(
        clinic_id="C1", revision=2, ruleset="ucart123-v1", decision="ineligible", score=0.5,
        routable=False, criteria=[CriterionVerdict(id="rr_aml", verdict="not_met", reason="mds")],
        age_years=58, postal_code="10021", country="US", consent_to_contact=True, referrer=REFERRER,
    )  # fmt: skip
    described = describe(screened)
    assert described.status is Status.NOT_ROUTED and described.revision == 2
    assert described.details["decision"]["criteria"] == [
        {"id": "rr_aml", "verdict": "not_met", "reason": "mds"}
    ]
    site = SiteRef(code="S1", name="Memorial", city="New York", coordinator_email="c@site.example.org")
    routed = ReferralRouted(
        clinic_id="C1", revision=1, site=site, distance_km=3.24, rank=1, decision="eligible",
        criteria_to_confirm=[], consent_to_contact=True, referrer=REFERRER,
    )  # fmt: skip
    assert describe(routed).details["site"] == {
        "code": "S1", "name": "Memorial", "city": "New York", "distance_km": 3.2, "rank": 1,
    }  # fmt: skip
    assert "coordinator" not in str(describe(routed).details)
    decided = ReferralSiteDecided(clinic_id="C1", site_code="S1", decision="declined", reason="full")
    assert describe(decided).status is Status.DECLINED and describe(decided).reason == "full"
    notified = ReferralNotified(
        recipient_role="site", template="site_new_referral", message_id="<m1>", source_event_id=uuid.uuid4()
    )
    assert describe(notified).details["notification"]["message_id"] == "<m1>"


def test_the_fingerprint_ignores_key_order_but_not_content() -> None:
    one = request_fingerprint("POST", "/v1/referrals", {"a": 1, "b": {"c": [1, 2]}})
    assert one == request_fingerprint("post", "/v1/referrals", {"b": {"c": [1, 2]}, "a": 1})
    assert one != request_fingerprint("POST", "/v1/referrals", {"a": 2, "b": {"c": [1, 2]}})
    assert one != request_fingerprint("POST", "/v1/other", {"a": 1, "b": {"c": [1, 2]}})


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    rid = uuid.uuid4()
    assert decode_cursor(encode_cursor(T0, rid)) == (T0, rid)
    for bad in ("", "nonsense", "W10", encode_cursor(T0, rid)[:-3], "eyJhIjogMX0"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
TIMES = st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())


@given(
    st.one_of(
        st.text(max_size=200),
        JSON_VALUES.map(lambda v: _b64(v)),
        st.tuples(TIMES, JSON_VALUES).map(lambda v: _b64(list(v))),
    )
)
def test_a_crafted_cursor_is_a_value_error_or_a_utc_position(cursor: str) -> None:
    """F3: whatever a client sends as a cursor, decoding it raises ValueError (a 422) or gives a UTC
    time and an id: nothing else escapes (AttributeError, OverflowError were 500s)."""
    try:
        at, rid = decode_cursor(cursor)
    except ValueError:
        return
    assert at.utcoffset() == timedelta(0) and isinstance(rid, uuid.UUID)


@given(TIMES)
def test_a_cursor_time_without_a_utc_equivalent_is_refused(at: str) -> None:
    try:
        moment, _ = decode_cursor(_b64([at, str(uuid.uuid4())]))
    except ValueError:
        return
    assert moment.tzinfo is UTC


def test_the_cursor_times_at_the_edges_of_utc() -> None:
    for edge in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        with pytest.raises(ValueError):
            decode_cursor(_b64([edge, str(uuid.uuid4())]))
    with pytest.raises(ValueError):
        decode_cursor(_b64(["2026-01-01T00:00:00+00:00", 5]))


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_the_accepting_site_is_the_last_acceptance_not_let_go_since():
    from services.intake.domain import accepting_site

    decided = "referral.site_decided"
    accepted = [("referral.routed", {}), (decided, {"decision": "accepted", "site_code": "WCM"})]
    assert accepting_site(accepted) == "WCM"
    assert accepting_site([*accepted, (decided, {"decision": "closed", "site_code": "WCM"})]) == "WCM"
    assert accepting_site([(decided, {"decision": "declined", "site_code": "WCM"})]) is None
    assert accepting_site([*accepted, (decided, {"decision": "declined", "site_code": "WCM"})]) is None
    assert accepting_site([*accepted, ("referral.withdrawn", {})]) is None
    assert accepting_site([]) is None


def test_steps_and_outcomes_refuse_the_clinics_changes_and_map_to_fhir():
    from services.intake.domain import Status, change_refusal
    from services.intake.fhir.resources import task_status

    assert "site accepted" in (change_refusal(Status.CONSENTED, "amended") or "")
    assert "outcome (enrolled)" in (change_refusal(Status.ENROLLED, "withdrawn") or "")
    assert [task_status(s) for s in (Status.CONTACTED, Status.SCREENING_SCHEDULED, Status.CONSENTED)] == [
        "in-progress"
    ] * 3
    assert {task_status(s) for s in (Status.ENROLLED, Status.SCREEN_FAILED, Status.NOT_ENROLLED)} == {
        "completed"
    }
