"""Bad input at both doors of the running system: generated requests to every documented operation of
every service, and unreadable records on every topic a service consumes.

HTTP: schemathesis builds requests from each service's own ``/openapi.json`` (the document's examples,
valid and invalid generated requests, and valid ones with a value no store can hold: a NUL in a
string, an integer past 64 bits), sent with a token that has the operation's scopes. No answer may be
a 5xx, and every 4xx must be an RFC 9457 problem (``application/problem+json`` with ``status`` and
``title``), except the token endpoint's 400/401, which are RFC 6749 error JSON, and intake's FHIR
routes' (``/fhir/r4/...``), which are FHIR OperationOutcomes. Valid requests get
real path parameters (a referral and a site of this test's own), to get past the 404s.

Kafka: records that can never be handled go to ``<topic>.dlq`` once per consumer group reading the
topic, with the error, and the partition moves on: events written after them are handled.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from requests.adapters import HTTPAdapter
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error

from services.devstack.stack import SERVICES, Stack, site_codes
from shared.auth import Scope, bearer_scheme
from shared.dead_letters import DeadLetter, list_dead_letters
from shared.events import EVENT_TYPES
from shared.kafka import new_producer
from shared.problems import PROBLEM_JSON
from tests.support.auth import Issuer
from tests.support.builders import sample_referral
from tests.support.system import Client, consumer_group
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 25
"""Valid and as many invalid requests per operation: enough to find the bugs it found, quick in CI."""
FUZZ_ADDRESS = "127.0.0.2"
"""The fuzzer's own loopback source address: the auth service's login throttle and the site finder's
rate limit, which it trips on purpose, count per address and must not lock out the other tests."""
TOKEN_ENDPOINT = "/oauth/token"
SCHEME = bearer_scheme.scheme_name
FUZZ_SITE = "FUZZ"
SEED_SITES = frozenset(site_codes())
"""The study's sites, which the rest of the suite routes to: never changed by the fuzzer."""


@dataclass(frozen=True)
class Principal:
    client_id: str
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    clinic_id: str | None = None
    site_code: str | None = None


CLINIC = Principal(
    "fuzz-clinic",
    frozenset({Scope.REFERRALS_WRITE, Scope.REFERRALS_READ, Scope.ASSESSMENTS_READ}),
    ("intake", "eligibility"),
    clinic_id="fuzz-clinic",
)
OPS = Principal(
    "fuzz-ops",
    frozenset({Scope.OPS, Scope.SITES_ADMIN, Scope.CONTACT_READ}),
    ("intake", "site_router", "notifier"),
)


def coordinator(site: str) -> Principal:
    return Principal(
        f"fuzz-coordinator-{site.lower()}",
        frozenset({Scope.SITE_REFERRALS, Scope.SITE_CONTACT, Scope.ASSESSMENTS_READ}),
        ("site_router", "eligibility", "intake"),
        site_code=site,
    )


@dataclass
class Target:
    """One service as the fuzzer sees it: where, with which tokens, and real path parameter values."""

    service: str
    base_url: str
    tokens: list[tuple[frozenset[str], str]]
    seeds: dict[str, Any]

    def headers(self, security: list[dict[str, list[str]]]) -> dict[str, str]:
        """A token holding one of the operation's alternative scope sets, if any is needed."""
        for scopes, token in self.tokens:
            if any(set(requirement.get(SCHEME, ())) <= scopes for requirement in security):
                return {"Authorization": f"Bearer {token}"}
        return {}


