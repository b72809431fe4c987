"""The portal's forms: fields in, a valid value or the message to show next to the field out.

Every limit is the API's own (its request models), so a form and the API accept the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from services.site_router.schemas import DeclineRequest, ProgressRequest, SiteUpdate
from shared.problems import ProblemError

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


_STEP_FIELDS = ("screening_date", "subject_id", "reason")


def progress_step(
    form: Mapping[str, Any], shown_at: Mapping[str, str]
) -> tuple[ProgressRequest | None, FormErrors]:
    """A step form: ``step`` and the one field it carries (an empty field is an absent one)."""
    values = {name: form.get(name) for name in ("step", *_STEP_FIELDS)}
    given = {k: v.strip() for k, v in values.items() if isinstance(v, str) and v.strip()}
    kept = {k: v for k, v in given.items() if k != "step"}
    try:
        return ProgressRequest.model_validate(given), FormErrors()
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "form"
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "missing" and name in shown_at:
                message = _MISSING.get(name, message)
            errors.setdefault(shown_at.get(name, "form"), message)
        return None, FormErrors(errors, kept)


_MISSING = {
    "screening_date": "Enter the screening date.",
    "subject_id": "Enter the study's subject or randomisation id.",
    "reason": "Say why (clinical reasons only).",
}


def problem_errors(exc: ProblemError, shown_at: Mapping[str, str], form: Mapping[str, Any]) -> FormErrors:
    """A command's 422 (its ``errors``: field and reason) as messages next to the form's fields."""
    errors: dict[str, str] = {}
    for item in exc.errors or []:
        name = item.get("field", "")
        message = item.get("reason", exc.detail)
        if name in shown_at:
            message = (
                _MISSING.get(name, message) if "required" in message or "missing" in message else message
            )
        errors.setdefault(shown_at.get(name, "form"), message)
    values = {k: v for k in _STEP_FIELDS if isinstance(v := form.get(k), str)}
    return FormErrors(errors or {"form": exc.detail}, values)
