"""The router's HTTP API over real HTTP with real tokens: site queues and decisions, site admin, finder."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from shared.auth import Scope
from tests.integration.site_router.conftest import TRIAL_SITES, CommandKit, ServeRouter, Tokens

pytestmark = pytest.mark.integration


async def add_sites(
    http: httpx.AsyncClient, url: str, tokens: Tokens, capacities: dict[str, int], **fields: Any
) -> None:
    """Register sites through the admin API, as trial staff would."""
    headers = await tokens.admin()
    for code, capacity in capacities.items():
        body = {"code": code, "country": "US", "coordinator_email": f"{code.lower()}@sites.example.org"}
        body |= {**TRIAL_SITES[code], "capacity": capacity, **fields}
        response = await http.post(f"{url}/v1/sites", json=body, headers=headers)
        assert response.status_code == 201, response.text


def assert_problem(response: httpx.Response, status: int, detail: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


async def test_a_site_sees_and_decides_only_its_own_referrals(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        await add_sites(http, url, tokens, {"WCM": 1, "DFCI": 1})
        await kit.commands.directory.reload(kit.db)
        referral = await kit.screen()
        wcm, dfci = await tokens.site("WCM"), await tokens.site("DFCI")

        queue = (await http.get(f"{url}/v1/site/referrals", headers=wcm)).json()
        assert queue["site_code"] == "WCM"
        [item] = queue["referrals"]
        assert item["referral_id"] == str(referral) and item["status"] == "routed"
        assert (item["age_years"], item["postal_area"], item["country"]) == (55, "100", "US")
        assert item["distance_km"] < 2 and item["rank"] == 1 and item["decision"] == "needs_review"
        assert item["criteria_to_confirm"] == ["ecog"]
        assert {"id": "ecog", "verdict": "unknown", "reason": "ecog not given"} in item["criteria"]
        assert item["clinic_id"] == "C1" and item["referrer"]["email"] == "asmith@clinic.example.org"
        assert (await http.get(f"{url}/v1/site/referrals", headers=dfci)).json()["referrals"] == []

        for action, body in [("accept", None), ("decline", {"reason": "x"}), ("close", {"enrolled": False})]:
            response = await http.post(
                f"{url}/v1/site/referrals/{referral}/{action}", json=body, headers=dfci
            )
            assert_problem(response, 404, f"no referral {referral} at site DFCI")
        missing = await http.post(f"{url}/v1/site/referrals/{uuid.uuid4()}/accept", headers=wcm)
        assert_problem(missing, 404)

        accepted = await http.post(f"{url}/v1/site/referrals/{referral}/accept", headers=wcm)
        assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
        again = await http.post(f"{url}/v1/site/referrals/{referral}/accept", headers=wcm)
        assert again.status_code == 200  # idempotent
        late = await http.post(
            f"{url}/v1/site/referrals/{referral}/decline", json={"reason": "x"}, headers=wcm
        )
        assert_problem(late, 409, "accepted")
        decided = [d for kind, d in await kit.events_of(referral) if kind == "referral.site_decided"]
        assert decided == [
            {"clinic_id": "C1", "site_code": "WCM", "decision": "accepted", "reason": None, "enrolled": None}
        ]


async def test_site_api_needs_a_site_token_with_the_scope(
    serve_router: ServeRouter, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        queue = f"{url}/v1/site/referrals"
        assert_problem(await http.get(queue), 401)
        assert_problem(await http.get(queue, headers=await tokens.clinic()), 403, "site:referrals")
        no_scope = await tokens.site("WCM", scopes=[Scope.REFERRALS_READ])
        assert_problem(await http.get(queue, headers=no_scope), 403, "site:referrals")
        admin = await tokens.admin()
        assert_problem(await http.get(queue, headers=admin), 403)


async def test_decline_and_close_over_http(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        await add_sites(http, url, tokens, {"WCM": 1, "DFCI": 1})
        await kit.commands.directory.reload(kit.db)
        first, second, third = await kit.screen(), await kit.screen(), await kit.screen()  # WCM, DFCI, waits
        wcm, dfci = await tokens.site("WCM"), await tokens.site("DFCI")

        assert_problem(await http.post(f"{url}/v1/site/referrals/{first}/decline", json={}, headers=wcm), 422)
        declined = await http.post(
            f"{url}/v1/site/referrals/{first}/decline", json={"reason": "no bed"}, headers=wcm
        )
        assert declined.json()["status"] == "declined" and declined.json()["reason"] == "no bed"
        wcm_queue = (await http.get(f"{url}/v1/site/referrals", headers=wcm)).json()["referrals"]
        assert [i["referral_id"] for i in wcm_queue] == [str(third)]  # the waitlist took the slot
        history = await http.get(f"{url}/v1/site/referrals", params={"status": "declined"}, headers=wcm)
        assert [i["referral_id"] for i in history.json()["referrals"]] == [str(first)]

        closed = await http.post(
            f"{url}/v1/site/referrals/{second}/close", json={"enrolled": True}, headers=dfci
        )
        assert closed.json()["status"] == "closed" and closed.json()["enrolled"] is True
        dfci_queue = (await http.get(f"{url}/v1/site/referrals", headers=dfci)).json()["referrals"]
        assert [(i["referral_id"], i["rank"]) for i in dfci_queue] == [(str(first), 2)]


async def test_trial_staff_manage_sites(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        admin = await tokens.admin()
        await add_sites(http, url, tokens, {"WCM": 1})
        site = (await http.get(f"{url}/v1/sites/WCM", headers=admin)).json()
        assert (site["latitude"], site["longitude"]) == pytest.approx((40.765, -73.964), abs=0.01)
        assert (site["status"], site["capacity"], site["open_count"]) == ("recruiting", 1, 0)

        wcm = {"code": "WCM", "country": "US", "coordinator_email": "x@example.org", "capacity": 1}
        wcm |= TRIAL_SITES["WCM"]
        assert_problem(await http.post(f"{url}/v1/sites", json=wcm, headers=admin), 409, "exists")
        unknown = {**wcm, "code": "NOPE", "postal_code": "00000"}
        refused = await http.post(f"{url}/v1/sites", json=unknown, headers=admin)
        assert_problem(refused, 422, "unknown postal code")
        assert_problem(
            await http.post(f"{url}/v1/sites", json=unknown, headers=await tokens.site("WCM")), 403
        )
        assert_problem(await http.get(f"{url}/v1/sites/NOPE", headers=admin), 404)

        await kit.commands.directory.reload(kit.db)
        holder, waiting = await kit.screen(), await kit.screen()
        grown = await http.patch(
            f"{url}/v1/sites/WCM", json={"capacity": 2, "phone": "+1 212 555 0199"}, headers=admin
        )
        assert grown.status_code == 200, grown.text
        assert (grown.json()["capacity"], grown.json()["open_count"]) == (2, 2)
        assert grown.json()["phone"] == "+1 212 555 0199"
        assert await kit.site_of(waiting) == "WCM" and await kit.site_of(holder) == "WCM"

        paused = await http.post(f"{url}/v1/sites/WCM/pause", headers=admin)
        assert paused.json()["status"] == "paused"
        closed = await http.post(f"{url}/v1/sites/WCM/close", headers=admin)
        assert closed.json()["status"] == "closed"
        assert_problem(await http.post(f"{url}/v1/sites/WCM/pause", headers=admin), 409, "reopen")
        await kit.close("WCM", holder)  # frees a slot at a closed site: nobody is routed there
        later = await kit.screen()
        assert await kit.site_of(later) is None
        reopened = await http.post(f"{url}/v1/sites/WCM/reopen", headers=admin)
        assert reopened.json()["status"] == "recruiting" and await kit.site_of(later) == "WCM"
        listed = (await http.get(f"{url}/v1/sites", headers=admin)).json()
        assert [(s["code"], s["open_count"]) for s in listed] == [("WCM", 2)]


async def test_public_finder_without_a_token(
    serve_router: ServeRouter, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        await add_sites(http, url, tokens, {"WCM": 1, "DFCI": 0, "MCC": 1})
        await add_sites(http, url, tokens, {"MDACC": 1}, status="paused")
        found = await http.get(f"{url}/v1/sites/nearby", params={"postal_code": "10021", "country": "us"})
        assert found.status_code == 200, found.text
        body = found.json()
        assert (body["postal_code"], body["country"], body["place"]) == ("10021", "US", "New York")
        assert [s["code"] for s in body["sites"]] == ["WCM", "DFCI", "MCC"]  # full but recruiting is shown
        dfci = body["sites"][1]
        assert dfci["distance_km"] == pytest.approx(dfci["distance_miles"] * 1.609344, abs=0.2)
        assert 280 < dfci["distance_km"] < 310 and dfci["city"] == "Boston"
        assert dfci["contact"] == {"email": "dfci@sites.example.org", "phone": None}
        zip4 = {"postal_code": "10021-1234", "country": "US", "limit": 1}
        one = await http.get(f"{url}/v1/sites/nearby", params=zip4)
        assert [s["code"] for s in one.json()["sites"]] == ["WCM"]

        unknown = await http.get(f"{url}/v1/sites/nearby", params={"postal_code": "00000", "country": "US"})
        assert_problem(unknown, 422, "unknown postal code '00000' for US")
        foreign = await http.get(f"{url}/v1/sites/nearby", params={"postal_code": "75001", "country": "FR"})
        assert_problem(foreign, 422, "country 'FR' is not supported")
        assert_problem(await http.get(f"{url}/v1/sites/nearby", params={"country": "US"}), 422)


async def test_public_finder_is_rate_limited_per_client(
    serve_router: ServeRouter, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:  # the default: 60 requests a minute per address
        params = {"postal_code": "10021", "country": "US"}
        statuses = [(await http.get(f"{url}/v1/sites/nearby", params=params)).status_code for _ in range(60)]
        assert statuses == [200] * 60
        refused = await http.get(f"{url}/v1/sites/nearby", params=params)
        assert_problem(refused, 429, "too many")
        assert 1 <= int(refused.headers["retry-after"]) <= 60


def from_address(address: str) -> httpx.AsyncClient:
    """A client whose requests leave from ``address`` (any of 127.0.0.0/8 is this machine)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=10)


