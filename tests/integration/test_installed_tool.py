"""maas as a user installs it: a fresh venv, `pip install <checkout>` (not editable), an empty
directory, `maas init`, a transformers model packaged, served, called, load-tested, stopped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from maas.properties import on_free_loopback_ports, read_properties, write_properties


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with maas installed from this checkout as a user would."""
    fresh = tmp_path_factory.mktemp("fresh")
    # The checkout as git sees it (no build/, .venv or caches): pip builds in the source tree it is given.
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    checkout = fresh / "checkout"
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    env = fresh / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    # --no-compile: byte-compiling all of torch and onnxruntime up front is ~45 s of this test's ~95 s;
    # Python compiles what maas imports on first use, so what runs is the same.
    # The base install (no extras); the user's model code needs transformers, which the user installs.
    done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                           str(checkout), "transformers==5.23.0"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def run(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    out = subprocess.run([str(venv / "bin" / "maas"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"maas {' '.join(args)}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr
    return out


def test_the_wheel_carries_the_handlers_and_nothing_of_the_checkout(venv: Path) -> None:
    record = next((venv / "lib").glob("python3*/site-packages/maas-*.dist-info/RECORD")).read_text()
    files = {line.split(",")[0] for line in record.splitlines()}
    for needed in ("maas/handlers/ort_base.py", "maas/handlers/tensor.py", "maas/handlers/http_reply.py",
                   "maas/handlers/dtypes.py", "maas/loadtests/locustfile.py", "maas/loadtests/slo/minilm.yaml",
                   "maas/templates/config.properties", "maas/templates/maas.yaml", "maas/export/package.py",
                   "maas/core/spec.py"):
        assert needed in files, needed
    assert not [f for f in files if f.startswith(("tests/", "build/", "benchmarks/")) or "/tests/" in f]
    # one installed package: nothing but maas (and its scripts and metadata) reaches site-packages
    top = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert {t for t in top if not t.startswith("maas-")} == {"maas"}, top
    # no extra was asked for: the zoo's training stack is not there, and building the zoo says so
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "sklearn").exists() and not (site / "sentence_transformers").exists()


def test_building_the_zoo_without_its_extra_says_which_to_install(venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "PYTHONPATH"}
    out = subprocess.run([str(venv / "bin" / "maas"), "build", "maintenance"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "pip install 'maas[zoo]'" in out.stderr, out.stderr


def test_a_user_packages_serves_calls_and_load_tests_a_model_from_their_own_directory(venv: Path, tmp_path: Path) -> None:
    home = tmp_path / "my-project"
    home.mkdir()
    run(venv, home, "init")
    assert (home / "model_store").is_dir() and (home / "config.properties").is_file()
    # this test shares the machine with other servers: the same config on free loopback ports
    write_properties(home / "config.properties", on_free_loopback_ports(read_properties(home / "config.properties")))
    # the user's code, in a file named like one of maas's own folders (it used to import maas's export/)
    shutil.copy(ROOT / "tests" / "thirdparty" / "hf_models.py", home / "export.py")
    out = run(venv, home, "package", "--torch", "export:make_vit", "--name", "vit",
              "--input", "pixel_values:float32:[batch,3,32,32]")
    assert "packaged" in out.stdout and (home / "model_store" / "vit.mar").is_file()
    run(venv, home, "serve", "start", timeout=300)
    try:
        (home / "body.json").write_text(json.dumps({"inputs": {"pixel_values": [[[0.5] * 32] * 32] * 3}}))
        answer = json.loads(run(venv, home, "predict", "vit", "body.json").stdout)
        assert len(answer["outputs"]["logits"]) == 4
        status = run(venv, home, "status").stdout
        assert "vit" in status and "READY" in status
        load = run(venv, home, "loadtest", "vit", "--users", "2", "--run-time", "3", "--warmup", "1").stdout
        assert "gate: PASS" in load and "worker restarts: 0" in load
        assert list((home / "reports").glob("*-vit/summary.json"))
    finally:
        run(venv, home, "serve", "stop")
