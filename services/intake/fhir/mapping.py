"""A referral Bundle read into the JSON API's ``ReferralCreate``, or every element that cannot be.

Pure: no I/O. The Bundle is first validated as FHIR (``fhir.resources`` R4B models), then read element
by element into the JSON contract's shape, then validated as that contract (``ReferralCreate``), so a
FHIR referral is screened exactly as its JSON twin. Each field of the result remembers the FHIR path it
came from (``Mapped.sources``): a later refusal of a field (the study, a birth date after today) is
reported at the element the clinic sent. What cannot be read is collected, never guessed, and raised
together as ``Unmappable``. The rules are the table of docs/fhir.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from services.intake.fhir import codes
from services.intake.schemas import ReferralCreate

__all__ = ["Issue", "Mapped", "Unmappable", "fhir_path", "map_bundle", "parse_bundle"]

BUNDLE_TYPE = "collection"
"""The Bundle carries facts about one referral; nothing in it is created as a resource of its own."""
IGNORED_OBSERVATION_STATUS = frozenset({"registered", "cancelled", "entered-in-error"})
"""Observations without a valid result: read as absent (the fact is unknown)."""
_VALUES = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Issue:
    """One element that cannot be read: its FHIRPath (or an HTTP header's ``http.<name>``) and why."""

    expression: str
    reason: str


class Unmappable(Exception):
    """The Bundle cannot become a referral; ``issues`` names every offending element."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        super().__init__(f"{len(issues)} unmappable element(s)")
        self.issues = list(issues)


@dataclass(frozen=True)
class Mapped:
    """The referral a Bundle says, and where each of its fields came from."""

    referral: ReferralCreate
    sources: dict[str, str]

    def expression(self, field_path: str) -> str:
        """The FHIR path of a referral field (``patient.date_of_birth``): its own, or its section's."""
        return _source(self.sources, field_path.split("."))


def fhir_path(loc: Iterable[int | str], root: str = "Bundle") -> str:
    """A pydantic error location in a fhir.resources model as a FHIRPath: ``Bundle.entry[2].resource...``.

    fhir.resources spells ``resourceType`` as ``resource_type``, reserved words with a ``_fhir`` suffix and
    primitive extensions with ``__ext``; pydantic adds the names of union branches, which are dropped.
    """
    parts = [root]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        elif _NAME.match(item):
            if item.endswith("__ext"):
                item = "_" + item.removesuffix("__ext")
            parts.append({"resource_type": "resourceType"}.get(item, item.removesuffix("_fhir")))
    return ".".join(parts)


def parse_bundle(raw: Any) -> Bundle:
    """The body as an R4 Bundle (``Unmappable`` with FHIR paths when it is not one)."""
    if not isinstance(raw, dict):
        raise Unmappable([Issue("Bundle", "expected a JSON object: a FHIR Bundle")])
    if raw.get("resourceType") != "Bundle":
        raise Unmappable([Issue("Bundle.resourceType", "expected a Bundle")])
    issues = []
    entries = raw.get("entry")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            kind = resource.get("resourceType")
            try:  # fhir.resources cannot say this in a ValidationError (it raises KeyError)
                get_fhir_model_class(str(kind))
            except (KeyError, ValueError):
                issues.append(
                    Issue(f"Bundle.entry[{i}].resource.resourceType", f"not an R4 resource type: {kind}")
                )
    if issues:
        raise Unmappable(issues)
    try:
        return Bundle.model_validate(raw)
    except ValidationError as exc:
        raise Unmappable([Issue(fhir_path(e["loc"]), e["msg"]) for e in exc.errors()]) from None
    except (KeyError, TypeError, ValueError) as exc:  # what fhir.resources raises outside pydantic
        raise Unmappable([Issue("Bundle", f"not a valid R4 Bundle ({type(exc).__name__})")]) from None


def map_bundle(raw: Any) -> Mapped:
    """The referral of a referral Bundle (docs/fhir.md); ``Unmappable`` lists what cannot be read."""
    reader = _Reader(parse_bundle(raw))
    body = reader.read()
    try:
        referral = ReferralCreate.model_validate(body)
    except ValidationError as exc:
        for error in exc.errors():
            where = _source(reader.sources, [str(p) for p in error["loc"]])
            reader.issues.append(Issue(where, error["msg"]))
        referral = None
    if reader.issues or referral is None:
        raise Unmappable(_unique(reader.issues))
    return Mapped(referral, reader.sources)


def _source(sources: dict[str, str], parts: Sequence[str]) -> str:
    for end in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:end]))
        if found:
            return found
    return "Bundle"


