"""The floor intake is measured against: a bare FastAPI endpoint doing only intake's one referral insert.

Same payload, same ``referrals`` table and columns, same database, same engine settings, same uvicorn
settings (``shared.app.serve``); nothing else: no token, no validation model, no idempotency, no
timeline, no outbox. What intake's rate lacks against this one is the price of those.

    python -m bench.bare_intake --port 8101      (BENCH_DATABASE_URL: the intake database)
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

from fastapi import Body, FastAPI
from sqlalchemy import Table, insert

from services.intake.migrations import MIGRATIONS
from services.intake.store import Referral
from shared.app import serve
from shared.db import Database
from shared.migrations import migrate
from shared.store import table_of


def create_app(database_url: str) -> FastAPI:
    db = Database(database_url)
    table: Table = table_of(Referral)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await migrate(database_url, MIGRATIONS)
        yield
        await db.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/referrals", status_code=202)
    async def submit(payload: dict[str, Any] = Body()) -> dict[str, Any]:
        row = referral_row(payload)
        async with db.engine.begin() as conn:
            await conn.execute(insert(table).values(row))
        return {"id": str(row["id"]), "clinic_reference": row["clinic_reference"], "status": "received"}

    return app


def referral_row(payload: dict[str, Any]) -> dict[str, Any]:
    """The row intake's ``_new_referral`` writes for this payload, built from the raw JSON."""
    patient, referrer = payload["patient"], payload["referrer"]
    now = datetime.now(UTC)
    return {
        "id": uuid.uuid4(),
        "clinic_id": "bench-clinic",
        "client_id": "bench-clinic",
        "clinic_reference": payload["clinic_reference"],
        "study": payload.get("study") or "UCART123-AMELI-01",
        "revision": 1,
        "status": "received",
        "status_at": now,
        "referral_day": now.date(),
        "created_at": now,
        "updated_at": now,
        "given_name": patient["given_name"],
        "family_name": patient["family_name"],
        "date_of_birth": date.fromisoformat(patient["date_of_birth"]),
        "sex": patient.get("sex"),
        "email": patient.get("email"),
        "phone": patient.get("phone"),
        "preferred_language": patient.get("preferred_language", "en"),
        "postal_code": patient["postal_code"],
        "country": patient["country"],
        "consent_to_contact": patient["consent_to_contact"],
        "referrer_name": referrer["name"],
        "referrer_email": referrer["email"],
        "referrer_phone": referrer.get("phone"),
        "clinical": payload.get("clinical") or {},
        "decision": None,
        "site": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(create_app(os.environ["BENCH_DATABASE_URL"]), "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
