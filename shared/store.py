"""Column types and table lists every service's store uses, so that each store reads the same on
PostgreSQL (production, tests) and SQLite (the embedded default)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime
from sqlalchemy import BigInteger, Column, DateTime, Dialect, Integer, Table, TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: ``timestamptz`` on PostgreSQL, naive UTC on SQLite (which keeps
    no zone, so a naive value read back is UTC by this convention). A naive value written is refused:
    it would be ambiguous."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC, 9999-12-31T23:59-14:00 in 10000
        raise ValueError("out of range: in UTC the time falls outside the years 1 to 9999") from None


UtcInstant = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""A request's time as the store can hold it: with a zone (a naive time is ambiguous) and converted to
UTC while parsing, so that a time with no UTC equivalent is a 422 for its field, not a store error."""


def timestamp(*, nullable: bool = False, now_by_default: bool = True) -> Any:
    """A UTC timestamp field; ``now_by_default`` fills it with the current time when not given."""
    column: Column[datetime] = Column(UTCDateTime(), nullable=nullable)
    if now_by_default:
        return Field(default_factory=utcnow, sa_column=column)
    return Field(default=None, sa_column=column)


BIGINT = BigInteger().with_variant(Integer, "sqlite")
"""A 64-bit integer on PostgreSQL; SQLite's INTEGER, which is 64-bit too and is the only type its
``INTEGER PRIMARY KEY`` auto-increments."""


def bigint_pk() -> Any:
    """An auto-incremented 64-bit primary key (``None`` until the row is inserted)."""
    return Field(default=None, sa_column=Column(BIGINT, primary_key=True))


def table_of(model: type[SQLModel]) -> Table:
    """A table model's ``Table`` (SQLModel declares ``__table__`` only on the classes it creates)."""
    table = getattr(model, "__table__", None)
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table


def tables(*models: type[SQLModel]) -> list[Table]:
    """The tables of one service's store, to create or migrate: only these, never another's."""
    return [table_of(model) for model in models]