class Fuzzer:
    """Registers the fuzzing clients, makes the referrals and the site the path parameters point at,
    and afterwards withdraws, closes and frees what the fuzzing left open."""

    def __init__(self, system: Stack, registry: Issuer, http: httpx.AsyncClient) -> None:
        self.system = system
        self.registry = registry
        self.http = http
        self.referrals: dict[str, tuple[str, str]] = {}

    async def target(self, service: str) -> Target:
        """The notifier's notification ids stay random: a real one's retry can only be refused."""
        seeds: dict[str, Any] = {}
        principals = [CLINIC, OPS]
        if service in ("intake", "eligibility", "site_router"):
            # intake's fuzzing amends and withdraws its referral: the others share one of their own.
            rid, site = await self.referral("intake" if service == "intake" else "shared")
            seeds["referral_id"] = rid
            principals.insert(1, coordinator(site))
        if service == "site_router":
            seeds["code"] = await self.fuzz_site()
        tokens = []
        for principal in principals:
            if service in principal.audiences:
                tokens.append((principal.scopes, await self.token(principal, service)))
        return Target(service, self.system.config.url(service), tokens, seeds)

    async def token(self, principal: Principal, audience: str) -> str:
        await self.registry.register(
            principal.client_id,
            sorted(principal.scopes),
            audiences=principal.audiences,
            clinic_id=principal.clinic_id,
            site_code=principal.site_code,
        )
        return await self.registry.fetch_token(self.http, principal.client_id, audience)

    async def headers(self, principal: Principal, audience: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(principal, audience)}"}

    async def referral(self, name: str) -> tuple[str, str]:
        """A referral of the fuzzing clinic, notified: its id and its site."""
        if name not in self.referrals:
            url = f"{self.system.config.url('intake')}/v1/referrals"
            headers = await self.headers(CLINIC, "intake")
            response = await self.http.post(url, json=sample_referral(), headers=headers)
            assert response.status_code == 202, response.text
            rid = str(response.json()["id"])

            async def notified() -> dict[str, Any] | None:
                current = (await self.http.get(f"{url}/{rid}", headers=headers)).json()
                return current if current["status"] == "notified" else None

            current = await eventually(notified, within=60, what="the fuzzing referral to be notified")
            self.referrals[name] = (rid, current["site"]["code"])
        return self.referrals[name]

    async def fuzz_site(self) -> str:
        """A paused site without capacity, far from every referral: the fuzzer's to change."""
        response = await self.http.post(
            f"{self.system.config.url('site_router')}/v1/sites",
            json={
                "code": FUZZ_SITE,
                "name": "Fuzzing site",
                "city": "Anchorage",
                "postal_code": "99501",
                "country": "US",
                "coordinator_email": "fuzz@sites.example.org",
                "capacity": 0,
                "status": "paused",
            },
            headers=await self.headers(OPS, "site_router"),
        )
        assert response.status_code in (201, 409), response.text
        return FUZZ_SITE

    async def clean_up(self) -> None:
        """Free every slot the fuzzing holds: close at the site what it may have accepted, withdraw the
        clinic's open referrals, and close every site but the study's."""
        intake = f"{self.system.config.url('intake')}/v1/referrals"
        for rid, site in self.referrals.values():
            await self.http.post(
                f"{self.system.config.url('site_router')}/v1/site/referrals/{rid}/close",
                json={"enrolled": False, "reason": "fuzzing is over"},
                headers=await self.headers(coordinator(site), "site_router"),
            )
        headers = await self.headers(CLINIC, "intake")
        cursor: str | None = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = (await self.http.get(intake, params=params, headers=headers)).json()
            for item in page["items"]:
                if item["status"] not in ("withdrawn", "closed", "accepted"):
                    await self.http.post(f"{intake}/{item['id']}/withdraw", json={}, headers=headers)
            cursor = page.get("next_cursor")
            if not cursor:
                break
        sites = f"{self.system.config.url('site_router')}/v1/sites"
        ops = await self.headers(OPS, "site_router")
        for site in (await self.http.get(sites, headers=ops)).json():
            if site["code"] not in SEED_SITES and site["status"] != "closed":
                await self.http.post(f"{sites}/{site['code']}/close", headers=ops)


@pytest.fixture(scope="module")
async def fuzzer(system: Stack, registry: Issuer) -> AsyncIterator[Fuzzer]:
    async with httpx.AsyncClient(timeout=30) as http:
        fuzzer = Fuzzer(system, registry, http)
        yield fuzzer
        await fuzzer.clean_up()


