"""The portal's pure rules: which tab a referral is in, how its time in the queue reads."""

from __future__ import annotations

import uuid

import pytest

from services.site_router.domain import QueueTab, age_in_queue, queue_tab, short_id


@pytest.mark.parametrize(
    ("state", "opened", "tab"),
    [
        ("routed", False, QueueTab.NEW),
        ("routed", True, QueueTab.AWAITING),
        ("accepted", False, QueueTab.IN_PROGRESS),
        ("accepted", True, QueueTab.IN_PROGRESS),
        ("declined", True, QueueTab.CLOSED),
        ("closed", False, QueueTab.CLOSED),
        ("released", False, QueueTab.CLOSED),
        ("withdrawn", True, QueueTab.CLOSED),
    ],
)
def test_queue_tab(state: str, opened: bool, tab: QueueTab) -> None:
    assert queue_tab(state, opened) is tab


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "0 min"),
        (59, "0 min"),
        (60 * 45, "45 min"),
        (3600, "1 h"),
        (47 * 3600 + 59, "47 h"),
        (48 * 3600, "2 d"),
    ],
)
def test_age_in_queue(seconds: float, shown: str) -> None:
    assert age_in_queue(seconds) == shown


def test_short_id_is_the_first_eight_hex_digits() -> None:
    rid = uuid.UUID("1a2b3c4d-0000-4000-8000-000000000000")
    assert short_id(rid) == "1a2b3c4d"
