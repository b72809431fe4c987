"""The plain rows intake writes with Core INSERTs stay in step with its tables."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import UTC, date, datetime

from services.intake import store
from shared.store import table_of


def test_a_new_referral_has_every_column_of_the_referrals_table_and_its_defaults() -> None:
    table = table_of(store.Referral)
    assert [f.name for f in fields(store.NewReferral)] == list(table.c.keys())
    referral = store.NewReferral(
        clinic_id="clinic-a",
        client_id="clinic-a-intake",
        clinic_reference="CLN-1",
        study="UCART123-AMELI-01",
        referral_day=date(2026, 12, 8),
        given_name="Maria",
        family_name="Lopez",
        date_of_birth=date(1968, 3, 14),
        postal_code="10021",
        country="US",
        consent_to_contact=True,
        referrer_name="Dr A",
        referrer_email="a@clinic.example.org",
    )
    row = referral.row()
    assert set(row) == set(table.c.keys())
    # The same defaults as the model's: what an ORM object built from the same fields would have held.
    model = store.Referral(**{k: v for k, v in row.items() if k not in ("id", "created_at", "updated_at")})
    for name in ("revision", "status", "status_at", "sex", "email", "phone", "preferred_language"):
        assert row[name] == getattr(model, name), name
    assert (row["clinical"], row["decision"], row["site"]) == ({}, None, None)
    fields_but_id = {k: v for k, v in row.items() if k != "id"}
    assert isinstance(row["id"], uuid.UUID) and row["id"] != store.NewReferral(**fields_but_id).id


def test_a_new_entry_has_every_column_of_the_timeline_but_its_id() -> None:
    table = table_of(store.TimelineEntry)
    assert [f.name for f in fields(store.NewEntry)] == [name for name in table.c.keys() if name != "id"]
    entry = store.NewEntry(
        referral_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        event_type="referral.routed",
        occurred_at=datetime(2026, 12, 8, tzinfo=UTC),
        source="site_router",
    )
    row = entry.row()
    assert "id" not in row and set(row) == set(table.c.keys()) - {"id"}
    assert row["details"] == {} and row["recorded_at"].tzinfo is not None
    assert (row["seq"], row["clinic_id"], row["referral_status"], row["referral_revision"]) == (None,) * 4