@pytest.mark.parametrize("service", SERVICES)
async def test_generated_requests_get_no_server_error_and_only_problem_details(
    service: str, fuzzer: Fuzzer
) -> None:
    target = await fuzzer.target(service)
    sent, findings = await asyncio.to_thread(fuzz, target)
    assert sent > 0
    assert not findings, f"{len(findings)} of {sent} requests to {service}:\n\n" + "\n\n".join(findings)


def fuzz(target: Target) -> tuple[int, list[str]]:
    """Every operation: first the unstorable values (refused, they change nothing), then the generated
    cases. Returns how many requests were sent and a readable report per bad answer."""
    schema = schemathesis.openapi.from_url(f"{target.base_url}/openapi.json")
    session = requests.Session()
    session.mount("http://", _FromAddress(FUZZ_ADDRESS))
    findings: list[str] = []
    sent = 0
    operations = [result.ok() for result in schema.get_all_operations()]

    def send(case: Case, phase: str) -> None:
        nonlocal sent
        sent += 1
        headers = target.headers(case.operation.definition.raw.get("security", []))
        try:
            response = case.call(base_url=target.base_url, session=session, headers=headers)
            case.validate_response(response, checks=[not_a_server_error, problem_details], headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is the latter
            lines = [line for line in str(exc).splitlines() if line.strip()][:12]
            findings.append(f"{case.operation.label} [{phase}]\n    " + "\n    ".join(lines))

    for op in operations:
        for variant, where in unstorable_variants(op, _bases(schema, op, target.seeds), target.seeds):
            send(variant, f"unstorable {where}")
    for op in operations:
        for phase, strategy, count in _strategies(schema, op, target.seeds):
            explore(strategy, lambda case, phase=phase: send(case, phase), count)
    return sent, findings


def problem_details(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 4xx is an RFC 9457 problem with its status and title; the token endpoint's 400 and 401 are
    RFC 6749 errors (``{"error": ...}``), which OAuth2 client libraries expect; the FHIR routes' are
    OperationOutcomes."""
    if not 400 <= response.status_code < 500 or _breaks_http_framing(case):
        return None
    media_type = str((response.headers.get("content-type") or [""])[0]).split(";")[0].strip()
    try:
        body = response.json()
    except ValueError:
        body = None
    if case.path == TOKEN_ENDPOINT and response.status_code in (400, 401):
        assert media_type == "application/json", f"an RFC 6749 error as {media_type!r}"
        assert isinstance(body, dict) and isinstance(body.get("error"), str), "no RFC 6749 'error'"
        return None
    if case.path.startswith("/fhir/"):  # the FHIR routes' errors are OperationOutcomes
        assert media_type == "application/fhir+json", f"a FHIR {response.status_code} as {media_type!r}"
        assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", (
            "no OperationOutcome"
        )
        assert body.get("issue"), "an OperationOutcome without issues"
        return None
    assert media_type == PROBLEM_JSON, f"a {response.status_code} as {media_type!r}, not {PROBLEM_JSON}"
    assert isinstance(body, dict), "a problem that is not a JSON object"
    assert body.get("status") == response.status_code, f"problem status {body.get('status')!r}"
    assert isinstance(body.get("title"), str) and body["title"], "a problem without a title"
    return None


def _breaks_http_framing(case: Case) -> bool:
    """A generated Content-Length that is no number (or a Transfer-Encoding) makes the request unreadable
    as HTTP: the server's parser answers 400 before any application sees it, and cannot know the problem
    format of a route it never reached."""
    headers = {str(k).lower(): str(v) for k, v in (case.headers or {}).items()}
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and not length.strip().isdigit())


def _strategies(schema: Any, op: Any, seeds: dict[str, Any]) -> Iterator[tuple[str, Any, int]]:
    """The document's examples (a few of each), then valid requests (with the path parameters the test
    owns, which get them past the 404) and invalid ones; never one that names a study site."""
    wanted = {k: v for k, v in seeds.items() if "{" + k + "}" in op.path} or None
    strategies = [("examples", s, 3) for s in schema.get_strategies_from_examples(op)]
    strategies.append(
        ("valid", op.as_strategy(GenerationMode.POSITIVE, path_parameters=wanted), MAX_EXAMPLES)
    )
    strategies.append(("invalid", op.as_strategy(GenerationMode.NEGATIVE), MAX_EXAMPLES))
    for phase, strategy, count in strategies:
        yield phase, strategy.filter(_spares_study_sites), count


def _spares_study_sites(case: Case) -> bool:
    return case.path_parameters.get("code") not in SEED_SITES


def explore(strategy: Any, each: Callable[[Case], None], max_examples: int = MAX_EXAMPLES) -> None:
    """Run ``each`` on up to ``max_examples`` cases: reproducible, never shrunk (``each`` records
    failures rather than raising them)."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case) -> None:
        each(case)

    try:
        run()
    except Unsatisfiable:
        pass  # no such case exists, e.g. an invalid request to an operation without parameters


def _bases(schema: Any, op: Any, seeds: dict[str, Any]) -> list[Case]:
    """Valid requests to spoil (not sent): one of the document's examples, and of six generated ones
    the two with the most strings (optional fields included)."""
    examples: list[Case] = []
    generated: list[Case] = []
    wanted = {k: v for k, v in seeds.items() if "{" + k + "}" in op.path} or None
    for strategy in schema.get_strategies_from_examples(op):
        explore(strategy.filter(_spares_study_sites), examples.append, max_examples=1)
    explore(op.as_strategy(path_parameters=wanted).filter(_spares_study_sites), generated.append, 6)
    generated.sort(key=lambda case: -len(list(_strings(case.body))))
    return examples[:1] + generated[:2]


def unstorable_variants(op: Any, bases: list[Case], seeds: dict[str, Any]) -> Iterator[tuple[Case, str]]:
    """Each string of a request's JSON or form body and query with a NUL appended, and each integer
    parameter set to 2**63; with the owned path parameters and no generated headers (an example's
    Idempotency-Key would answer first). Yields the request and what was spoilt."""
    seen: set[str] = set()
    owned = {k: v for k, v in seeds.items() if "{" + k + "}" in op.path}
    for base in bases:
        path = {**base.path_parameters, **owned}
        body = base.body if isinstance(base.body, dict | list) else None
        query = dict(base.query or {})
        spoilt = [({"body": _with(body, at, _nul)}, ".".join(map(str, at))) for at in _strings(body)]
        spoilt += [({"query": {**query, k: _nul(v)}}, k) for k, v in query.items() if isinstance(v, str)]
        for parameter in op.definition.raw.get("parameters", []):
            schema = parameter.get("schema", {})
            if "integer" in {schema.get("type"), *(s.get("type") for s in schema.get("anyOf", []))}:
                name, where = parameter["name"], parameter["in"]
                if where == "query":
                    spoilt.append(({"query": {**query, name: 2**63}}, name))
                elif where == "path":
                    spoilt.append(({"path_parameters": {**path, name: 2**63}}, name))
        for change, what in spoilt:
            request = {"path_parameters": path, "query": query, "body": base.body, **change}
            key = json.dumps(request, default=str, sort_keys=True)
            if key not in seen:
                seen.add(key)
                yield op.Case(media_type=base.media_type, **request), what


def _nul(text: str) -> str:
    return text + "\x00"


def _strings(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, str):
        yield at
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, (*at, index))


