"""Failed client authentications, counted in the auth store's ``rate_hit`` table (``shared.ratelimit``),
to slow down secret guessing without letting anyone lock a client out.

Two limits, both keyed on the source address, never on the client id alone: client ids are not secret,
so a limit per client id would let anyone refuse a client its token from everywhere by failing five
times. Per address and client id, the guesses at one client from one address; per address, the
guesses at every client from one address. A client calling from its own address is slowed down only by
failures from that address. The counts live in the database, so every instance of the service shares
them and a restart does not reset them.
"""

from __future__ import annotations

import math

from shared.db import Database
from shared.ratelimit import SlidingWindow, address_key, hashed


class LoginThrottle:
    """Failures counted per (address, client id) and per address, each with its own limit."""

    def __init__(self, db: Database, by_client: SlidingWindow, by_address: SlidingWindow) -> None:
        self.db = db
        self.by_client = by_client
        self.by_address = by_address
        self.windows = (by_client, by_address)

    async def record_failure(self, client_id: str | None, address: str | None) -> None:
        source = address_key(address)
        async with self.db.session() as session:
            await self.by_address.hit(session, source)
            if client_id:
                await self.by_client.hit(session, _pair(source, client_id))

    async def retry_after(self, client_id: str | None, address: str | None) -> int | None:
        """Whole seconds to wait (for a Retry-After header), or ``None``."""
        source = address_key(address)
        async with self.db.session() as session:
            waits = [await self.by_address.wait(session, source)]
            if client_id:
                waits.append(await self.by_client.wait(session, _pair(source, client_id)))
        longest = max((w for w in waits if w is not None), default=None)
        return None if longest is None else max(1, math.ceil(longest))


def _pair(source: str, client_id: str) -> str:
    return f"{source} {hashed(client_id)}"
