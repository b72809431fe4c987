"""auth's store migrations: one revision per module here (``m<NNNN>_<slug>.py``), applied by
``trialroute migrate auth``; the next one is written by ``scripts/revision.sh auth "what changes"``
(docs/migrations.md)."""

from pathlib import Path

from services.auth import SERVICE
from services.auth.store import TABLES
from shared.migrations import Migrations

MIGRATIONS = Migrations(SERVICE, TABLES, Path(__file__).resolve().parent)
