"""The release gate against a real TorchServe: promotion, refusal, distributed Locust, capacity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import bare_server, package_variant, tamper

FAST_SLO = """
users: 4
spawn_rate: 4
warmup_s: 1
run_time_s: 4
p95_ms: 500
p99_ms: 1000
max_error_ratio: 0.01
min_rps: 10
regression:
  max_p95_increase: 5.0
  max_rps_decrease: 0.9
"""


@pytest.fixture(scope="module")
def release_server(tmp_path_factory: pytest.TempPathFactory, maintenance_built, maintenance_v2):
    """Store: maintenance 1.0, 2.0 (another training), 3.0 whose handler answers wrongly and 4.0 whose
    model bytes changed after packaging (its workers refuse to load it)."""
    store = tmp_path_factory.mktemp("release_store")
    shutil.copy(maintenance_built.mar, store / "maintenance.mar")
    shutil.copy(maintenance_v2.mar, store / "maintenance-2.0.mar")
    package_variant(maintenance_built, store, tmp_path_factory.mktemp("bad"), "maintenance-3.0",
                    lambda src: src.replace('"failure": bool(p >= threshold)', '"failure": bool(p < threshold)'),
                    version="3.0")
    tamper(maintenance_built.mar, store / "maintenance-4.0.mar", version="4.0")
    ts = bare_server(tmp_path_factory, store)
    ts.client.management("POST", "/models", params={"url": "maintenance.mar", "synchronous": "true"})
    yield ts
    ts.stop()


def maas(server, *args: str, reports: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MAAS_CONFIG=str(server.layout.config), MAAS_RUN_DIR=str(server.layout.run_dir),
               MAAS_MODEL_STORE=str(server.layout.model_store), MAAS_REPORTS_DIR=str(reports))
    out = subprocess.run([sys.executable, "-m", "maas.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def default_version(server) -> str:
    return str(server.client.describe("maintenance")[0]["modelVersion"])


def test_wrong_answers_are_not_promoted_and_the_old_default_keeps_serving(release_server, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(FAST_SLO)
    out = maas(release_server, "release", "maintenance", "--candidate", "3.0", "--slo", str(slo), reports=tmp_path)
    assert out.returncode == 1 and "NOT released" in out.stdout and "smoke:" in out.stdout
    assert default_version(release_server) == "1.0"
    assert [str(d["modelVersion"]) for d in release_server.client.describe("maintenance", "all")] == ["1.0"]
    resp = release_server.client.predict("maintenance", json.dumps({"type": "L", "air_temperature_k": 298.1,
        "process_temperature_k": 308.6, "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}).encode())
    assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "1.0"
    (record,) = tmp_path.glob("*-maintenance-release/release.json")
    decision = json.loads(record.read_text())
    assert decision["promoted"] is False and decision["default_now"] == "1.0" and decision["reasons"]


def test_a_candidate_that_cannot_load_is_refused_with_its_workers_reason(release_server, tmp_path: Path) -> None:
    before = default_version(release_server)
    slo = tmp_path / "slo.yaml"
    slo.write_text(FAST_SLO)
    out = maas(release_server, "release", "maintenance", "--candidate", "4.0", "--slo", str(slo), reports=tmp_path)
    assert out.returncode == 1 and "NOT released" in out.stdout, out.stdout + out.stderr
    assert "deploy: maintenance 4.0: workers failed to load" in out.stdout and "sha256" in out.stdout
    assert default_version(release_server) == before
    (record,) = tmp_path.glob("*-maintenance-release/release.json")
    decision = json.loads(record.read_text())
    assert decision["promoted"] is False and "candidate_summary" not in decision  # no load test was run
    release_server.client.management("DELETE", "/models/maintenance/4.0")


def test_impossible_slo_keeps_the_candidate_out(release_server, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(FAST_SLO)
    out = maas(release_server, "release", "maintenance", "--candidate", "2.0", "--slo", str(slo),
               "--max-p95-ms", "0.01", reports=tmp_path)
    assert out.returncode == 1 and "SLO: p95 latency" in out.stdout
    assert default_version(release_server) == "1.0"


def test_a_good_candidate_is_promoted_with_figures(release_server, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(FAST_SLO)
    out = maas(release_server, "release", "maintenance", "--candidate", "2.0", "--slo", str(slo), reports=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert default_version(release_server) == "2.0"
    (record,) = tmp_path.glob("*-maintenance-release/release.json")
    decision = json.loads(record.read_text())
    assert decision["promoted"] and decision["previous_default"] == "1.0"
    assert decision["candidate_summary"]["rps"] > 0 and decision["baseline_summary"]["rps"] > 0
    assert decision["wall_time_s"] > 0


def test_distributed_locust_gives_one_merged_summary(release_server, tmp_path: Path) -> None:
    out = maas(release_server, "loadtest", "maintenance", "--workers", "2", "--users", "4", "--run-time", "5",
               "--warmup", "1", reports=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (report,) = tmp_path.iterdir()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["locust_workers"] == 2 and summary["requests"] > 50 and summary["failures"] == 0
    assert len(list(report.glob("locust_stats.csv"))) == 1


def test_capacity_search_reports_the_best_step(release_server, tmp_path: Path) -> None:
    out = maas(release_server, "loadtest", "maintenance", "--find-capacity", "--max-users", "2", "--step-time", "3",
               "--warmup", "1", reports=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = tmp_path.glob("*-capacity/capacity.json")
    result = json.loads(path.read_text())
    assert [s["users"] for s in result["steps"]] == [1, 2]
    assert result["capacity"]["rps"] == max(s["rps"] for s in result["steps"])
    assert "capacity of maintenance" in out.stdout