def _with(node: Any, at: tuple[Any, ...], change: Callable[[str], str]) -> Any:
    copied = copy.deepcopy(node)
    parent = copied
    for step in at[:-1]:
        parent = parent[step]
    parent[at[-1]] = change(parent[at[-1]])
    return copied


class _FromAddress(HTTPAdapter):
    """Connections from one loopback address (any 127.0.0.0/8 address is this machine)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


# --- Kafka ----------------------------------------------------------------------------------------------


def consumer_groups(system: Stack) -> dict[str, list[str]]:
    """Topic -> the consumer groups that read it in ``system``, from each service's own handler map."""
    from services.eligibility.consumers import EligibilityHandlers
    from services.intake.consumers import HANDLERS
    from services.notifier import consumers as notifier
    from services.site_router import consumers as site_router

    handlers = {
        "intake": HANDLERS,
        "eligibility": EligibilityHandlers(None, None).registry(),  # type: ignore[arg-type]
        "site_router": site_router.handlers(None),  # type: ignore[arg-type]
        "notifier": notifier.handlers("fuzz.example.org"),
    }
    groups: dict[str, list[str]] = {}
    for service, registry in handlers.items():
        for topic in registry.topics:
            groups.setdefault(topic, []).append(consumer_group(system, service))
    return groups


