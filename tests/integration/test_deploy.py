"""Deploy, scale, version and undeploy through the management API, via the `maas` command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import bare_server
from maas import deploy as d
from maas.client import ApiError
from maas.server import TorchServe
from maas.status_table import status_rows

GOOD = {"type": "L", "air_temperature_k": 299.0, "process_temperature_k": 309.5,
        "rotational_speed_rpm": 1400, "torque_nm": 55.0, "tool_wear_min": 190}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, maintenance_built, maintenance_v2) -> TorchServe:
    """A server that loads nothing at start; its store holds maintenance 1.0 and a 2.0 trained on another seed."""
    store = tmp_path_factory.mktemp("versions_store")
    shutil.copy(maintenance_built.mar, store / "maintenance.mar")
    shutil.copy(maintenance_v2.mar, store / "maintenance-2.0.mar")
    ts = bare_server(tmp_path_factory, store)
    yield ts
    ts.stop()


def maas(server: TorchServe, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MAAS_CONFIG=str(server.layout.config), MAAS_RUN_DIR=str(server.layout.run_dir),
               MAAS_MODEL_STORE=str(server.layout.model_store))
    out = subprocess.run([sys.executable, "-m", "maas.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def pids(server: TorchServe, version: str) -> list[int]:
    return sorted(w["pid"] for w in server.client.describe("maintenance", version)[0]["workers"])


def test_versions_side_by_side_scale_default_and_undeploy(bare: TorchServe) -> None:
    out = maas(bare, "deploy", "maintenance", "--version", "1.0")
    assert out.returncode == 0, out.stderr
    assert "deployed maintenance 1.0" in out.stdout and "READY" in out.stdout
    assert maas(bare, "deploy", "maintenance", "--version", "2.0", "--batch-size", "4").returncode == 0
    rows = {r["version"]: r for r in status_rows(bare.client, "maintenance")}
    assert rows["1.0"]["default"] and not rows["2.0"]["default"] and rows["2.0"]["batch_size"] == 4

    # both versions answer at their own URL and say which answered; the two trainings differ
    one = bare.client.predict("maintenance", json.dumps(GOOD).encode(), version="1.0")
    two = bare.client.predict("maintenance", json.dumps(GOOD).encode(), version="2.0")
    assert (one.headers["X-Model-Version"], two.headers["X-Model-Version"]) == ("1.0", "2.0")
    assert one.json()["failure_probability"] != two.json()["failure_probability"]

    # scale 1 -> 3 -> 1, checked against the management API's worker list and pids
    (first,) = pids(bare, "1.0")
    out = maas(bare, "scale", "maintenance", "--version", "1.0", "--min-workers", "3")
    assert out.returncode == 0 and "3 READY workers" in out.stdout
    three = pids(bare, "1.0")
    assert len(set(three)) == 3 and first in three
    assert all(w["status"] == "READY" for w in bare.client.describe("maintenance", "1.0")[0]["workers"])
    assert maas(bare, "scale", "maintenance", "--version", "1.0", "--min-workers", "1").returncode == 0
    assert len(pids(bare, "1.0")) == 1

    # set-default switches what /predictions/maintenance answers with
    assert bare.client.predict("maintenance", json.dumps(GOOD).encode()).headers["X-Model-Version"] == "1.0"
    assert maas(bare, "set-default", "maintenance", "2.0").returncode == 0
    assert bare.client.predict("maintenance", json.dumps(GOOD).encode()).headers["X-Model-Version"] == "2.0"
    status = maas(bare, "status", "maintenance")
    assert status.returncode == 0 and "2.0" in status.stdout and "*" in status.stdout

    # undeploy removes exactly one version
    assert maas(bare, "undeploy", "maintenance", "--version", "1.0").returncode == 0
    assert [r["version"] for r in status_rows(bare.client, "maintenance")] == ["2.0"]
    assert bare.client.predict_json("maintenance", GOOD, version="2.0")
    assert maas(bare, "undeploy", "maintenance", "--version", "2.0").returncode == 0
    assert bare.client.list_models() == []


@pytest.mark.parametrize("args,message", [
    (("deploy", "maintenance", "--version", "9.9"), "no archive for maintenance version 9.9"),
    (("deploy", "nosuchmodel"), "no archive for nosuchmodel"),
    (("scale", "nosuchmodel", "--min-workers", "2"), "Model not found"),
    (("set-default", "maintenance", "7.7"), "not found"),
    (("undeploy", "nosuchmodel"), "Model not found"),
])
def test_errors_are_one_line_with_nonzero_exit(bare: TorchServe, args, message) -> None:
    out = maas(bare, *args)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_token_refused_is_a_clear_error(bare: TorchServe, tmp_path: Path) -> None:
    keys = json.loads(bare.layout.key_file.read_text())
    fake_run = tmp_path / "run"
    fake_run.mkdir()
    for entry in keys.values():
        entry["key"] = "wrong"
    (fake_run / "key_file.json").write_text(json.dumps(keys))
    env = dict(os.environ, MAAS_CONFIG=str(bare.layout.config), MAAS_RUN_DIR=str(fake_run),
               MAAS_MODEL_STORE=str(bare.layout.model_store))
    out = subprocess.run([sys.executable, "-m", "maas.cli", "status"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "TokenRefused" in out.stderr and "Traceback" not in out.stderr


def test_scale_timeout_is_reported(bare: TorchServe) -> None:
    assert maas(bare, "deploy", "maintenance", "--version", "2.0").returncode == 0
    try:
        out = maas(bare, "scale", "maintenance", "--min-workers", "2", "--timeout", "0.01")
        assert out.returncode == 1 and "not reached within" in out.stderr
    finally:
        maas(bare, "undeploy", "maintenance", "--version", "2.0")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/evil.mar", "https://example.com/m.mar", "file:///etc/passwd",
                                 "../maintenance.mar", "/etc/passwd", "file:///tmp/../etc/x.mar"])
def test_registration_outside_the_model_store_is_refused(bare: TorchServe, url: str) -> None:
    before = sorted(p.name for p in bare.layout.model_store.iterdir())
    with pytest.raises(ApiError) as err:
        bare.client.management("POST", "/models", params={"url": url, "initial_workers": 1, "synchronous": "true"})
    assert err.value.status in (400, 403, 404)
    assert sorted(p.name for p in bare.layout.model_store.iterdir()) == before
    assert bare.client.list_models() == []


def test_undeploy_right_after_a_load_burst_succeeds(bare: TorchServe) -> None:
    """Unregister the moment a burst of traffic ends (TorchServe 0.12 once answered 500
    ConcurrentModificationException here): maas retries until the workers are idle."""
    from concurrent.futures import ThreadPoolExecutor

    assert maas(bare, "deploy", "maintenance", "--version", "1.0", "--workers", "2").returncode == 0
    assert len(pids(bare, "1.0")) == 2
    body = json.dumps(GOOD).encode()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: bare.client.predict("maintenance", body, version="1.0").status_code, range(300)))
    assert set(codes) == {200}
    assert d.undeploy(bare.client, "maintenance", "1.0") == "1.0"
    assert bare.client.list_models() == []


def test_what_maas_did_not_make_does_not_break_it(bare: TorchServe, tmp_path: Path) -> None:
    """A stock TorchServe archive in the store and models registered under odd names through the
    raw management API: every command still works, and what it skips it names."""
    import zipfile

    stock = bare.layout.model_store / "stock.mar"
    with zipfile.ZipFile(stock, "w") as z:  # what torch-model-archiver writes for a plain handler
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "stock", "modelVersion": "1.0",
                                                                  "handler": "stock.py"}}))
        z.writestr("stock.py", "def handle(data, context):\n    return data\n")
    (bare.layout.model_store / "junk.mar").write_bytes(b"not a zip")
    try:
        out = maas(bare, "export-triton", "--out", str(tmp_path / "triton"))
        assert out.returncode == 0, out.stderr
        assert "skipped stock.mar: has no manifest.json" in out.stderr and "skipped junk.mar" in out.stderr
        out = maas(bare, "export-triton", "stock", "--out", str(tmp_path / "triton"))
        assert out.returncode == 1 and "stock.mar" in out.stderr

        for odd in ("a/../b", "été", "x y"):
            done = bare.client.management("POST", "/models", params={"url": "maintenance.mar", "model_name": odd,
                                                                    "initial_workers": 1, "synchronous": "true"})
            assert "registered" in json.dumps(done).lower() or done
        out = maas(bare, "status")
        assert out.returncode == 0, out.stderr
        for odd in ("été", "x y"):
            assert odd in out.stdout
            assert bare.client.describe(odd)[0]["modelName"] == odd  # names are quoted in every URL
        assert bare.client.predict_json("été", GOOD)["failure"] is False
        # TorchServe decodes %2F in its routes: a name with '/' is listed, said unreachable, and the rest works
        assert "a/../b" in out.stdout and "cannot describe it" in out.stdout
        refused = maas(bare, "deploy", "x y")
        assert refused.returncode == 1 and "letters, digits" in refused.stderr
    finally:
        for odd in ("été", "x y"):  # `a/../b` cannot be unregistered through TorchServe's API at all
            try:
                d.undeploy(bare.client, odd)
            except ApiError:
                pass
        stock.unlink()
        (bare.layout.model_store / "junk.mar").unlink()
