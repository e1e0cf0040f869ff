"""Replicas of the serving image under Docker Swarm behind HAProxy (`maas swarm`): under Locust
load a killed container is replaced with no failed request, a rolling update to a new model
version completes with no failed request, and scaling up and down works. The containers run as
the manifests run them, on storage trees `maas export-kserve` writes (maintenance 1.0 and 2.0)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from maas import loadtest
from maas.export import zoo
from maas.export.zoo.maintenance import HEALTHY
from maas.image import build_image, docker_env
from maas.kube import write_storage
from maas.properties import free_loopback_ports
from maas.slo import SLO
from maas.swarm import Swarm


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory, maintenance_built, maintenance_v2):
    build_image(env=docker_env())
    spec = zoo.get("maintenance").spec
    trees = tmp_path_factory.mktemp("swarm_trees")
    for built, version in ((maintenance_built, None), (maintenance_v2, "2.0")):
        copied = write_storage(trees / (version or "1.0"), spec, ROOT / "config.properties", built.mar.parent, version)
        assert copied is not None
    s = Swarm(tmp_path_factory.mktemp("swarm") / "home", service=f"maas-test-{int(time.time()) % 100000}")
    address = s.start(trees / "1.0", 2, free_loopback_ports(1)[0], max_replicas=3)
    yield s, address, trees
    s.stop()


def load(address: str, key_file: Path, out: Path, seconds: int, users: int = 6) -> dict:
    slo = SLO(users=users, spawn_rate=users, warmup_s=1, run_time_s=seconds)
    summary, _ = loadtest.run(loadtest.LoadTest("maintenance", slo), address, key_file, out)
    return summary


def under_load(swarm_: Swarm, address: str, out: Path, seconds: int, action, users: int = 6) -> tuple[dict, float]:
    """Locust for `seconds`; `action` runs 3 s in; returns the load summary and the action's seconds."""
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(load(address, swarm_.key_file, out, seconds, users)))
    runner.start()
    time.sleep(3)
    started = time.monotonic()
    action()
    took = time.monotonic() - started
    runner.join()
    return result, took


def versions(swarm_: Swarm, address: str) -> set[str]:
    key = json.loads(swarm_.key_file.read_text())["inference"]["key"]
    return {requests.post(f"{address}/predictions/maintenance", json=HEALTHY, timeout=10,
                          headers={"Authorization": f"Bearer {key}"}).headers["X-Model-Version"] for _ in range(8)}


def test_one_address_and_the_key_checked(swarm) -> None:
    s, address, _ = swarm
    assert s.up() == 2 and versions(s, address) == {"1.0"}
    refused = requests.post(f"{address}/predictions/maintenance", json=HEALTHY, timeout=10)
    assert refused.status_code == 401


def test_a_killed_container_is_replaced_and_costs_no_request(swarm, tmp_path: Path) -> None:
    s, address, _ = swarm

    def kill_and_wait() -> None:
        s.kill_one()
        deadline = time.monotonic() + 60
        while s.up() == 2 and time.monotonic() < deadline:  # HAProxy notices (inter 1s, fall 2)
            time.sleep(0.2)
        s.wait_up(2, timeout=deadline - time.monotonic())  # Swarm's replacement: healthy, and UP in HAProxy

    result, replaced_s = under_load(s, address, tmp_path, 16, kill_and_wait)
    print(f"\ncontainer killed under load: {result['requests']} requests, {result['failures']} failed, "
          f"{result['rps']:.0f} req/s, p99 {result['p99_ms']:.0f} ms; replaced and UP after {replaced_s:.1f} s")
    assert s.up() == 2, s.server_states()
    assert result["requests"] > 300 and result["failures"] == 0, result["errors_by_status"]


def test_a_rolling_update_to_a_new_version_loses_no_request(swarm, tmp_path: Path) -> None:
    s, address, trees = swarm
    # The whole update (~33 s: each container stopped in ~3 s, started, healthy, UP in HAProxy) must
    # fall inside the load, not just its start (before the image's entrypoint passed SIGTERM on, each
    # stop waited out the 10 s grace period: 48 s, and the load ended before the update did)
    result, took = under_load(s, address, tmp_path, 45, lambda: s.update(trees / "2.0", timeout=120), users=3)
    print(f"\nrolling update 1.0 -> 2.0 under load: {result['requests']} requests, {result['failures']} failed, "
          f"p99 {result['p99_ms']:.0f} ms; update took {took:.1f} s")
    assert result["failures"] == 0 and result["requests"] > 300, result["errors_by_status"]
    assert 3 + took < 45, f"the update took {took:.0f} s: its end was not under load"
    assert versions(s, address) == {"2.0"}


def test_scaling_up_and_down(swarm) -> None:
    s, address, _ = swarm
    s.scale(3, timeout=120)
    assert s.up() == 3 and s.replicas() == 3
    s.scale(1, timeout=120)
    assert s.up() == 1 and versions(s, address) == {"2.0"}  # the last test: the fixture removes the service