async def test_the_finder_limit_is_shared_by_every_instance(
    serve_router: ServeRouter, http: httpx.AsyncClient
) -> None:
    params = {"postal_code": "10021", "country": "US"}
    async with (
        serve_router(finder_rate_per_minute=4) as first,
        serve_router(finder_rate_per_minute=4) as second,
    ):
        statuses = [
            (await http.get(f"{url}/v1/sites/nearby", params=params)).status_code
            for url in [first, second] * 3
        ]
        assert statuses == [200] * 4 + [429] * 2
        async with from_address("127.0.0.2") as neighbour:  # another address has its own budget
            assert (await neighbour.get(f"{second}/v1/sites/nearby", params=params)).status_code == 200


async def test_a_forged_forwarded_for_escapes_no_limit(
    serve_router: ServeRouter, http: httpx.AsyncClient
) -> None:
    """F2: X-Forwarded-For from a peer that is not a configured proxy changes nothing: rotating it
    neither escapes the limit nor spends another address's budget."""
    params = {"postal_code": "10021", "country": "US"}
    async with serve_router(finder_rate_per_minute=3) as url:
        statuses = [
            (
                await http.get(
                    f"{url}/v1/sites/nearby", params=params, headers={"X-Forwarded-For": f"203.0.113.{n}"}
                )
            ).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        async with from_address("127.0.0.4") as victim:
            assert (await victim.get(f"{url}/v1/sites/nearby", params=params)).status_code == 200


async def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(
    serve_router: ServeRouter, http: httpx.AsyncClient
) -> None:
    """With loopback configured as the proxy, each forwarded client has its own budget."""
    params = {"postal_code": "10021", "country": "US"}
    async with serve_router(finder_rate_per_minute=1, trusted_proxies=["127.0.0.1"]) as url:

        async def status(client: str) -> int:
            response = await http.get(
                f"{url}/v1/sites/nearby", params=params, headers={"X-Forwarded-For": client}
            )
            return response.status_code

        assert [await status("203.0.113.1"), await status("203.0.113.1"), await status("203.0.113.2")] == [
            200,
            429,
            200,
        ]


async def test_every_malformed_list_parameter_is_a_named_422(
    serve_router: ServeRouter, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    """F3 for the site router's list routes: the queue's and the finder's parameters."""
    async with serve_router() as url:
        site = await tokens.site("WCM")
        queue = (
            [("status", value) for value in ("lost", "", "\x00", "ROUTED")]
            + [("limit", value) for value in ("0", "-1", "abc", "1.5", "")]
            + [("offset", value) for value in ("-1", str(2**63), "abc", "9" * 40, "")]
        )
        for name, value in queue:
            response = await http.get(f"{url}/v1/site/referrals", params={name: value}, headers=site)
            assert response.status_code == 422, (name, value, response.text)
            assert_problem(response, 422)
            assert response.json()["errors"][0]["field"].startswith(name), (name, value)
        # A limit past the maximum is capped, not refused (nor passed to the store).
        huge = await http.get(f"{url}/v1/site/referrals", params={"limit": "9" * 40}, headers=site)
        assert huge.status_code == 200
        finder = (
            [("postal_code", value) for value in ("", "x" * 17)]
            + [("country", value) for value in ("", "U", "USA", "1A", "\x00\x00")]
            + [("limit", value) for value in ("0", "-1", "abc")]
        )
        for name, value in finder:
            params = {"postal_code": "10021", "country": "US", name: value}
            response = await http.get(f"{url}/v1/sites/nearby", params=params)
            assert response.status_code == 422, (name, value, response.text)
            assert_problem(response, 422)
            assert response.json()["errors"][0]["field"].startswith(name), (name, value)


async def test_a_site_asks_the_referring_clinic_about_its_own_routed_referral(
    serve_router: ServeRouter, kit: CommandKit, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    async with serve_router() as url:
        await add_sites(http, url, tokens, {"WCM": 1, "DFCI": 1})
        await kit.commands.directory.reload(kit.db)
        referral = await kit.screen()
        wcm, dfci = await tokens.site("WCM"), await tokens.site("DFCI")
        questions = f"{url}/v1/site/referrals/{referral}/questions"
        body = {"criteria": ["ecog", "organ_function", "ecog"], "text": "  is the ECOG from this month?  "}

        asked = await http.post(questions, json=body, headers=wcm)
        assert asked.status_code == 202, asked.text
        receipt = asked.json()
        assert receipt["criteria"] == ["ecog", "organ_function"] and receipt["site_code"] == "WCM"
        [data] = [d for k, d in await kit.events_of(referral) if k == "referral.info_requested"]
        assert data == {
            "clinic_id": "C1",
            "site_code": "WCM",
            "revision": 1,
            "criteria": ["ecog", "organ_function"],
            "text": "is the ECOG from this month?",
        }

        assert_problem(await http.post(questions, json=body, headers=dfci), 404, "at site DFCI")
        assert_problem(await http.post(questions, json=body), 401)
        assert_problem(await http.post(questions, json=body, headers=await tokens.clinic()), 403)
        unknown = await http.post(questions, json={"criteria": ["height"]}, headers=wcm)
        assert_problem(unknown, 422)
        assert unknown.json()["errors"][0]["field"] == "criteria.0"
        assert_problem(await http.post(questions, json={}, headers=wcm), 422)

        await http.post(f"{url}/v1/site/referrals/{referral}/accept", headers=wcm)
        assert_problem(await http.post(questions, json=body, headers=wcm), 409, "accepted")
        assert len([k for k, _ in await kit.events_of(referral) if k == "referral.info_requested"]) == 1