def _unique(issues: Iterable[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    return [(c.system, c.code) for c in (getattr(concept, "coding", None) or [])]


def _has(concept: Any, system: str, code: str) -> bool:
    return (system, code) in _codings(concept)


def _day(value: Any) -> str | None:
    """A FHIR date or dateTime as the contract's day; a partial date (``2026-11``) is not one."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return None


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


@dataclass
class _Reader:
    bundle: Bundle
    issues: list[Issue] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    by_type: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, entry in enumerate(self.bundle.entry or []):
            if entry.resource is not None:
                kind = entry.resource.get_resource_type()
                self.by_type.setdefault(kind, []).append((f"Bundle.entry[{i}].resource", entry.resource))

    def issue(self, expression: str, reason: str) -> None:
        self.issues.append(Issue(expression, reason))

    def source(self, field_path: str, expression: str) -> None:
        self.sources[field_path] = expression

    def one(self, kind: str, why: str) -> tuple[str, Any] | None:
        """The Bundle's only resource of a kind; an issue when there is none (``why`` it is needed)."""
        found = self.by_type.get(kind, [])
        if not found:
            if why:
                self.issue("Bundle.entry", f"a {kind} is required: {why}")
            return None
        for path, _ in found[1:]:
            self.issue(path, f"a second {kind}; a referral Bundle holds one")
        return found[0]

    def resolve(self, reference: Any, kind: str) -> tuple[str, Any] | None:
        """The entry a Reference points at, by ``fullUrl`` or ``Kind/id``."""
        target = getattr(reference, "reference", None)
        for i, entry in enumerate(self.bundle.entry or []):
            resource = entry.resource
            if target and resource is not None and resource.get_resource_type() == kind:
                if target in (entry.fullUrl, f"{kind}/{resource.id}"):
                    return f"Bundle.entry[{i}].resource", resource
        return None

    # --- the referral --------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        if self.bundle.type != BUNDLE_TYPE:
            self.issue("Bundle.type", f"expected {BUNDLE_TYPE!r}: the referral's facts, in one Bundle")
        body: dict[str, Any] = {}
        request = self.one("ServiceRequest", "the referral itself")
        condition = None
        if request is not None:
            self._request(body, *request)
            condition = self._condition_of(*request)
        body["patient"] = self._patient()
        body["referrer"] = self._referrer()
        clinical: dict[str, Any] = {}
        if condition is not None:
            self._condition(clinical, *condition)
        self._observations(clinical)
        body["clinical"] = clinical
        return body

    def _request(self, body: dict[str, Any], path: str, request: Any) -> None:
        if request.status != "active":
            self.issue(f"{path}.status", f"expected 'active', not {request.status!r}: a referral to act on")
        identifiers = request.identifier or []
        placer = [
            i for i, ident in enumerate(identifiers) if _has(ident.type, codes.IDENTIFIER_TYPE, codes.PLACER)
        ]
        index = placer[0] if placer else (0 if len(identifiers) == 1 else None)
        self.source("clinic_reference", f"{path}.identifier[{index or 0}].value")
        if index is None and identifiers:
            self.issue(f"{path}.identifier", "several identifiers: type the clinic's own one PLAC (v2-0203)")
        elif index is not None:
            _put(body, "clinic_reference", identifiers[index].value)
        uris = list(request.instantiatesUri or [])
        self.source("study", f"{path}.instantiatesUri[0]")
        ours = [(i, u) for i, u in enumerate(uris) if u and u.startswith(codes.STUDY_PREFIX)]
        if ours:
            self.source("study", f"{path}.instantiatesUri[{ours[0][0]}]")
            body["study"] = ours[0][1].removeprefix(codes.STUDY_PREFIX)
        elif uris:
            self.issue(
                f"{path}.instantiatesUri[0]", f"names no study: expected {codes.STUDY_PREFIX}<study id>"
            )

    def _condition_of(self, path: str, request: Any) -> tuple[str, Any] | None:
        """The referral's Condition: the one ``reasonReference`` names, else the Bundle's only one."""
        for i, reference in enumerate(request.reasonReference or []):
            found = self.resolve(reference, "Condition")
            if found is not None:
                return found
            if (reference.reference or "").startswith("Condition") or reference.type == "Condition":
                self.issue(f"{path}.reasonReference[{i}]", "names no Condition of this Bundle")
                return None
        conditions = self.by_type.get("Condition", [])
        if len(conditions) > 1:
            self.issue(f"{path}.reasonReference", "several Conditions: name the referral's one here")
            return None
        return conditions[0] if conditions else None

    def _patient(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        found = self.one("Patient", "the patient referred")
        consent = self._consent()
        _put(out, "consent_to_contact", consent)
        if found is None:
            return out
        path, patient = found
        names = patient.name or []
        n = next((i for i, x in enumerate(names) if x.use == "official"), 0)
        self.source("patient.given_name", f"{path}.name[{n}].given")
        self.source("patient.family_name", f"{path}.name[{n}].family")
        if names:
            _put(out, "given_name", " ".join(g for g in names[n].given or [] if g) or None)
            _put(out, "family_name", names[n].family)
        self.source("patient.date_of_birth", f"{path}.birthDate")
        if patient.birthDate is not None:
            born = _day(patient.birthDate)
            if born is None:
                self.issue(f"{path}.birthDate", "a whole date (YYYY-MM-DD) is needed")
            _put(out, "date_of_birth", born)
        self.source("patient.sex", f"{path}.gender")
        _put(out, "sex", patient.gender)
        self._telecom(out, "patient", path, patient.telecom)
        languages = patient.communication or []
        k = next((i for i, c in enumerate(languages) if c.preferred), 0)
        self.source("patient.preferred_language", f"{path}.communication[{k}].language")
        if languages:
            language = languages[k].language
            _put(out, "preferred_language", next((code for _, code in _codings(language) if code), None))
        addresses = patient.address or []
        a = next((i for i, x in enumerate(addresses) if x.use == "home"), 0)
        self.source("patient.postal_code", f"{path}.address[{a}].postalCode")
        self.source("patient.country", f"{path}.address[{a}].country")
        if addresses:
            _put(out, "postal_code", addresses[a].postalCode)
            _put(out, "country", addresses[a].country)
        self.source("patient", path)
        return out

    def _consent(self) -> bool | None:
        """Whether the patient may be contacted: an active Consent that permits."""
        found = self.one("Consent", "whether the patient may be contacted (provision.type permit or deny)")
        if found is None:
            self.source("patient.consent_to_contact", "Bundle.entry")
            return None
        path, consent = found
        self.source("patient.consent_to_contact", f"{path}.provision.type")
        kind = consent.provision.type if consent.provision is not None else None
        if kind is None:
            self.issue(f"{path}.provision.type", "permit or deny is required")
            return None
        return bool(consent.status == "active" and kind == "permit")

    def _telecom(
        self, out: dict[str, Any], section: str, path: str, telecom: Any, *, only_missing: bool = False
    ) -> None:
        """The first email and phone of a ``telecom`` (not ``old`` ones); with ``only_missing``, only
        those ``out`` lacks."""
        for key in ("email", "phone"):
            if only_missing and key in out:
                continue
            points = [i for i, t in enumerate(telecom or []) if t.system == key and t.use != "old"]
            if points or not only_missing:
                self.source(f"{section}.{key}", f"{path}.telecom[{points[0] if points else 0}].value")
            if points:
                _put(out, key, telecom[points[0]].value)

    def _referrer(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        role = self.one("PractitionerRole", "the referring professional")
        practitioner = self.one("Practitioner", "")
        if role is None:
            self.source("referrer", "Bundle.entry")
            return out
        role_path, role_resource = role
        self.source("referrer", role_path)
        self.source("referrer.name", f"{role_path}.practitioner.display")
        if practitioner is not None:
            path, person = practitioner
            names = person.name or []
            self.source("referrer.name", f"{path}.name[0]")
            if names:
                name = names[0]
                words = [*(name.prefix or []), *(name.given or []), name.family, *(name.suffix or [])]
                _put(out, "name", name.text or " ".join(w for w in words if w) or None)
        elif role_resource.practitioner is not None:
            _put(out, "name", role_resource.practitioner.display)
        self._telecom(out, "referrer", role_path, role_resource.telecom)
        if practitioner is not None:  # the role's contact first: it is the professional one
            self._telecom(out, "referrer", practitioner[0], practitioner[1].telecom, only_missing=True)
        return out

    # --- clinical facts ----------------------------------------------------------------------------------

    def _condition(self, clinical: dict[str, Any], path: str, condition: Any) -> None:
        self.source("clinical.diagnosis", f"{path}.code")
        if condition.code is not None:
            known = [
                codes.DIAGNOSES[code]
                for system, code in _codings(condition.code)
                if system == codes.SNOMED and code in codes.DIAGNOSES
            ]
            if _has(condition.code, codes.REFERRAL, codes.OTHER_DIAGNOSIS):
                known.append("other")
            if len(set(known)) == 1:
                clinical["diagnosis"] = known[0]
            else:
                accepted = ", ".join(f"{c} ({d})" for c, d in codes.DIAGNOSES.items())
                why = "codes of several diagnoses" if known else "no known diagnosis code"
                self.issue(
                    f"{path}.code",
                    f"{why}: SNOMED CT {accepted}, or {codes.REFERRAL}#{codes.OTHER_DIAGNOSIS}",
                )
        stated: list[tuple[str, str]] = []
        for i, stage in enumerate(condition.stage or []):
            for system, code in _codings(stage.summary):
                if system == codes.REFERRAL and code in codes.DISEASE_STATUS:
                    stated.append((f"{path}.stage[{i}].summary", codes.DISEASE_STATUS[code]))
        for system, code in _codings(condition.clinicalStatus):
            if system == codes.CONDITION_CLINICAL and code in codes.CLINICAL_STATUS:
                stated.append((f"{path}.clinicalStatus", codes.CLINICAL_STATUS[code]))
        self.source("clinical.disease_status", stated[0][0] if stated else f"{path}.stage[0].summary")
        if len({status for _, status in stated}) > 1:
            self.issue(stated[0][0], "disagrees with " + stated[-1][0] + " on the disease status")
        elif stated:
            clinical["disease_status"] = stated[0][1]

    def _observations(self, clinical: dict[str, Any]) -> None:
        seen: dict[tuple[str, str], str] = {}
        organ: dict[str, Any] = {}
        organ_days: list[tuple[str, str]] = []
        prior: dict[str, Any] = {}
        for path, obs in self.by_type.get("Observation", []):
            if obs.status in IGNORED_OBSERVATION_STATUS:
                continue
            key = next(
                (
                    (system, code)
                    for system, code in _codings(obs.code)
                    if (system == codes.LOINC and code in (codes.MARROW_BLASTS, codes.ECOG))
                    or (system == codes.REFERRAL and code is not None)
                ),
                None,
            )
            if key is None:
                continue  # another fact (a lab, a finding): not part of the referral
            if key in seen:
                self.issue(f"{path}.code", f"a second Observation of {key[1]} (the first: {seen[key]})")
                continue
            seen[key] = path
            self._observation(clinical, organ, organ_days, prior, path, obs, key[1])
        if organ_days:
            where, day = min(organ_days, key=lambda item: item[1])  # the oldest: the conservative one
            organ["assessed_on"] = day
            self.source("clinical.organ_function.assessed_on", where)
        if organ:
            clinical["organ_function"] = organ
        if prior:
            clinical["prior_therapy"] = prior

    def _observation(
        self,
        clinical: dict[str, Any],
        organ: dict[str, Any],
        organ_days: list[tuple[str, str]],
        prior: dict[str, Any],
        path: str,
        obs: Any,
        code: str,
    ) -> None:
        if code == codes.MARROW_BLASTS:
            self.source("clinical.marrow_blast_percent", f"{path}.valueQuantity.value")
            quantity = self._value(path, obs, "valueQuantity")
            if quantity is not None:
                unit = quantity.code or quantity.unit
                if unit not in (None, "%"):
                    self.issue(f"{path}.valueQuantity.code", f"expected % (UCUM), not {unit}")
                value = quantity.value
                _put(clinical, "marrow_blast_percent", float(value) if isinstance(value, Decimal) else value)
            self._effective(clinical, "clinical.marrow_assessed_on", "marrow_assessed_on", path, obs)
        elif code == codes.ECOG:
            self.source("clinical.ecog", f"{path}.valueInteger")
            _put(clinical, "ecog", self._value(path, obs, "valueInteger"))
        elif code == codes.CD123:
            self._cd123(clinical, path, obs)
        elif code in codes.ORGAN_SYSTEMS:
            system = codes.ORGAN_SYSTEMS[code]
            self.source(f"clinical.organ_function.{system}", f"{path}.valueCodeableConcept")
            concept = self._value(path, obs, "valueCodeableConcept")
            if concept is not None:
                verdicts = [
                    c for s, c in _codings(concept) if s == codes.REFERRAL and c in codes.ORGAN_STATUS
                ]
                if verdicts:
                    organ[system] = verdicts[0]
                else:
                    expected = ", ".join(codes.ORGAN_STATUS)
                    self.issue(f"{path}.valueCodeableConcept", f"expected {codes.REFERRAL}#({expected})")
            day = _day(obs.effectiveDateTime)
            if day is not None:
                organ_days.append((f"{path}.effectiveDateTime", day))
            elif obs.effectiveDateTime is not None:
                self.issue(f"{path}.effectiveDateTime", "a whole date is needed")
        elif code in codes.BOOLEAN_FACTS:
            where = codes.BOOLEAN_FACTS[code]
            self.source("clinical." + ".".join(where), f"{path}.valueBoolean")
            target = prior if where[0] == "prior_therapy" else clinical
            _put(target, where[-1], self._value(path, obs, "valueBoolean"))
        elif code == codes.ALLOGENEIC_SCT_COUNT:
            self.source("clinical.prior_therapy.allogeneic_sct_count", f"{path}.valueInteger")
            _put(prior, "allogeneic_sct_count", self._value(path, obs, "valueInteger"))
        elif code == codes.LAST_ANTI_CD20:
            self._anti_cd20(prior, path, obs)
        else:
            self.issue(f"{path}.code", f"{code} is not a code of {codes.REFERRAL} for an Observation")

    def _cd123(self, clinical: dict[str, Any], path: str, obs: Any) -> None:
        cd123: dict[str, Any] = {}
        self.source("clinical.cd123.positive", f"{path}.valueCodeableConcept")
        concept = self._value(path, obs, "valueCodeableConcept")
        if concept is not None:
            if _has(concept, codes.SNOMED, codes.POSITIVE):
                cd123["positive"] = True
            elif _has(concept, codes.SNOMED, codes.NEGATIVE):
                cd123["positive"] = False
            else:
                self.issue(
                    f"{path}.valueCodeableConcept",
                    f"expected SNOMED CT {codes.POSITIVE} (positive) or {codes.NEGATIVE} (negative)",
                )
        self.source("clinical.cd123.method", f"{path}.method")
        if obs.method is not None:
            methods = {
                codes.CD123_METHODS[c]
                if s == codes.REFERRAL and c in codes.CD123_METHODS
                else "immunohistochemistry"
                if s == codes.SNOMED and c == codes.IMMUNOHISTOCHEMISTRY
                else "other"
                if s == codes.REFERRAL and c == codes.OTHER_METHOD
                else None
                for s, c in _codings(obs.method)
            } - {None}
            if len(methods) == 1:
                cd123["method"] = methods.pop()
            else:
                accepted = ", ".join([*codes.CD123_METHODS, codes.OTHER_METHOD])
                self.issue(f"{path}.method", f"expected one method: {codes.REFERRAL}#({accepted})")
        if cd123:
            clinical["cd123"] = cd123

    def _anti_cd20(self, prior: dict[str, Any], path: str, obs: Any) -> None:
        self.source("clinical.prior_therapy.last_anti_cd20_on", f"{path}.valueDateTime")
        value = self._value(path, obs, "valueDateTime", "valueCodeableConcept")
        if value is None:
            return
        if isinstance(value, datetime | date):
            _put(prior, "last_anti_cd20_on", _day(value))
        elif _has(value, codes.REFERRAL, codes.NEVER):
            prior["last_anti_cd20_on"] = codes.NEVER
        elif not isinstance(value, str):
            self.issue(f"{path}.valueCodeableConcept", f"expected {codes.REFERRAL}#{codes.NEVER}")
        else:
            self.issue(f"{path}.valueDateTime", "a whole date is needed")

    def _effective(self, clinical: dict[str, Any], field_path: str, key: str, path: str, obs: Any) -> None:
        self.source(field_path, f"{path}.effectiveDateTime")
        if obs.effectiveDateTime is not None:
            day = _day(obs.effectiveDateTime)
            if day is None:
                self.issue(f"{path}.effectiveDateTime", "a whole date is needed")
            _put(clinical, key, day)

    def _value(self, path: str, obs: Any, *expected: str) -> Any:
        """The Observation's ``value[x]`` when it is of an ``expected`` kind; ``None`` when absent (the fact
        is unknown, e.g. with a ``dataAbsentReason``) or of another kind (an issue)."""
        present = [name for name in _VALUES if getattr(obs, name, None) is not None]
        if not present:
            return None
        if present[0] not in expected:
            self.issue(f"{path}.{present[0]}", f"expected {' or '.join(expected)} for this code")
            return None
        return getattr(obs, present[0])
