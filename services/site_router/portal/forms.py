"""The portal's forms: fields in, a valid value or the message to show next to the field out.

Every limit is the API's own (its request models), so a form and the API accept the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from services.site_router.schemas import DeclineRequest, SiteUpdate

FLASH = {
    "accepted": "Referral accepted. The patient's contact details are below.",
    "declined": "Referral declined. It goes to the next nearest site.",
    "progressed": "Step recorded.",
    "capacity": "Capacity saved.",
    "paused": "Intake paused: no new referrals reach the site until you resume it.",
    "resumed": "Intake resumed.",
}
"""Flash messages by key: a redirect carries only the key (``?done=accepted``), never free text."""


@dataclass
class FormErrors:
    """Messages by field name (``form`` for the whole form), and the values to show again."""

    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.errors)


def _message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return str(first["msg"]).removeprefix("Value error, ")


def decline_reason(raw: object) -> tuple[str | None, FormErrors]:
    text = raw if isinstance(raw, str) else ""
    if not text.strip():
        return None, FormErrors(
            {"reason": "Say why the site declines (clinical reasons only)."}, {"reason": text}
        )
    try:
        return DeclineRequest(reason=text).reason, FormErrors()
    except ValidationError as exc:
        return None, FormErrors({"reason": _message(exc)}, {"reason": text})


def capacity(raw: object, field_name: str) -> tuple[int | None, FormErrors]:
    text = raw.strip() if isinstance(raw, str) else ""
    if not text.isdigit():
        return None, FormErrors({field_name: "Enter a whole number from 0 to 10000."}, {"value": text})
    try:
        update = SiteUpdate(capacity=int(text))
    except ValidationError:
        return None, FormErrors({field_name: "Enter a whole number from 0 to 10000."}, {"value": text})
    return update.capacity, FormErrors()
