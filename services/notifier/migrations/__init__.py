"""notifier's store migrations: one revision per module here (``m<NNNN>_<slug>.py``), applied by
``trialroute migrate notifier``; the next one is written by ``scripts/revision.sh notifier "what changes"``
(docs/migrations.md)."""

from pathlib import Path

from services.notifier import SERVICE
from services.notifier.store import TABLES
from shared.migrations import Migrations

MIGRATIONS = Migrations(SERVICE, TABLES, Path(__file__).resolve().parent)
