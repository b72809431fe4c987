"""The accepting site's steps to enrolment over real HTTP with real tokens, on real PostgreSQL and Kafka:
each step is a referral.progressed on the topic, the outcome frees the slot and the waitlist takes it."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services.site_router.config import SiteRouterSettings
from services.site_router.queries import Queries
from shared.problems import NotFound
from shared.settings import KafkaSettings
from tests.integration.site_router.conftest import CommandKit, ServeRouter, Tokens, screening
from tests.integration.site_router.test_api import add_sites, assert_problem
from tests.support.builders import wrap
from tests.support.kafka import on_topic, publish, topic_has
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_referral_goes_from_acceptance_to_enrolment_and_its_slot_goes_to_the_waitlist(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient, kafka: KafkaSettings
) -> None:
    roles = frozenset({"api", "consumer", "relay"})
    group = f"test-{uuid.uuid4().hex[:8]}"
    async with serve_router(roles=roles, kafka=kafka, consumer_group=group) as url:
        await add_sites(http, url, tokens, {"WCM": 1, "DFCI": 0})
        await kit.commands.directory.reload(kit.db)
        first, waiting = uuid.uuid4(), uuid.uuid4()
        await publish(kafka, wrap(screening(), first))
        await eventually(lambda: topic_has(kafka, "referral.routed", 1), what="the first referral routed")
        await publish(kafka, wrap(screening(), waiting))
        await eventually(lambda: topic_has(kafka, "referral.waitlisted", 1), what="the second waitlisted")
        wcm, dfci = await tokens.site("WCM"), await tokens.site("DFCI")
        progress = f"{url}/v1/site/referrals/{first}/progress"

        early = await http.post(progress, json={"step": "contacted"}, headers=wcm)
        assert_problem(early, 409, "accept it first")
        assert (await http.post(f"{url}/v1/site/referrals/{first}/accept", headers=wcm)).status_code == 200

        other_site = await http.post(progress, json={"step": "contacted"}, headers=dfci)
        assert_problem(other_site, 404, f"no referral {first}")
        unknown = await http.post(
            f"{url}/v1/site/referrals/{uuid.uuid4()}/progress", json={"step": "contacted"}, headers=wcm
        )
        assert_problem(unknown, 404)
        out_of_order = await http.post(progress, json={"step": "consented"}, headers=wcm)
        assert_problem(out_of_order, 409, "consented cannot follow acceptance; next is contacted")
        not_a_step = await http.post(progress, json={"step": "randomised"}, headers=wcm)
        assert_problem(not_a_step, 422)
        assert not_a_step.json()["errors"][0]["field"] == "step"

        steps = [
            {"step": "contacted"},
            {"step": "screening_scheduled", "screening_date": "2026-12-14"},
            {"step": "screening_scheduled", "screening_date": "2026-12-16"},  # rescheduled
            {"step": "consented"},
        ]
        for body in steps:
            response = await http.post(progress, json=body, headers=wcm)
            assert response.status_code == 200, response.text
            assert response.json()["step"] == body["step"] and response.json()["status"] == "accepted"
        retry = await http.post(progress, json=steps[-1], headers=wcm)
        assert retry.status_code == 200 and len(retry.json()["steps"]) == 4  # the same step again: no-op

        no_subject = await http.post(progress, json={"step": "enrolled"}, headers=wcm)
        assert_problem(no_subject, 422)
        assert no_subject.json()["errors"] == [
            {"field": "subject_id", "reason": "required for the step enrolled"}
        ]
        wrong_field = await http.post(
            progress, json={"step": "enrolled", "subject_id": "S-1", "reason": "x"}, headers=wcm
        )
        assert_problem(wrong_field, 422)
        assert wrong_field.json()["errors"][0]["field"] == "reason"

        # The slot is held until the outcome: the waitlisted referral is still waiting.
        assert await kit.site_of(waiting) is None and await kit.open_counts() == {"WCM": 1, "DFCI": 0}
        enrolled = await http.post(
            progress, json={"step": "enrolled", "subject_id": "UCART123-0042"}, headers=wcm
        )
        assert enrolled.status_code == 200, enrolled.text
        assert (enrolled.json()["status"], enrolled.json()["step"]) == ("closed", "enrolled")
        assert enrolled.json()["enrolled"] is True
        assert [s["step"] for s in enrolled.json()["steps"]] == [
            "contacted",
            "screening_scheduled",
            "screening_scheduled",
            "consented",
            "enrolled",
        ]
        final = await http.post(progress, json={"step": "not_enrolled", "reason": "x"}, headers=wcm)
        assert_problem(final, 409, "final")
        legacy = await http.post(
            f"{url}/v1/site/referrals/{first}/close", json={"enrolled": False}, headers=wcm
        )
        assert_problem(legacy, 409, "closed")

        # The freed slot went to the waitlist, and each step left on the topic once.
        assert await kit.site_of(waiting) == "WCM"
        await eventually(lambda: topic_has(kafka, "referral.progressed", 5), what="every step on the topic")
        await eventually(
            lambda: topic_has(kafka, "referral.routed", 2), what="the waitlisted referral routed"
        )
        progressed = await on_topic(kafka, "referral.progressed")
        assert [(e.referral_id, e.data["step"]) for e in progressed] == [
            (first, "contacted"),
            (first, "screening_scheduled"),
            (first, "screening_scheduled"),
            (first, "consented"),
            (first, "enrolled"),
        ]
        assert progressed[1].data["screening_date"] == "2026-12-14"
        assert progressed[4].data == {
            "clinic_id": "C1",
            "site_code": "WCM",
            "step": "enrolled",
            "screening_date": None,
            "subject_id": "UCART123-0042",
            "reason": None,
        }
        routed = await on_topic(kafka, "referral.routed")
        assert sorted(e.referral_id for e in routed) == sorted([first, waiting])  # partition by partition

        queue = (await http.get(f"{url}/v1/site/referrals", headers=wcm)).json()
        assert queue["site_code"] == "WCM" and queue["site_codes"] == ["WCM"]
        assert [(i["referral_id"], i["step"]) for i in queue["referrals"]] == [(str(waiting), None)]
        closed = await http.get(f"{url}/v1/site/referrals", params={"status": "closed"}, headers=wcm)
        [item] = closed.json()["referrals"]
        assert (item["referral_id"], item["step"], item["site_code"]) == (str(first), "enrolled", "WCM")


async def test_a_negative_outcome_from_any_step_frees_the_slot(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        await add_sites(http, url, tokens, {"WCM": 1})
        await kit.commands.directory.reload(kit.db)
        first, waiting = await kit.screen(), await kit.screen()
        wcm = await tokens.site("WCM")
        await http.post(f"{url}/v1/site/referrals/{first}/accept", headers=wcm)
        progress = f"{url}/v1/site/referrals/{first}/progress"
        assert (await http.post(progress, json={"step": "contacted"}, headers=wcm)).status_code == 200
        missing_reason = await http.post(progress, json={"step": "screen_failed"}, headers=wcm)
        assert_problem(missing_reason, 422)
        assert missing_reason.json()["errors"][0]["field"] == "reason"
        failed = await http.post(
            progress, json={"step": "screen_failed", "reason": "blasts 40%"}, headers=wcm
        )
        assert failed.status_code == 200, failed.text
        assert (failed.json()["status"], failed.json()["reason"], failed.json()["enrolled"]) == (
            "closed",
            "blasts 40%",
            False,
        )
        assert await kit.site_of(waiting) == "WCM"
        assert [kind for kind, _ in await kit.events_of(first)] == [
            "referral.routed",
            "referral.site_decided",
            "referral.progressed",
            "referral.progressed",
        ]


async def test_the_referral_page_shows_the_pre_screen_the_referrer_and_the_timeline(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        await add_sites(http, url, tokens, {"WCM": 1, "DFCI": 1})
        await kit.commands.directory.reload(kit.db)
        referral = await kit.screen()
        wcm, dfci = await tokens.site("WCM"), await tokens.site("DFCI")
        page = f"{url}/v1/site/referrals/{referral}"
        assert_problem(await http.get(page, headers=dfci), 404, f"no referral {referral}")
        assert_problem(await http.get(f"{url}/v1/site/referrals/{uuid.uuid4()}", headers=wcm), 404)

        await kit.decline("WCM", referral, "no bed this month")  # now at DFCI
        assert_problem(await http.get(f"{url}/v1/site/referrals", params={"site": "WCM"}, headers=dfci), 403)
        await http.post(f"{url}/v1/site/referrals/{referral}/accept", headers=dfci)
        await http.post(
            f"{url}/v1/site/referrals/{referral}/progress", json={"step": "contacted"}, headers=dfci
        )

        seen = (await http.get(page, headers=dfci)).json()
        assert (seen["site_code"], seen["status"], seen["step"]) == ("DFCI", "accepted", "contacted")
        assert seen["site"]["name"] == "Dana-Farber Cancer Institute" and seen["clinic_id"] == "C1"
        assert {"id": "ecog", "verdict": "unknown", "reason": "ecog not given"} in seen["criteria"]
        assert seen["referrer"]["email"] == "asmith@clinic.example.org"
        assert seen["next_steps"] == ["screening_scheduled", "screen_failed", "not_enrolled"]
        # DFCI's own story only: WCM's decline is not DFCI's to see.
        assert [(e["site_code"], e["event"]) for e in seen["timeline"]] == [
            ("DFCI", "routed"),
            ("DFCI", "accepted"),
            ("DFCI", "contacted"),
        ]
        assert "given_name" not in str(seen) and "Maria" not in str(seen)
        declined = (await http.get(page, headers=wcm)).json()
        assert (declined["status"], declined["next_steps"]) == ("declined", [])
        assert [e["event"] for e in declined["timeline"]] == ["routed", "declined"]
        assert declined["timeline"][-1]["detail"] == "no bed this month"


async def test_a_coordinator_of_several_sites_works_all_their_referrals(kit: CommandKit) -> None:
    """The sites a token acts for (``Principal.site_codes``) are what the commands and queries take."""

    await kit.add_sites({"WCM": 1, "DFCI": 1, "MCC": 1})
    at_wcm, at_dfci, at_mcc = await kit.screen(), await kit.screen(), await kit.screen()
    queries = Queries(kit.db, SiteRouterSettings(environment="test"), kit.commands, kit.commands.directory)
    both = {"WCM", "DFCI"}
    queue = await queries.site_queue(both, ["routed", "accepted"], 100, 0)
    assert queue.site_code is None and queue.site_codes == ["DFCI", "WCM"]
    assert {(i.referral_id, i.site_code) for i in queue.referrals} == {(at_wcm, "WCM"), (at_dfci, "DFCI")}
    await kit.db.run(lambda s: kit.commands.accept(s, both, at_dfci))
    page = await queries.referral_for_site(both, at_dfci)
    assert (page.site_code, page.status) == ("DFCI", "accepted")
    with pytest.raises(NotFound, match="no referral"):
        await queries.referral_for_site(both, at_mcc)
    with pytest.raises(NotFound, match="no referral"):
        await kit.db.run(lambda s: kit.commands.progress(s, both, at_mcc, "contacted"))
