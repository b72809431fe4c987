"""The UCART123 criteria as code, and the packaged rule sets that parameterize them.

The logic is code, its thresholds are data: a new rules version is a new file in ``rulesets/``,
loaded by :func:`load_ruleset`. Each evaluator is registered under its criterion id of
``docs/trial/criteria.md`` with the kind it decides and the parameter model its file entry must satisfy;
compiling a rule set validates the parameters and binds them into a closure, so that assessing a
referral is plain attribute reads and comparisons, with no validation.

Three-valued logic throughout: missing data is ``unknown``, never ``not_met`` -- but a criterion
made of several facts is decided as soon as one known fact decides it (a diagnosis of ``mds`` fails
``rr_aml`` whatever the missing disease status would have been).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.eligibility.domain import (
    RULESET_VERSION_PATTERN,
    Evaluate,
    Kind,
    Outcome,
    Ruleset,
    StudySettings,
)
from shared.referral import Cd123Method, ClinicalData, Diagnosis, DiseaseStatus, ScreeningInput

__all__ = [
    "EVALUATORS",
    "available_versions",
    "compile_criterion",
    "load_ruleset",
    "months_before",
    "parse_ruleset",
]

OrganSystem = Literal["bone_marrow", "renal", "hepatic", "pulmonary", "cardiac"]
_Build = TypeVar("_Build", bound=Callable[..., Evaluate])


@dataclass(frozen=True, slots=True)
class _Registered:
    kind: Kind
    params: type[BaseModel]
    build: Callable[[Any], Evaluate]


EVALUATORS: dict[str, _Registered] = {}


def _evaluator(criterion_id: str, kind: Kind, params: type[BaseModel]) -> Callable[[_Build], _Build]:
    def register(build: _Build) -> _Build:
        EVALUATORS[criterion_id] = _Registered(kind, params, build)
        return build

    return register


def compile_criterion(criterion_id: str, kind: Kind, parameters: Mapping[str, Any]) -> Evaluate:
    """Validate a file entry against its evaluator and bind the parameters; raises ``ValueError``."""
    registered = EVALUATORS.get(criterion_id)
    if registered is None:
        raise ValueError(f"no evaluator for criterion id {criterion_id!r}")
    if registered.kind != kind:
        raise ValueError(f"criterion {criterion_id!r} is an {registered.kind} criterion, not {kind!r}")
    return registered.build(registered.params.model_validate(dict(parameters)))


def months_before(day: date, months: int) -> date:
    """The same calendar day ``months`` earlier, clamped to the month's end (31 May - 3 months = 28 Feb)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _not_given(*facts: tuple[str, object]) -> str:
    return " and ".join(name for name, value in facts if value is None) + " not given"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _NoParams(_Params):
    pass


# --- inclusion criteria ---------------------------------------------------------------------------


class AgeParams(_Params):
    min_years: int = Field(ge=0)
    max_years: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AgeParams:
        if self.min_years > self.max_years:
            raise ValueError("min_years must not exceed max_years")
        return self


@_evaluator("age", "inclusion", AgeParams)
def _age(p: AgeParams) -> Evaluate:
    low, high = p.min_years, p.max_years

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        age = inp.age_years
        if age is None:
            return "unknown", "age not given"
        if low <= age <= high:
            return "met", f"age {age} on the referral day is within {low} to {high}"
        return "not_met", f"age {age} on the referral day is outside {low} to {high}"

    return evaluate


class RrAmlParams(_Params):
    diagnoses: tuple[Diagnosis, ...] = Field(min_length=1)
    disease_statuses: tuple[DiseaseStatus, ...] = Field(min_length=1)


@_evaluator("rr_aml", "inclusion", RrAmlParams)
def _rr_aml(p: RrAmlParams) -> Evaluate:
    diagnoses, statuses = frozenset(p.diagnoses), frozenset(p.disease_statuses)
    wanted = " or ".join(s.replace("_", " ") for s in p.disease_statuses)

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        diagnosis, status = inp.clinical.diagnosis, inp.clinical.disease_status
        if diagnosis is not None and diagnosis not in diagnoses:
            return "not_met", f"diagnosis {diagnosis} is not AML"
        if status is not None and status not in statuses:
            return "not_met", f"disease_status {status} is not {wanted}"
        if diagnosis is None or status is None:
            return "unknown", _not_given(("diagnosis", diagnosis), ("disease_status", status))
        return "met", f"diagnosis {diagnosis}, disease_status {status}"

    return evaluate


class BlastParams(_Params):
    above_percent: float = Field(ge=0, le=100)


