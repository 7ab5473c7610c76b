"""deploy/prometheus/: the scrape configuration and the alert rules, checked and
unit-tested by promtool (Debian's ``prometheus`` package), and the series the
rules read exist where the services export them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.databases import in_process_client

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
INSTALL_HINT = "apt-get install -y prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail(
            f"promtool is not installed; run `{INSTALL_HINT}` (Debian's prometheus "
            "package ships it)"
        )
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_scrape_configuration_is_valid():
    # --syntax-only: the API token file exists only inside the Prometheus container.
    promtool("check", "config", "--syntax-only", str(CONFIG))


def test_the_alert_rules_are_valid():
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", str(RULES)).stdout


def test_the_alert_rules_pass_their_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS)).stdout


def test_prometheus_scrapes_the_api_the_workers_and_flower_and_loads_the_rules():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"windfarm-api", "windfarm-worker", "flower"}
    assert jobs["windfarm-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    assert jobs["windfarm-api"]["authorization"]["type"] == "Bearer"
    [workers] = jobs["windfarm-worker"]["dns_sd_configs"]
    assert (workers["names"], workers["type"], workers["port"]) == (["worker"], "A", 9808)
    assert jobs["flower"]["static_configs"] == [{"targets": ["flower:5555"]}]


def test_every_alert_has_a_unit_test_that_fires_it():
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in rules}


def _series_in(text: str) -> set[str]:
    return set(re.findall(r"\b(windfarm_etl_[a-z_]+|http_requests_total)\b", text))


def test_the_rules_read_series_that_the_api_exports(dbs):
    """Names drift: every series the rules read is on the API's /metrics."""
    from api.main import create_app
    from api.metrics import install

    app = create_app()
    install(app)
    with in_process_client(app=app) as client:
        client.get("/health")
        exported = client.get("/metrics").text
    used = _series_in(RULES.read_text())
    assert used and used <= _series_in(exported), used - _series_in(exported)
