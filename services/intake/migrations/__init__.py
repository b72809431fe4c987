"""intake's store migrations: one revision per module here (``m<NNNN>_<slug>.py``), applied by
``trialroute migrate intake``; the next one is written by ``scripts/revision.sh intake "what changes"``
(docs/migrations.md)."""

from pathlib import Path

from services.intake import SERVICE
from services.intake.store import TABLES
from shared.migrations import Migrations

MIGRATIONS = Migrations(SERVICE, TABLES, Path(__file__).resolve().parent)
