"""What `make run` prints: where each part of the running system is, the site portal included."""

from __future__ import annotations

import json
from pathlib import Path

from services.devstack.run import summary
from services.devstack.stack import Stack, StackConfig


def test_the_summary_names_the_portal_and_the_site_email_links_to_it(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path)
    printed = summary(config, {"ops": "s3cret"})
    portal = f"{config.url('site_router')}/portal/"
    assert any("portal" in line and line.rstrip().endswith(portal) for line in printed.splitlines())

    env = Stack(config).service_env("notifier")
    assert env["NOTIFIER_PORTAL_URL"] == f"{config.url('site_router')}/portal"
    assert Stack(config).service_env("site_router")["SITE_ROUTER_INTAKE_URL"] == config.url("intake")


def test_the_demo_sends_its_coordinators_to_the_portal_for_the_referrals_left_routed() -> None:
    from services.devstack.demo import portal_hint

    views = {
        "ny": {"status": "notified", "site": {"code": "WCM"}},
        "boston": {"status": "notified", "site": {"code": "DFCI"}},
        "ecog 3": {"status": "not_routed", "site": None},
    }
    hint = portal_hint(views, "http://127.0.0.1:8003/portal/")
    assert "http://127.0.0.1:8003/portal/" in hint
    assert "coordinator.dfci@demo.trialroute.example, coordinator.wcm@demo.trialroute.example" in hint
    assert portal_hint({"x": {"status": "not_routed", "site": None}}, "u") == ""


def test_a_stack_of_auth_and_intake_alone_configures_auth_with_no_page_clients(tmp_path: Path) -> None:
    """The intake benchmark runs auth and intake only: auth's web clients name no service it lacks."""
    config = StackConfig(run_dir=tmp_path, ports={"auth": 18000, "intake": 18001})
    clients = json.loads(Stack(config).service_env("auth")["AUTH_WEB_CLIENTS"])
    uris = [uri for c in clients for uri in c["redirect_uris"]]
    assert all(uri.startswith(("http://127.0.0.1:18000/", "http://127.0.0.1:18001/")) for uri in uris), uris
    assert "insights-web" not in {c["client_id"] for c in clients}

    whole = json.loads(Stack(StackConfig(run_dir=tmp_path)).service_env("auth")["AUTH_WEB_CLIENTS"])
    assert {c["client_id"] for c in whole} >= {"insights-web"}
    assert all(uri.startswith("http://127.0.0.1:") for c in whole for uri in c["redirect_uris"])
