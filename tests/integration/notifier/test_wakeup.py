"""The dispatcher is woken by the commit that makes an email due, not by its poll interval."""

from __future__ import annotations

import pytest

from tests.integration.notifier.conftest import Stack, routed

pytestmark = pytest.mark.integration


async def test_a_recorded_notification_wakes_the_dispatcher_long_before_its_poll(stack: Stack) -> None:
    """The dispatcher polls once a minute here: the emails go out within seconds only if the consumer's
    commit woke it (and the outcomes' events reach the topic through the woken relay)."""
    async with stack.run(dispatch_interval_s=60.0):
        await stack.settled(0, within=5)  # started, nothing due: the first passes found nothing
        for _ in range(2):  # each commit, not only the first, wakes it
            await stack.publish(routed(stack.referral()))
        rows = await stack.settled(6, within=15)
    assert {r.state for r in rows} == {"sent"}
    assert len(stack.smtp.messages) == 6
