"""The eligibility engine: a pure function from a referral's clinical data to an assessment.

No I/O and no clock: the reference day travels in :class:`ScreeningInput`; the rule set and the
study settings are arguments. A :class:`Ruleset` is a validated rule-set file compiled into
``steps`` (criterion id, kind, cohorts, bound evaluator); ``rules.py`` supplies the evaluators and
loads the packaged files. The decision and score follow ``docs/trial/criteria.md``: a failed criterion
beats an unknown one, an unknown one beats eligibility, and the score counts only the criteria that
apply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.referral import ScreeningInput

__all__ = [
    "Assessment",
    "Cohort",
    "Criterion",
    "CriterionResult",
    "Decision",
    "Evaluate",
    "Kind",
    "Outcome",
    "Ruleset",
    "RulesetFile",
    "ScreeningInput",
    "Step",
    "StudySettings",
    "Verdict",
    "assess",
    "input_hash",
    "whole_years",
]

Verdict = Literal["met", "not_met", "absent", "present", "unknown", "not_applicable"]
Kind = Literal["inclusion", "exclusion"]
Cohort = Literal["dose_escalation", "dose_expansion"]
Decision = Literal["eligible", "ineligible", "needs_review"]
Outcome = tuple[Verdict, str]
COHORTS: tuple[str, ...] = get_args(Cohort)
RULESET_VERSION_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

_SATISFIED = frozenset({"met", "absent"})
_FAILED = frozenset({"not_met", "present"})


@dataclass(frozen=True, slots=True)
class StudySettings:
    """The study settings the sponsor may change (docs/trial/criteria.md): configuration, not rules."""

    cohort: Cohort = "dose_escalation"
    screening_window_days: int = 28
    route_needs_review: bool = True

    def __post_init__(self) -> None:
        if self.cohort not in COHORTS:
            raise ValueError(f"cohort must be one of {', '.join(COHORTS)}, not {self.cohort!r}")
        if isinstance(self.screening_window_days, bool) or not isinstance(self.screening_window_days, int):
            raise ValueError("screening_window_days must be an integer")
        if self.screening_window_days < 0:
            raise ValueError("screening_window_days must not be negative")


Evaluate = Callable[[ScreeningInput, StudySettings], Outcome]
Compiler = Callable[[str, Kind, Mapping[str, Any]], Evaluate]


# --- the rule set ---------------------------------------------------------------------------------


class Criterion(BaseModel):
    """One entry of a rule-set file: published text for staff, plain words for clinics, thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Kind
    text: str = Field(min_length=1)
    explanation: str = Field(min_length=1)
    applies_to_cohorts: tuple[Cohort, ...] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class SettingsDefaults(BaseModel):
    """The study settings as the sponsor published them; the deployment's configuration overrides them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohort: Cohort = "dose_escalation"
    screening_window_days: int = Field(default=28, ge=0)
    route_needs_review: bool = True


class RulesetFile(BaseModel):
    """The schema of a rule-set file; strict, so that a typo in a file fails loudly at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=RULESET_VERSION_PATTERN)
    study: str = Field(min_length=1)
    title: str = ""
    source: str = ""
    settings_defaults: SettingsDefaults = Field(default_factory=SettingsDefaults)
    criteria: tuple[Criterion, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> RulesetFile:
        ids = [c.id for c in self.criteria]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate criterion ids: {', '.join(duplicates)}")
        return self


@dataclass(frozen=True, slots=True)
class Step:
    """A compiled criterion: what :func:`assess` loops over."""

    id: str
    kind: Kind
    cohorts: frozenset[str] | None
    evaluate: Evaluate


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A rule set: the file's content and its compiled ``steps``, a plain tuple read per assessment."""

    version: str
    study: str
    title: str
    source: str
    settings_defaults: SettingsDefaults
    criteria: tuple[Criterion, ...]
    steps: tuple[Step, ...] = field(repr=False, compare=False)

    @classmethod
    def build(cls, data: str | bytes | Mapping[str, Any], compile_criterion: Compiler) -> Ruleset:
        """Validate a rule-set file and compile each criterion; raises ``ValueError`` naming the fault."""
        if isinstance(data, str | bytes):
            spec = RulesetFile.model_validate_json(data)
        else:
            spec = RulesetFile.model_validate(data)
        steps = tuple(_step(c, compile_criterion) for c in spec.criteria)
        return cls(
            spec.version, spec.study, spec.title, spec.source, spec.settings_defaults, spec.criteria, steps
        )

    def settings(self, **overrides: Any) -> StudySettings:
        """Study settings: this file's defaults, with the non-``None`` overrides the deployment configured."""
        values = self.settings_defaults.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return StudySettings(**values)


def _step(criterion: Criterion, compile_criterion: Compiler) -> Step:
    try:
        evaluate = compile_criterion(criterion.id, criterion.kind, criterion.parameters)
    except ValidationError as exc:
        raise ValueError(f"criterion {criterion.id!r} parameters: {exc}") from exc
    cohorts = None if criterion.applies_to_cohorts is None else frozenset(criterion.applies_to_cohorts)
    return Step(criterion.id, criterion.kind, cohorts, evaluate)


# --- the assessment -------------------------------------------------------------------------------


class CriterionResult(NamedTuple):
    """One criterion's verdict; a named tuple because twelve are built per assessment, on the hot path."""

    id: str
    kind: Kind
    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class Assessment:
    """The outcome for one referral version; ``criteria`` keeps the rule set's order."""

    ruleset_version: str
    decision: Decision
    score: float
    criteria: tuple[CriterionResult, ...]
    routable: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, for events, API responses and the offline evaluator."""
        return {
            "ruleset_version": self.ruleset_version,
            "decision": self.decision,
            "score": self.score,
            "routable": self.routable,
            "criteria": [c._asdict() for c in self.criteria],
        }


def whole_years(born: date, on: date) -> int:
    """Age in completed years on a day; someone born on 29 February turns a year older on 1 March."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def input_hash(inp: ScreeningInput) -> str:
    """SHA-256 of the input in canonical JSON (sorted keys, absent fields as null), so that the same
    facts sent twice, in any key order, are recognised as the same input."""
    canonical = json.dumps(
        inp.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def assess(inp: ScreeningInput, ruleset: Ruleset, settings: StudySettings) -> Assessment:
    """Evaluate every criterion of ``ruleset`` on ``inp`` and decide; never raises on missing data."""
    cohort = settings.cohort
    results: list[CriterionResult] = []
    satisfied = applicable = 0
    failed = unknown = False
    for step in ruleset.steps:
        if step.cohorts is not None and cohort not in step.cohorts:
            verdict: Verdict = "not_applicable"
            reason = f"applies only to the {' or '.join(sorted(step.cohorts))} cohort; enrolling {cohort}"
        else:
            verdict, reason = step.evaluate(inp, settings)
            applicable += 1
            if verdict in _SATISFIED:
                satisfied += 1
            elif verdict in _FAILED:
                failed = True
            else:
                unknown = True
        results.append(CriterionResult(step.id, step.kind, verdict, reason))
    decision: Decision = "ineligible" if failed else "needs_review" if unknown else "eligible"
    return Assessment(
        ruleset_version=ruleset.version,
        decision=decision,
        score=round(satisfied / applicable, 4) if applicable else 0.0,
        criteria=tuple(results),
        routable=decision == "eligible" or (decision == "needs_review" and settings.route_needs_review),
    )
