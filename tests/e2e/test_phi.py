"""Patient identity stays in intake: after referrals with distinctive patients have gone the whole way,
no service's log and no record of any topic of the run holds a test patient's name, email, phone or
birth date.

The patients also take the error paths (a duplicate submission, invalid ones), an amendment and a
withdrawal, and the notifier reads their contact details to email them. Every topic under the run's
prefix is read from the beginning, dead-letter topics included, with the records they carry decoded.
Intake's own database holds the identities by design and is not read; nor is the mailbox, which stands
for the patients' mail servers.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.devstack.stack import Stack
from shared.events import DEAD_LETTER_SUFFIX
from shared.settings import KafkaSettings
from tests.support.builders import sample_referral
from tests.support.system import Client
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

PATIENTS = 3


@dataclass(frozen=True)
class Patient:
    given_name: str
    family_name: str
    email: str
    phone: str
    date_of_birth: date

    @classmethod
    def distinctive(cls, n: int) -> Patient:
        """Names and an email found nowhere else; a phone and birth date (of an eligible age) no other
        test uses."""
        tag = uuid.uuid4().hex[:8]
        return cls(
            given_name=f"Zephyrine{tag}",
            family_name=f"Quillfeather{tag}",
            email=f"zq.{tag}@phi-probe.example.com",
            phone=f"+44 20 7946 {secrets.randbelow(10_000):04d}",
            date_of_birth=date.today() - timedelta(days=int(365.25 * 40) + 37 * n),
        )

    def needles(self) -> dict[str, bytes]:
        """What must not appear, also in the spellings a log or an event could use."""
        born = self.date_of_birth
        return {
            "given name": self.given_name.encode(),
            "family name": self.family_name.encode(),
            "email": self.email.encode(),
            "phone": self.phone.encode(),
            "phone digits": "".join(c for c in self.phone if c.isdigit()).encode(),
            "birth date": born.isoformat().encode(),
            "birth date digits": born.strftime("%Y%m%d").encode(),
            "birth date (day first)": born.strftime("%d/%m/%Y").encode(),
        }

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        body["patient"].update(
            given_name=self.given_name,
            family_name=self.family_name,
            email=self.email,
            phone=self.phone,
            date_of_birth=self.date_of_birth.isoformat(),
        )
        return body


async def test_no_patient_identity_in_any_log_or_topic(
    system: Stack, web: httpx.AsyncClient, clinic: Client
) -> None:
    patients = [Patient.distinctive(n) for n in range(PATIENTS)]
    referrals = [await journey(web, system, clinic, patient) for patient in patients]

    async def all_emailed() -> bool:
        views = [await view(web, system, clinic, rid) for rid in referrals]
        return all(v["status"] == "notified" and len(v["notifications"]) == 3 for v in views)

    await eventually(all_emailed, within=60, what="every test patient's three emails")
    await amend(web, system, clinic, referrals[0])
    for rid in referrals:  # also frees the sites' slots for the tests after this one
        response = await web.post(
            f"{system.config.url('intake')}/v1/referrals/{rid}/withdraw",
            json={"reason": "the probe is done"},
            headers=await clinic.headers(web, "intake"),
        )
        assert response.status_code == 200, response.text

    needles = {(p.family_name, what): n.lower() for p in patients for what, n in p.needles().items()}
    found = [
        f"{where}: {name}'s {what}"
        for where, text in places(system)
        for (name, what), n in needles.items()
        if n in text
    ]
    found += [
        f"{where}: {name}'s {what}"
        async for where, text in records(system.config.kafka)
        for (name, what), n in needles.items()
        if n in text
    ]
    assert not found, "patient identity outside intake:\n" + "\n".join(sorted(set(found)))


async def journey(web: httpx.AsyncClient, system: Stack, clinic: Client, patient: Patient) -> str:
    """Submit the patient's referral; submit it again (409), with an invalid field (422), and with a
    NUL in the name, which no store can hold (422, or a 500 whose traceback would be logged)."""
    url = f"{system.config.url('intake')}/v1/referrals"
    headers = await clinic.headers(web, "intake")
    body = patient.apply(sample_referral())
    response = await web.post(url, json=body, headers=headers)
    assert response.status_code == 202, response.text
    duplicate = await web.post(url, json=body, headers=headers)
    assert duplicate.status_code == 409, duplicate.text
    invalid = patient.apply(sample_referral(ecog="three"))
    refused = await web.post(url, json=invalid, headers=headers)
    assert refused.status_code == 422, refused.text
    unstorable = patient.apply(sample_referral())
    unstorable["patient"]["given_name"] += "\x00"
    refused = await web.post(url, json=unstorable, headers=headers)
    assert refused.status_code == 422, refused.text
    return str(response.json()["id"])


async def view(web: httpx.AsyncClient, system: Stack, clinic: Client, rid: str) -> dict[str, Any]:
    response = await web.get(
        f"{system.config.url('intake')}/v1/referrals/{rid}", headers=await clinic.headers(web, "intake")
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def amend(web: httpx.AsyncClient, system: Stack, clinic: Client, rid: str) -> None:
    current = await view(web, system, clinic, rid)
    response = await web.post(
        f"{system.config.url('intake')}/v1/referrals/{rid}/amendments",
        json={"clinical": {**sample_referral()["clinical"], "ecog": 0}, "reason": "better performance"},
        headers=await clinic.headers(web, "intake"),
    )
    assert response.status_code == 202, response.text

    async def rescreened() -> bool:
        decision = (await view(web, system, clinic, rid))["decision"]
        return bool(decision) and decision["revision"] == current["revision"] + 1

    await eventually(rescreened, within=60, what="the amendment to be screened")


def places(system: Stack) -> Iterator[tuple[str, bytes]]:
    """Every service log of the run (lowercased), by file name."""
    logs = sorted((system.config.run_dir / "logs").glob("*.log"))
    assert {p.stem for p in logs} >= {"auth", "intake", "eligibility", "site_router", "notifier"}
    for path in logs:
        yield path.name, path.read_bytes().lower()


async def records(kafka: KafkaSettings) -> AsyncIterator[tuple[str, bytes]]:
    """Every record of every topic under the run's prefix, from the beginning (lowercased): key,
    headers and value, and for a dead letter also the original record it carries, decoded."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(kafka.topic_prefix))
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert any(n.endswith(DEAD_LETTER_SUFFIX) for n in names), "the dead-letter topics are read too"
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False, max_partition_fetch_bytes=2**21
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    where = f"{record.topic}[{record.partition}]@{record.offset}"
                    parts = [record.key or b"", record.value or b""]
                    parts += [name.encode() + b"=" + (value or b"") for name, value in record.headers]
                    if record.topic.endswith(DEAD_LETTER_SUFFIX):
                        parts.append(_carried(record.value))
                    yield where, b"\n".join(parts).lower()
    finally:
        await consumer.stop()


def _carried(letter: bytes | None) -> bytes:
    try:
        return base64.b64decode(json.loads(letter or b"{}").get("value_b64", ""))
    except (ValueError, AttributeError):
        return b""