def poison(topic: str) -> dict[str, bytes]:
    """Records no consumer can handle, by kind; the envelopes are well-formed but for their data."""
    envelope = {
        "id": str(uuid.uuid4()),
        "type": topic,
        "version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "producer": "e2e-poison",
        "referral_id": str(uuid.uuid4()),
    }
    model = EVENT_TYPES[topic, 1]
    return {
        "not JSON": b"\xff\xfe not json",
        "empty": b"",
        # Under the broker's 1 MB limit, so it is accepted; its dead letter has to be cut to fit.
        "900 KB": json.dumps({**envelope, "data": {"padding": "x" * 900_000}}).encode(),
        "data not an object": json.dumps({**envelope, "data": "not an object"}).encode(),
        "data mistyped": json.dumps(
            {**envelope, "data": {name: {"x": 1} for name in model.model_fields}}
        ).encode(),
    }


@dataclass
class Written:
    topic: str
    kind: str
    partition: int
    offset: int
    value: bytes = field(repr=False)


async def write_poison(system: Stack, topics: list[str], *, key: str | None = None) -> list[Written]:
    """Every kind of poison on every topic: keyed by ``key`` (so on the partition that referral's
    events take), or else on every partition under random keys (so whatever partition a later event's
    key picks, it comes after poison there)."""
    kafka = system.config.kafka
    producer: AIOKafkaProducer = await new_producer(kafka, client_id="e2e-poison")
    written = []
    try:
        for topic in topics:
            partitions = [None] if key else sorted(await producer.partitions_for(kafka.topic(topic)))
            for partition in partitions:
                for kind, value in poison(topic).items():
                    meta = await producer.send_and_wait(
                        kafka.topic(topic),
                        value=value,
                        key=(key or str(uuid.uuid4())).encode(),
                        partition=partition,
                    )
                    written.append(Written(topic, kind, meta.partition, meta.offset, value))
    finally:
        await producer.stop()
    return written


async def test_poison_records_are_dead_lettered_and_the_partitions_move_on(
    system: Stack, clinic: Client, coordinators: dict[str, Client]
) -> None:
    """Poison on every partition of every consumed topic is dead-lettered; then referrals go their
    whole way with more poison, under their own keys, just before each of their next events."""
    groups = consumer_groups(system)
    await expect_dead_letters(system, groups, await write_poison(system, sorted(groups)))
    async with httpx.AsyncClient(timeout=15) as http:
        journeys = Journeys(system, clinic, coordinators, http)
        await journeys.run()
    await expect_dead_letters(system, groups, journeys.poisoned)


async def expect_dead_letters(system: Stack, groups: dict[str, list[str]], written: list[Written]) -> None:
    """A letter per record and group reading its topic, with the error and the record (cut, if too
    large, and saying so)."""
    kafka = system.config.kafka
    letters: dict[tuple[str, int | None, int | None, str], DeadLetter] = {}
    expected = {
        (kafka.topic(w.topic), w.partition, w.offset, group): w for w in written for group in groups[w.topic]
    }

    async def all_letters() -> bool:
        for topic in {w.topic for w in written}:
            for letter in await list_dead_letters(kafka, topic):
                letters[letter.topic, letter.partition, letter.offset, letter.consumer] = letter
        return set(expected) <= set(letters)

    try:
        await eventually(all_letters, within=90, what="a dead letter per poison record and consumer group")
    except AssertionError:
        missing = [
            f"{w.topic}[{w.partition}]@{w.offset} {w.kind!r} for {key[3]}"
            for key, w in sorted(expected.items())
            if key not in letters
        ]
        raise AssertionError(
            f"{len(missing)} of {len(expected)} dead letters missing (a partition stuck behind the first):\n"
            + "\n".join(missing[:30])
        ) from None
    problems = []
    for key, w in expected.items():
        letter, where = letters[key], f"{w.topic}[{w.partition}] {w.kind!r} ({key[3]})"
        kept = letter.value()
        if not letter.error:
            problems.append(f"{where}: no error in the letter")
        if letter.value_bytes != len(w.value) or not w.value.startswith(kept):
            problems.append(f"{where}: the letter does not carry the record")
        if letter.value_truncated != (len(kept) < len(w.value)):
            problems.append(f"{where}: value_truncated is {letter.value_truncated}")
    assert not problems, "\n".join(problems)