@_evaluator("marrow_blasts", "inclusion", BlastParams)
def _marrow_blasts(p: BlastParams) -> Evaluate:
    threshold = p.above_percent

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        blasts = inp.clinical.marrow_blast_percent
        if blasts is None:
            return "unknown", "marrow_blast_percent not given"
        if blasts > threshold:
            return "met", f"marrow_blast_percent {blasts:g} is more than {threshold:g}"
        return "not_met", f"marrow_blast_percent {blasts:g} is not more than {threshold:g}"

    return evaluate


class Cd123Params(_Params):
    methods: tuple[Cd123Method, ...] = Field(min_length=1)


@_evaluator("cd123_positive", "inclusion", Cd123Params)
def _cd123(p: Cd123Params) -> Evaluate:
    methods = frozenset(p.methods)
    wanted = " or ".join(m.replace("_", " ") for m in p.methods)

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        cd123 = inp.clinical.cd123
        if cd123 is None or cd123.positive is None:
            return "unknown", "cd123.positive not given"
        if not cd123.positive:
            return "not_met", f"cd123 negative (method {cd123.method or 'not given'})"
        if cd123.method in methods:
            return "met", f"cd123 positive by {cd123.method}"
        if cd123.method is None:
            return "unknown", f"cd123 positive but method not given (needs {wanted})"
        return "unknown", f"cd123 positive by {cd123.method}, not verified by {wanted}"

    return evaluate


class EcogParams(_Params):
    max: int = Field(ge=0, le=5)


@_evaluator("ecog", "inclusion", EcogParams)
def _ecog(p: EcogParams) -> Evaluate:
    highest = p.max

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        ecog = inp.clinical.ecog
        if ecog is None:
            return "unknown", "ecog not given"
        if ecog <= highest:
            return "met", f"ecog {ecog} is at most {highest}"
        return "not_met", f"ecog {ecog} is more than {highest}"

    return evaluate


class OrganParams(_Params):
    systems: tuple[OrganSystem, ...] = Field(min_length=1)


@_evaluator("organ_function", "inclusion", OrganParams)
def _organ_function(p: OrganParams) -> Evaluate:
    systems = p.systems

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        organs = inp.clinical.organ_function
        if organs is None:
            return "unknown", "organ_function not given"
        statuses = [getattr(organs, name) for name in systems]
        if statuses.count("adequate") == len(systems):
            return _organ_window(organs.assessed_on, inp.referral_day, settings.screening_window_days)
        pairs = list(zip(systems, statuses, strict=True))
        inadequate = [name for name, status in pairs if status == "inadequate"]
        if inadequate:
            return "not_met", f"organ_function inadequate: {', '.join(inadequate)}"
        undecided = [f"{name} {status or 'not given'}" for name, status in pairs if status != "adequate"]
        return "unknown", f"organ_function not known adequate: {', '.join(undecided)}"

    return evaluate


def _organ_window(assessed_on: date | None, referral_day: date, window: int) -> Outcome:
    """All systems adequate: the assessment date decides whether it is the screening-period one."""
    if assessed_on is None:
        return "unknown", "organ_function adequate but assessed_on not given"
    days = (referral_day - assessed_on).days
    if days < 0:
        return "unknown", f"organ_function assessed_on {assessed_on} is after the referral day {referral_day}"
    if days > window:
        return "unknown", (
            f"organ_function assessed_on {assessed_on} is {days} days before the referral day, "
            f"outside the {window}-day screening window"
        )
    return "met", f"organ_function adequate in all systems, assessed_on {assessed_on} ({days} days before)"


@_evaluator("donor_strategy", "inclusion", _NoParams)
def _donor_strategy(p: _NoParams) -> Evaluate:
    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        clinical = inp.clinical
        if clinical.donor_identified is True and clinical.transplant_strategy_defined is True:
            return "met", "donor_identified and transplant_strategy_defined true"
        facts = (
            ("donor_identified", clinical.donor_identified),
            ("transplant_strategy_defined", clinical.transplant_strategy_defined),
        )
        lacking = [name for name, value in facts if value is False]
        if lacking:
            return "not_met", f"{' and '.join(lacking)} false"
        return "unknown", _not_given(*facts)

    return evaluate


# --- exclusion criteria ---------------------------------------------------------------------------


class AplCnsParams(_Params):
    diagnoses: tuple[Diagnosis, ...] = Field(min_length=1)


@_evaluator("apl_or_cns", "exclusion", AplCnsParams)
def _apl_or_cns(p: AplCnsParams) -> Evaluate:
    excluded = frozenset(p.diagnoses)

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        diagnosis, cns = inp.clinical.diagnosis, inp.clinical.cns_leukemia
        if diagnosis in excluded:
            return "present", f"diagnosis {diagnosis}"
        if cns:
            return "present", "cns_leukemia true"
        if diagnosis is None or cns is None:
            return "unknown", _not_given(("diagnosis", diagnosis), ("cns_leukemia", cns))
        return "absent", f"diagnosis {diagnosis}, cns_leukemia false"

    return evaluate


