"""The `maas` command against the real server: predict, status, load test and its gate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import server_config
from maas.export.zoo.maintenance import HEAT_FAILURE


def maas(server, *args: str, stdin: bytes | None = None, reports: Path | None = None, config: Path | None = None):
    env = dict(os.environ, MAAS_CONFIG=str(config or server.layout.config), MAAS_RUN_DIR=str(server.layout.run_dir),
               MAAS_MODEL_STORE=str(server.layout.model_store))
    if reports:
        env["MAAS_REPORTS_DIR"] = str(reports)
    return subprocess.run([sys.executable, "-m", "maas.cli", *args], input=stdin, env=env,
                          capture_output=True, timeout=300)


def test_predict_from_stdin(server) -> None:
    out = maas(server, "predict", "maintenance", "-", stdin=json.dumps(HEAT_FAILURE).encode())
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["failure"] is True and answer["failure_modes"]["HDF"] > 0.5  # heat-dissipation rule


def test_predict_bad_input_exits_nonzero_and_prints_the_error(server) -> None:
    out = maas(server, "predict", "maintenance", "-", stdin=b"{oops")
    assert out.returncode == 1
    assert "not valid JSON" in out.stdout.decode() and "HTTP 400" in out.stderr.decode()


def test_status_lists_ready_workers(server) -> None:
    out = maas(server, "serve", "status")
    assert out.returncode == 0, out.stderr
    assert "maintenance" in out.stdout.decode() and "READY" in out.stdout.decode()


def test_server_not_running_is_one_clear_line(server, tmp_path: Path) -> None:
    config = server_config(tmp_path / "nobody.properties")
    out = maas(server, "predict", "maintenance", "-", stdin=b"{}", config=config)
    err = out.stderr.decode()
    assert out.returncode == 1 and "Traceback" not in err
    assert "not answering" in err or "maas serve start" in err


def test_second_start_on_busy_ports_says_so(server) -> None:
    out = maas(server, "serve", "start", "--timeout", "10")
    assert out.returncode == 1 and "Traceback" not in out.stderr.decode()
    assert "already" in out.stderr.decode()


def test_short_load_test_passes_its_gate_and_writes_reports(server, tmp_path: Path) -> None:
    out = maas(server, "loadtest", "maintenance", "--users", "4", "--spawn-rate", "4", "--run-time", "6",
               reports=tmp_path)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    (report,) = tmp_path.iterdir()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["passed"] and summary["requests"] > 50 and summary["failures"] == 0
    for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "error_ratio", "errors_by_status", "cores", "torchserve_version"):
        assert key in summary
    assert summary["served_version"] == "1.0"
    for name in ("report.html", "locust_stats.csv", "throughput_latency.png"):
        assert (report / name).stat().st_size > 0
    assert "gate: PASS" in out.stdout.decode()


def test_impossible_threshold_fails_and_names_it(server, tmp_path: Path) -> None:
    out = maas(server, "loadtest", "maintenance", "--users", "2", "--run-time", "3", "--max-p95-ms", "0.01",
               reports=tmp_path)
    assert out.returncode == 1
    assert "gate: FAIL" in out.stdout.decode() and "p95 latency" in out.stdout.decode()
    (report,) = tmp_path.iterdir()
    assert json.loads((report / "summary.json").read_text())["passed"] is False


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_load_test_works_for_every_model(server, tmp_path: Path, model: str) -> None:
    out = maas(server, "loadtest", model, "--users", "4", "--run-time", "4", reports=tmp_path)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    (report,) = tmp_path.iterdir()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["model"] == model and summary["failures"] == 0 and summary["requests"] > 10
