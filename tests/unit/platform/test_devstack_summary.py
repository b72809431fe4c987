"""What `make run` prints: where each part of the running system is, the site portal included."""

from __future__ import annotations

from pathlib import Path

from services.devstack.run import summary
from services.devstack.stack import Stack, StackConfig


def test_the_summary_names_the_portal_and_the_site_email_links_to_it(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path)
    printed = summary(config, {"ops": "s3cret"})
    portal = f"{config.url('site_router')}/portal/"
    assert any("portal" in line and line.rstrip().endswith(portal) for line in printed.splitlines())

    env = Stack(config).service_env("notifier")
    assert (
        env["NOTIFIER_SITE_REFERRAL_URL"] == f"{config.url('site_router')}/portal/referrals/{{referral_id}}"
    )
    assert Stack(config).service_env("site_router")["SITE_ROUTER_INTAKE_URL"] == config.url("intake")
