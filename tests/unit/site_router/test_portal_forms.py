"""The portal's form fields: what is accepted, and the message shown next to a field that is not."""

from __future__ import annotations

import pytest

from services.site_router.portal import forms
from services.site_router.portal.contact import labelled


def test_a_decline_reason_is_trimmed_and_required() -> None:
    assert forms.decline_reason("  no bed this month ") == ("no bed this month", forms.FormErrors())
    for blank in ("", "   ", None):
        reason, errors = forms.decline_reason(blank)
        assert reason is None and errors.errors["reason"].startswith("Say why")
    reason, errors = forms.decline_reason("x" * 501)
    assert reason is None and "500" in errors.errors["reason"] and errors.values["reason"] == "x" * 501


@pytest.mark.parametrize("raw", ["", "-1", "2.5", "ten", "10001", None, "99999999999999999999999"])
def test_a_capacity_is_a_whole_number_in_range(raw: object) -> None:
    value, errors = forms.capacity(raw, "capacity-WCM")
    assert value is None and errors.errors == {"capacity-WCM": "Enter a whole number from 0 to 10000."}


def test_a_capacity_in_range_is_accepted() -> None:
    assert forms.capacity(" 0 ", "c")[0] == 0 and forms.capacity("10000", "c")[0] == 10_000


def test_the_patient_contact_shows_known_fields_in_order_flat_or_nested() -> None:
    body = {"email": "p@example.org", "given_name": "Ana", "family_name": "Ruiz", "phone": None, "x": "y"}
    shown = [("Given name", "Ana"), ("Family name", "Ruiz"), ("Email", "p@example.org")]
    assert labelled(body) == shown
    assert labelled({"referral_id": "r", "patient": body}) == shown
    assert labelled(["not", "a", "dict"]) == [] and labelled({"patient": "?"}) == []
