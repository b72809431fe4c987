"""The Alembic environment of every service's store: the work is in ``shared.migrations.run_env``."""

from shared.migrations import run_env

run_env()
