"""The change feed's cursor: opaque, and anything it did not produce is refused."""

from __future__ import annotations

import pytest

from services.intake.domain import decode_change_cursor, encode_change_cursor, encode_cursor


@pytest.mark.parametrize("seq", [0, 1, 42, 2**62])
def test_a_cursor_gives_back_its_position(seq: int) -> None:
    assert decode_change_cursor(encode_change_cursor(seq)) == seq


@pytest.mark.parametrize(
    "cursor",
    ["", "not base64!", "Y2hhbmdlczo", "Y2hhbmdlczotMQ", "eDo0Mg", "Y2hhbmdlczrZow", "Y2hhbmdlczrvvJE"],
)
def test_anything_else_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        decode_change_cursor(cursor)


def test_a_position_beyond_a_bigint_is_refused() -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        decode_change_cursor(encode_change_cursor(2**63))


def test_the_referral_lists_cursor_is_not_a_feed_cursor() -> None:
    import uuid
    from datetime import UTC, datetime

    with pytest.raises(ValueError):
        decode_change_cursor(encode_cursor(datetime.now(UTC), uuid.uuid4()))
