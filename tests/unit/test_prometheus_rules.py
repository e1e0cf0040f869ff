"""maas's Prometheus rules: generated from the SLO files, committed up to date, valid for
promtool, and each alert proved on TorchServe-shaped series (deploy/prometheus/maas-rules.test.yaml)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from maas.monitor import prometheus_config, rules, rules_yaml, slo_models

RULES = ROOT / "deploy" / "prometheus" / "maas-rules.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make test` installs it (make prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_the_committed_rules_are_made_from_the_slo_files() -> None:
    assert RULES.read_text() == rules_yaml(slo_models()), "run `maas monitor rules --out deploy/prometheus/maas-rules.yaml`"


def test_every_slo_has_its_latency_alert_with_its_own_budget() -> None:
    slos = slo_models()
    latency = [r for g in rules(slos)["groups"] for r in g["rules"] if r.get("alert") == "MaasLatencyOverSLO"]
    assert {r["labels"]["model"]: r["expr"] for r in latency} == {
        m: f'maas:inference_latency_ms:mean1m{{model_name="{m}"}} > {s.thresholds.max_p95_ms:g}' for m, s in slos.items()}


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    tested = promtool("test", "rules", str(RULES.with_name("maas-rules.test.yaml")))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_scrape_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(RULES, tmp_path / RULES.name)
    for address, ca in (("http://127.0.0.1:8082", None), ("https://127.0.0.1:8443", str(tmp_path / "ca.pem"))):
        (tmp_path / "ca.pem").write_text("")
        config = prometheus_config(address, tmp_path / RULES.name, ca)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        check = promtool("check", "config", str(tmp_path / "prometheus.yml"))
        assert check.returncode == 0, check.stdout + check.stderr
        assert config["scrape_configs"][0]["static_configs"][0]["targets"] == [address.split("//")[1]]