def _flag(field: str, read: Callable[[ClinicalData], bool | None]) -> Evaluate:
    """An exclusion decided by one yes/no fact: true excludes, false clears, null is unknown."""

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        value = read(inp.clinical)
        if value is None:
            return "unknown", f"{field} not given"
        return ("present", f"{field} true") if value else ("absent", f"{field} false")

    return evaluate


@_evaluator("prior_gene_cell_therapy", "exclusion", _NoParams)
def _prior_gene_cell_therapy(p: _NoParams) -> Evaluate:
    def read(c: ClinicalData) -> bool | None:
        return c.prior_therapy.gene_or_cell_therapy if c.prior_therapy else None

    return _flag("prior_therapy.gene_or_cell_therapy", read)


@_evaluator("active_infection", "exclusion", _NoParams)
def _active_infection(p: _NoParams) -> Evaluate:
    def read(c: ClinicalData) -> bool | None:
        return c.active_infection

    return _flag("active_infection", read)


class AlloParams(_Params):
    excluded_from_count: int = Field(ge=1)


@_evaluator("prior_allo_sct", "exclusion", AlloParams)
def _prior_allo_sct(p: AlloParams) -> Evaluate:
    limit = p.excluded_from_count

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        prior = inp.clinical.prior_therapy
        count = prior.allogeneic_sct_count if prior else None
        if count is None:
            return "unknown", "prior_therapy.allogeneic_sct_count not given"
        if count >= limit:
            return "present", f"prior_therapy.allogeneic_sct_count {count} is {limit} or more"
        return "absent", f"prior_therapy.allogeneic_sct_count {count} is fewer than {limit}"

    return evaluate


class AntiCd20Params(_Params):
    window_months: int = Field(ge=1, le=120)


@_evaluator("recent_anti_cd20", "exclusion", AntiCd20Params)
def _recent_anti_cd20(p: AntiCd20Params) -> Evaluate:
    months = p.window_months

    def evaluate(inp: ScreeningInput, settings: StudySettings) -> Outcome:
        prior = inp.clinical.prior_therapy
        last = prior.last_anti_cd20_on if prior else None
        if last is None:
            return "unknown", "prior_therapy.last_anti_cd20_on not given"
        if isinstance(last, str):  # the only string allowed is "never"
            return "absent", "prior_therapy.last_anti_cd20_on never"
        day = inp.referral_day
        if last > day:
            return "unknown", f"prior_therapy.last_anti_cd20_on {last} is after the referral day {day}"
        cutoff = months_before(day, months)
        if last >= cutoff:
            return (
                "present",
                f"prior_therapy.last_anti_cd20_on {last} is on or after {cutoff} ({months} months)",
            )
        return "absent", f"prior_therapy.last_anti_cd20_on {last} is before {cutoff} ({months} months)"

    return evaluate


# --- packaged rule sets ---------------------------------------------------------------------------


def parse_ruleset(data: str | bytes | Mapping[str, Any]) -> Ruleset:
    """A rule set from a file's content (JSON text or parsed), compiled with these evaluators."""
    return Ruleset.build(data, compile_criterion)


def _rulesets_dir() -> Traversable:
    return resources.files("services.eligibility").joinpath("rulesets")


def _version_key(version: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.*)-v(\d+)", version)
    return (match.group(1), int(match.group(2))) if match else (version, -1)


@lru_cache(maxsize=1)
def available_versions() -> tuple[str, ...]:
    """Every packaged rule-set version, oldest first (``ucart123-v2`` after ``ucart123-v1``)."""
    names = (e.name.removesuffix(".json") for e in _rulesets_dir().iterdir() if e.name.endswith(".json"))
    return tuple(sorted(names, key=_version_key))


def load_ruleset(version: str | None = None) -> Ruleset:
    """The packaged rule set ``version``, or the newest one: a new rules version is a new file."""
    if version is None:
        versions = available_versions()
        if not versions:
            raise LookupError("no rule set is packaged")
        version = versions[-1]
    return _load(version)


@lru_cache(maxsize=16)
def _load(version: str) -> Ruleset:
    if not re.fullmatch(RULESET_VERSION_PATTERN, version):
        raise LookupError(f"not a rule-set version: {version!r}")
    entry = _rulesets_dir().joinpath(f"{version}.json")
    if not entry.is_file():
        raise LookupError(f"no rule set {version!r}; available: {', '.join(available_versions())}")
    ruleset = parse_ruleset(entry.read_bytes())
    if ruleset.version != version:
        raise ValueError(f"{version}.json declares version {ruleset.version!r}")
    return ruleset
