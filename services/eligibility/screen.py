"""The offline evaluator: screen referral files (the body a clinic would POST) without any service.

Every file gets one result in input order, either an assessment or an error naming the JSON path and
the reason, so that a clinic can fix a batch in one pass. Nothing here reads the clock: the
reference day (``--as-of``) is an argument.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.eligibility.domain import Assessment, Ruleset, StudySettings, assess, whole_years
from shared.referral import ReferralPayload, ScreeningInput

__all__ = ["InvalidReferral", "read_referral", "screen_file", "screen_files"]

ROOT = "$"


class InvalidReferral(ValueError):
    """A file that is not a valid referral; the message is ``<json path>: <reason>``."""


def screen_files(
    paths: Iterable[Path], as_of: date, ruleset: Ruleset, settings: StudySettings
) -> Iterator[tuple[dict[str, Any], bool]]:
    """One ``(result, ok)`` per file, in order; ``ok`` is false when the file could not be assessed."""
    for path in paths:
        yield screen_file(path, as_of, ruleset, settings)


def screen_file(
    path: Path, as_of: date, ruleset: Ruleset, settings: StudySettings
) -> tuple[dict[str, Any], bool]:
    try:
        payload = read_referral(path, as_of, ruleset)
    except InvalidReferral as exc:
        return {"file": str(path), "error": str(exc)}, False
    inp = ScreeningInput(
        age_years=whole_years(payload.patient.date_of_birth, as_of),
        clinical=payload.clinical,
        referral_day=as_of,
    )
    return _result(str(path), assess(inp, ruleset, settings)), True


def read_referral(path: Path, as_of: date, ruleset: Ruleset) -> ReferralPayload:
    """Parse and validate one file as intake would on the day ``as_of``; raises :class:`InvalidReferral`."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise InvalidReferral(f"{ROOT}: cannot read the file: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidReferral(
            f"{ROOT}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # undecodable bytes
        raise InvalidReferral(f"{ROOT}: not UTF-8 JSON text: {exc}") from exc
    try:
        payload = ReferralPayload.model_validate(data, context={"today": as_of})
    except ValidationError as exc:
        raise InvalidReferral(_describe(exc)) from exc
    if payload.study is not None and payload.study != ruleset.study:
        raise InvalidReferral(
            f"study: unknown study {payload.study!r}; this rule set screens {ruleset.study}"
        )
    return payload


def _describe(exc: ValidationError) -> str:
    """Every error as ``a.b.c: reason``, joined; pydantic's own text names the model, not the field."""
    return "; ".join(f"{_json_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or ROOT


def _result(file: str, assessment: Assessment) -> dict[str, Any]:
    return {
        "file": file,
        "decision": assessment.decision,
        "score": assessment.score,
        "ruleset": assessment.ruleset_version,
        "criteria": [{"id": c.id, "verdict": c.verdict, "reason": c.reason} for c in assessment.criteria],
    }