def rescreened_and_routed(referral: dict[str, Any]) -> bool:
    revision = (referral["decision"] or {}).get("revision")
    return revision == 2 and referral["site"] is not None and referral["status"] in ("routed", "notified")


class Journeys:
    """Referrals whose events cross every consumed topic after the poison (but ``referral.waitlisted``,
    which needs every site full): each step is seen to be handled through the APIs. Before a referral's
    next events, poison keyed by its id goes ahead of them on their partitions (``poisoned``)."""

    def __init__(
        self, system: Stack, clinic: Client, coordinators: dict[str, Client], http: httpx.AsyncClient
    ) -> None:
        self.system = system
        self.clinic = clinic
        self.coordinators = coordinators
        self.http = http
        self.intake = f"{system.config.url('intake')}/v1/referrals"
        self.poisoned: list[Written] = []

    async def run(self) -> None:
        body = sample_referral()
        kept = await self.submit(body)  # submitted, screened, routed, notified; amended; site_decided
        unroutable = await self.submit(sample_referral(postal_code="00000"))  # unroutable
        withdrawn = await self.submit(sample_referral())  # withdrawn
        await self.until(unroutable, lambda r: r["status"] == "unroutable")
        await self.until(kept, lambda r: r["status"] == "notified")
        await self.poison(kept, "amended", "screened", "routed", "notified", "site_decided")
        amendment = {"clinical": body["clinical"], "reason": "a new marrow result"}
        await self.post(f"{self.intake}/{kept}/amendments", amendment, await self.clinic_headers())
        site = (await self.until(kept, rescreened_and_routed))["site"]["code"]
        queue = f"{self.system.config.url('site_router')}/v1/site/referrals"
        site_headers = await self.coordinators[site].headers(self.http, "site_router")
        await self.post(f"{queue}/{kept}/accept", {}, site_headers)
        await self.until(kept, lambda r: r["status"] == "accepted")
        other = (await self.until(withdrawn, lambda r: r["status"] == "notified"))["site"]["code"]
        other_headers = await self.coordinators[other].headers(self.http, "site_router")
        assert withdrawn in (await self.http.get(queue, headers=other_headers)).text
        await self.poison(withdrawn, "withdrawn")
        await self.post(
            f"{self.intake}/{withdrawn}/withdraw", {"reason": "moved away"}, await self.clinic_headers()
        )

        async def released() -> bool:
            return withdrawn not in (await self.http.get(queue, headers=other_headers)).text

        await eventually(released, within=60, what="the site router to handle the withdrawal")
        await self.post(f"{queue}/{kept}/close", {"enrolled": False}, site_headers)  # frees the slot

    async def poison(self, rid: str, *topics: str) -> None:
        self.poisoned += await write_poison(self.system, [f"referral.{t}" for t in topics], key=rid)

    async def clinic_headers(self) -> dict[str, str]:
        return await self.clinic.headers(self.http, "intake")

    async def submit(self, body: dict[str, Any]) -> str:
        response = await self.http.post(self.intake, json=body, headers=await self.clinic_headers())
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        response = await self.http.post(url, json=body, headers=headers)
        assert response.status_code in (200, 202), response.text

    async def until(self, rid: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            current = (
                await self.http.get(f"{self.intake}/{rid}", headers=await self.clinic_headers())
            ).json()
            return current if done(current) else None

        return dict(await eventually(check, within=60, what=f"{rid} past the poison"))
