"""The Alembic environment every service's store migrations run in (``shared.migrations``)."""
