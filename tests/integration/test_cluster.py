"""Replicas behind HAProxy (`maas cluster`): one address with the key checked; a whole replica
(Java frontend and workers) SIGKILLed under Locust load costs no request, HAProxy marks it down
within its health-check window and takes it back after a restart; a rolling release drains one
replica at a time with no failed request."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from maas import deploy as d
from maas import loadtest
from maas.cluster import Cluster
from maas.export.zoo.maintenance import HEALTHY
from maas.properties import free_loopback_ports
from maas.release import release
from maas.slo import SLO


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, maintenance_built):
    if shutil.which("haproxy") is None:
        pytest.fail("HAProxy is missing: `make test` installs it (make haproxy)")
    store = tmp_path_factory.mktemp("cluster_store")
    shutil.copy(maintenance_built.mar, store / "maintenance.mar")
    c = Cluster(ROOT / "config.properties", store, tmp_path_factory.mktemp("cluster") / "cluster")
    address = c.start(2, free_loopback_ports(1)[0])
    yield c, address
    c.stop()


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.25)
    return result


def load(address: str, key_file: Path, out: Path, seconds: int, users: int = 8) -> dict:
    slo = SLO(users=users, spawn_rate=users, warmup_s=1, run_time_s=seconds)
    summary, _ = loadtest.run(loadtest.LoadTest("maintenance", slo), address, key_file, out)
    return summary


def test_one_address_with_the_key_checked(cluster) -> None:
    c, address = cluster
    key = json.loads(c.key_file.read_text())["inference"]["key"]
    ok = requests.post(f"{address}/predictions/maintenance", json=HEALTHY, headers={"Authorization": f"Bearer {key}"},
                       timeout=10)
    assert ok.status_code == 200 and ok.json()["failure"] is False
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = requests.post(f"{address}/predictions/maintenance", json=HEALTHY, headers=headers, timeout=10)
        assert refused.status_code == 401 and "missing or wrong key" in refused.json()["message"]
    assert c.server_states() == {"replica-1": "UP", "replica-2": "UP"}
    for replica in c.replicas():  # the replicas themselves listen on loopback only
        assert replica.endpoints.inference.startswith("http://127.0.0.1:")


def test_a_killed_replica_costs_no_request_and_rejoins(cluster, tmp_path: Path) -> None:
    c, address = cluster
    victim = c.replica(1)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(load(address, c.key_file, tmp_path, seconds=14)))
    runner.start()
    time.sleep(6)
    killed_at = time.monotonic()
    os.killpg(victim.pid(), signal.SIGKILL)  # the whole TorchServe: Java frontend and Python workers
    wait_for("HAProxy marks replica-1 DOWN", lambda: c.server_states()["replica-1"] == "DOWN", timeout=10)
    marked_down_s = time.monotonic() - killed_at
    runner.join()
    print(f"\nreplica killed under load: {result['requests']} requests, {result['failures']} failed, "
          f"{result['rps']:.0f} req/s, p99 {result['p99_ms']:.0f} ms; marked DOWN after {marked_down_s:.1f} s")
    assert result["requests"] > 500 and result["failures"] == 0, result["errors_by_status"]
    assert marked_down_s < 4  # inter 1s, fall 2
    c.restart_replica(1, timeout=120)
    wait_for("replica-1 back UP", lambda: c.server_states()["replica-1"] == "UP", timeout=15)


def test_a_rolling_release_loses_no_request(cluster, tmp_path: Path, maintenance_v2) -> None:
    """maintenance 2.0 to each replica in turn: drain, deploy, set default, check, re-enable; on the
    first, `maas release`'s gate (deploy, smoke checks, load test, promote) does the middle steps."""
    c, address = cluster
    shutil.copy(maintenance_v2.mar, c.model_store / maintenance_v2.mar.name)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(load(address, c.key_file, tmp_path, seconds=20, users=4)))
    runner.start()
    time.sleep(3)
    for index, replica in enumerate(c.replicas(), 1):
        c.set_replica(index, "drain")
        wait_for(f"replica-{index} drained", lambda: c.server_states()[f"replica-{index}"] == "DRAIN", timeout=10)
        if index == 1:  # the release gate runs on the first upgraded replica, before the rest follow
            slo = SLO(users=2, spawn_rate=2, warmup_s=1, run_time_s=3)
            slo.regression.max_p95_increase, slo.regression.max_rps_decrease = 3.0, 0.75  # the road, not the speed
            record = release(replica.client, replica.endpoints.inference, None, c.model_store, tmp_path / "gate",
                             "maintenance", "2.0", slo, worker_restarts=replica.worker_restarts)
            assert record["promoted"], record["reasons"]
        else:
            d.deploy(replica.client, c.model_store, "maintenance", "2.0")
            d.set_default(replica.client, "maintenance", "2.0")
        answer = replica.client.predict("maintenance", json.dumps(HEALTHY).encode())
        assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "2.0"
        c.set_replica(index, "ready")
        wait_for(f"replica-{index} back", lambda: c.server_states()[f"replica-{index}"] == "UP", timeout=10)
    runner.join()
    assert result["failures"] == 0 and result["requests"] > 200, result["errors_by_status"]
    key = json.loads(c.key_file.read_text())["inference"]["key"]
    versions = {requests.post(f"{address}/predictions/maintenance", json=HEALTHY, timeout=10,
                              headers={"Authorization": f"Bearer {key}"}).headers["X-Model-Version"] for _ in range(8)}
    assert versions == {"2.0"}


def test_throughput_through_haproxy_vs_one_replica_alone(cluster, tmp_path: Path) -> None:
    """Reported, not asserted: on 2 cores two replicas cannot scale; this is the balancer's overhead."""
    c, address = cluster
    c.set_replica(2, "maint")
    try:
        through = load(address, c.key_file, tmp_path / "haproxy", seconds=6)
        direct = load(c.replica(1).endpoints.inference, None, tmp_path / "direct", seconds=6)
    finally:
        c.set_replica(2, "ready")
    print(f"\none replica through HAProxy: {through['rps']:.0f} req/s p50 {through['p50_ms']:.0f} p99 {through['p99_ms']:.0f} ms;"
          f" the same replica directly: {direct['rps']:.0f} req/s p50 {direct['p50_ms']:.0f} p99 {direct['p99_ms']:.0f} ms;"
          f" ratio {through['rps'] / direct['rps']:.2f}")
    assert through["failures"] == 0 and direct["failures"] == 0


def test_the_cluster_commands(cluster) -> None:
    import subprocess
    import sys

    c, address = cluster
    env = dict(os.environ, MAAS_CONFIG=str(ROOT / "config.properties"), MAAS_RUN_DIR=str(c.home.parent),
               MAAS_MODEL_STORE=str(c.model_store))

    def maas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "maas.cli", "cluster", *args], env=env, capture_output=True,
                              text=True, timeout=300)

    status = maas("status")
    assert status.returncode == 0 and address in status.stdout and "replica-2  UP" in status.stdout, status.stderr
    assert maas("set", "2", "drain").returncode == 0 and c.server_states()["replica-2"] == "DRAIN"
    assert maas("set", "2", "ready").returncode == 0
    wait_for("replica-2 UP", lambda: c.server_states()["replica-2"] == "UP", timeout=10)
    pid = c.replica(2).pid()
    restarted = maas("restart", "2")
    assert restarted.returncode == 0 and c.replica(2).pid() != pid, restarted.stderr
    wait_for("replica-2 UP after its restart", lambda: c.server_states()["replica-2"] == "UP", timeout=15)
