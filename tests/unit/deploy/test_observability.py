"""Monitoring as deployed: the alert rules (promtool's own checks and rule tests), the Grafana dashboard
and Prometheus in docker-compose.yml, checked against the metrics the code exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import shared.observability  # noqa: F401  (registers every metric)
from tests.unit.deploy import facts

pytestmark = pytest.mark.unit

PROMETHEUS = facts.ROOT / "deploy" / "prometheus"
GRAFANA = facts.ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "trialroute.json"
SERVICES: dict[str, dict[str, Any]] = facts.load_compose()["services"]
_NAME = re.compile(r"\b(trialroute_[a-z_]+|up)\b")


def exported() -> set[str]:
    """Every series name the code's metrics produce (a counter's ``_total``, a histogram's parts)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("trialroute_")
        for suffix in suffixes.get(family.type, [""])
    }


def promtool() -> str:
    """promtool, found or unpacked from Debian's package by the project's script (scripts/test.sh runs
    it too)."""
    script = facts.ROOT / "scripts" / "install-promtool.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"scripts/install-promtool.sh failed: {done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run(
        [tool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [tool, "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_and_documented() -> None:
    names = {rule["alert"] for rule in rules()}
    assert names >= {
        "TrialrouteConsumerLagHigh",
        "TrialrouteOutboxStuck",
        "TrialrouteDeadLetters",
        "TrialrouteEmailsFailing",
        "TrialrouteTokenFailureSpike",
        "TrialrouteServiceDown",
    }
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == names, "every alert has a test in which it fires"
    doc = (facts.ROOT / "docs" / "observability.md").read_text()
    for rule in rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {rule['alert']}" in doc and anchor == rule["alert"].lower(), rule["alert"]


@pytest.mark.parametrize(
    "where, queries",
    [
        ("dashboard", dashboard_queries()),
        ("alert rules", [rule["expr"] for rule in rules()]),
    ],
)
def test_queries_name_metrics_the_code_exports(where: str, queries: list[str]) -> None:
    names = exported() | {"up"}
    assert queries, f"the {where} have queries"
    for query in queries:
        used = set(_NAME.findall(query))
        assert used, f"{where}: {query} names no metric"
        assert used <= names, f"{where}: {query} names {used - names}, which nothing exports"


def test_the_dashboard_shows_what_ops_watch() -> None:
    joined = "\n".join(dashboard_queries())
    for metric in (
        "trialroute_events_consumed_total",
        "trialroute_consumer_lag",
        "trialroute_outbox_oldest_unsent_seconds",
        "trialroute_dead_letters_total",
        "trialroute_emails_total",
        "trialroute_http_request_seconds_bucket",
        "trialroute_token_failures_total",
    ):
        assert metric in joined, metric
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}
    assert source["url"] == "http://prometheus:9090"


def _mounts(service: str) -> dict[str, Path]:
    """Container path → host path of a compose service's bind mounts."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        host, container = str(volume).split(":")[:2]
        if host.startswith("./"):
            found[container] = facts.ROOT / host
    return found


def test_compose_runs_prometheus_with_the_rules_and_grafana_with_the_provisioning() -> None:
    prometheus = _mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROMETHEUS / "prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == PROMETHEUS / "alerts.yml"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    [job] = config["scrape_configs"]
    scraped = {name for sd in job["dns_sd_configs"] for name in sd["names"]}
    serving = {name for name, s in SERVICES.items() if facts.served_service(s.get("command", [])) is not None}
    assert scraped == serving, "every service is scraped"
    for name in serving:
        env = SERVICES[name]["environment"]
        port = next(v for k, v in env.items() if k.endswith("_METRICS_PORT"))
        assert {sd["port"] for sd in job["dns_sd_configs"]} == {int(port)}, name

    grafana = _mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == GRAFANA / "dashboards"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "trialroute.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
