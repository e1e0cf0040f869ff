"""The serving image (deploy/docker/Dockerfile), built by the project's own files (maas/image.py:
a base from Debian packages, wheels from this machine's pip configuration) and run as the
manifests run it: uid 1000, read-only root filesystem, every capability dropped, the storage
trees `maas export-kserve` writes mounted read-only. Each tree's answers must equal those of the
same archive served by TorchServe on the host, and Docker's HEALTHCHECK must see it healthy.

The sandbox forces one departure: no bridge networking, so containers share the host's network
and each tree's addresses move to free loopback ports (as tests/integration/test_kserve_storage.py
does for the host); everything else in the tree's config.properties is as written.
"""
from __future__ import annotations

import json
import logging
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import requests

from conftest import ROOT, Built, bare_server
from maas import deploy as d
from maas.client import TorchServeClient
from maas.export import zoo
from maas.export.clients import spec_for
from maas.image import build_image, docker, docker_env, health, run_flags
from maas.kube import _container, _probes, export_all
from maas.properties import Endpoints, on_free_loopback_ports, read_properties, write_properties
from maas.thirdparty import wheel_files

log = logging.getLogger(__name__)
MAGIKA = ("magika", "1.0.3", "magika/models/standard_v3_3")
PROMPT = "The pump"


@pytest.fixture(scope="module")
def image():
    """`maas image build` (idempotent: a no-op when an image of the same recipe is there)."""
    from click.testing import CliRunner

    from maas.cli import cli

    result = CliRunner().invoke(cli, ["image", "build"], catch_exceptions=False)
    assert result.exit_code == 0 and " MB, " in result.output, result.output
    env = docker_env()
    built = build_image(env=env, echo=log.info)
    log.info("image %s: %.0f MB, built in %.0f s (0 = up to date)", built.tag, built.size_mb, built.build_s)
    return env, built


@pytest.fixture(scope="module")
def magika_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third-party ONNX file (Magika's, from its wheel on PyPI) packaged with `maas package`."""
    from click.testing import CliRunner

    from maas.cli import cli

    work, store, build = (tmp_path_factory.mktemp(n) for n in ("magika_work", "magika_store", "magika_build"))
    model_file, config = wheel_files(MAGIKA[0], MAGIKA[1], [f"{MAGIKA[2]}/model.onnx", f"{MAGIKA[2]}/config.min.json"],
                                     work)
    (work / "labels.txt").write_text("\n".join(json.loads(config.read_text())["target_labels_space"]) + "\n")
    (work / "magika.yaml").write_text(textwrap.dedent("""\
        name: magika
        inputs:
          - {name: bytes, dtype: int32, shape: [batch, 2048], range: [0, 256]}
        outputs:
          - {name: target_label, dtype: float32, shape: [batch, 214], labels: labels.txt, top_k: 3}
        serving: {batch_size: 16, max_batch_delay_ms: 5}
        """))
    result = CliRunner().invoke(cli, ["--model-store", str(store), "package", "--onnx", str(model_file),
                                      "--spec", str(work / "magika.yaml")],
                                env={"MAAS_BUILD_DIR": str(build)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory, model_store: Path, built_models: dict[str, Built],
          magika_store: Path, llm_archive: Path) -> dict[str, Path]:
    """Storage trees as `maas export-kserve` writes them: the zoo, a packaged model, a language model."""
    out = tmp_path_factory.mktemp("image_deploy")
    config = ROOT / "config.properties"
    zoo_result = export_all([zoo.get(m).spec for m in built_models], config, model_store, out / "kserve", out / "k8s")
    packaged = export_all([spec_for("magika", magika_store)], config, magika_store, out / "kserve", out / "k8s")
    assert not zoo_result.missing and not packaged.missing
    storage = out / "kserve" / "storage"
    from click.testing import CliRunner

    from maas.cli import cli

    result = CliRunner().invoke(cli, ["--model-store", str(llm_archive.parent), "export-kserve", llm_archive.name,
                                      "--kserve-dir", str(out / "kserve"), "--kubernetes-dir", str(out / "k8s")])
    assert result.exit_code == 0 and "a language model" in result.output, result.output
    return {p.name: p for p in storage.iterdir()}


class Container:
    """One container of the image serving one storage tree; stopped (and removed) on exit."""

    def __init__(self, env: dict[str, str], image: str, tree: Path, token: bool, scratch: Path) -> None:
        props = on_free_loopback_ports(read_properties(tree / "config" / "config.properties"))
        if token:
            props["disable_token_authorization"] = "false"
        write_properties(tree / "config" / "config.properties", props)
        self.env, self.props, self.scratch = env, props, scratch
        self.name = f"maas-test-{tree.name}-{int(time.time() * 1000) % 10**8}"
        scratch.mkdir(parents=True, exist_ok=True)
        scratch.chmod(0o777)  # uid 1000 writes its logs and key_file.json here
        started = time.monotonic()
        docker(env, "run", "-d", "--name", self.name, *run_flags(tree, scratch), image)
        self.endpoints = Endpoints.from_properties(props)
        self.client = TorchServeClient(self.endpoints, scratch / "key_file.json" if token else None)
        try:
            self.ready_s = self._wait_ready(started)
        except BaseException:
            self.__exit__()  # never ready: no `with` body will remove it
            raise

    def _wait_ready(self, started: float, timeout: float = 300) -> float:
        """Seconds from `docker run` to the readiness probe's 200 (every model loaded)."""
        headers = {}
        while time.monotonic() - started < timeout:
            key = self.scratch / "key_file.json"
            if key.exists() and not headers:
                try:
                    headers = {"Authorization": "Bearer " + json.loads(key.read_text())["inference"]["key"]}
                except (ValueError, KeyError):
                    pass  # TorchServe is still writing it: read it again on the next round
            try:
                if requests.get(self.endpoints.inference + "/v2/health/ready", headers=headers, timeout=2).ok:
                    return time.monotonic() - started
            except requests.ConnectionError:
                pass
            if docker(self.env, "inspect", "-f", "{{.State.Running}}", self.name).stdout.strip() != "true":
                break
            time.sleep(0.2)
        logs = docker(self.env, "logs", "--tail", "60", self.name, check=False)
        raise AssertionError(f"{self.name} not ready:\n{logs.stdout}{logs.stderr}")

    def healthy(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while (status := health(self.env, self.name)) == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
        return status

    def listening(self) -> set[str]:
        """Every address the container's processes listen on (host networking: ask the kernel by pid)."""
        pids = docker(self.env, "top", self.name, "-eo", "pid").stdout.split()[1:]
        found = set()
        for pid in pids:
            for conn in psutil.Process(int(pid)).connections(kind="inet"):  # psutil 5.9: not yet net_connections
                if conn.status == psutil.CONN_LISTEN:
                    found.add(conn.laddr.ip.removeprefix("::ffff:"))  # Java binds IPv4-mapped IPv6
        return found

    def stop(self) -> tuple[float, int]:
        """`docker stop` with Kubernetes' default grace period: (seconds it took, the exit code)."""
        started = time.monotonic()
        docker(self.env, "stop", "-t", "30", self.name)
        took = time.monotonic() - started
        return took, int(docker(self.env, "inspect", "-f", "{{.State.ExitCode}}", self.name).stdout)

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc: object) -> None:
        docker(self.env, "rm", "-f", self.name, check=False)


def answers(client: TorchServeClient, model: str, store: Path) -> list[tuple[str, int, object]]:
    """(case, HTTP status, JSON answer) for the model's smoke cases: known answers for the zoo,
    the archive's own samples for a packaged model (maas/export/clients.py)."""
    from maas.export.clients import client_for

    found = []
    for title, body, content_type, _ in client_for(model, store).smoke_cases():
        resp = client.predict(model, body, content_type)
        found.append((title, resp.status_code, resp.json()))
    return found


@pytest.mark.parametrize("model", ["maintenance", "digits", "minilm", "magika"])
def test_container_answers_as_the_host_does(model: str, image, trees: dict[str, Path], server, model_store: Path,
                                            magika_store: Path,
                                            tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    env, built = image
    tree = trees[model]
    with Container(env, built.tag, tree, token=False, scratch=tmp_path / "scratch") as box:
        # The manifests' probes, as kubelet sends them (no key: the pod config has token authorization off),
        # and Docker's HEALTHCHECK: the same endpoints.
        for probe in _probes().values():
            assert requests.get(box.endpoints.inference + probe["httpGet"]["path"], timeout=5).status_code == 200
        assert box.healthy() == "healthy"
        # Listening only where the config says: loopback here (the pod config's 0.0.0.0 moved to 127.0.0.1).
        assert box.listening() == {"127.0.0.1"}, box.listening()
        host_ts = server if model != "magika" else bare_server(tmp_path_factory, magika_store)
        try:
            if model == "magika":
                d.deploy(host_ts.client, magika_store, "magika")
            store = magika_store if model == "magika" else model_store
            served = answers(box.client, model, store)
            assert served and all(status == 200 for _, status, _ in served), served
            assert served == answers(host_ts.client, model, store)
        finally:
            if model == "magika":
                host_ts.stop()
        # The image's log4j2.xml: the console (docker logs) has each access line once, no per-batch line, no file
        console = docker(box.env, "logs", box.name).stdout
        assert console.count(f'"POST /predictions/{model} HTTP/1.1" 200') == len(served), console[-3000:]
        assert "Backend response time" not in console and "[DEBUG]" not in console
        assert not (box.scratch / "logs" / "ts_log.log").exists()
        # The manifests' preStop hook runs in the image, as kubelet execs it (a 0 s sleep here)
        pre_stop = _container(None, None)["lifecycle"]["preStop"]["exec"]["command"]
        docker(box.env, "exec", box.name, pre_stop[0], "0")
        # SIGTERM reaches TorchServe's frontend (deploy/docker/entrypoint.py): no grace period waited out
        stop_s, code = box.stop()
        log.info("%s: container ready in %.1f s, stopped in %.1f s", model, box.ready_s, stop_s)
        assert stop_s < 10 and code == 0, (stop_s, code)  # TorchServe stopped cleanly, not killed



def completion(inference: str, key: str | None, model: str, stream: bool = False) -> requests.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{inference}/predictions/{model}/1.0/v1/completions", json=body, headers=headers,
                         stream=stream, timeout=120)


def streamed_text(resp: requests.Response) -> str:
    text = ""
    for line in resp.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            text += json.loads(line[6:])["choices"][0]["text"]
    return text


def test_container_serves_a_language_model_with_token_authorization(image, trees: dict[str, Path], llm_archive: Path,
                                                                    tmp_path_factory: pytest.TempPathFactory,
                                                                    tmp_path: Path) -> None:
    """The generative model's tree, with TorchServe's token authorization on: the HEALTHCHECK reads the
    key TorchServe wrote, a request without it is refused, and greedy text equals the host's."""
    env, built = image
    model = llm_archive.name
    host = bare_server(tmp_path_factory, llm_archive.parent)
    try:
        d.deploy(host.client, llm_archive.parent, model)
        expected = completion(host.endpoints.inference, host.client.fresh_key("inference"), model).json()
    finally:
        host.stop()
    with Container(env, built.tag, trees[model], token=True, scratch=tmp_path / "scratch") as box:
        assert box.healthy() == "healthy"
        refused = completion(box.endpoints.inference, None, model)
        assert refused.status_code in (400, 401) and "token" in refused.text.lower(), refused.text  # TorchServe 0.12: 400
        key = box.client.fresh_key("inference")
        got = completion(box.endpoints.inference, key, model).json()
        assert got["choices"][0]["text"] == expected["choices"][0]["text"] and got["usage"] == expected["usage"]
        assert streamed_text(completion(box.endpoints.inference, key, model, stream=True)) == got["choices"][0]["text"]
        log.info("%s: container ready in %.1f s", model, box.ready_s)


def test_container_serves_an_int4_language_model_on_the_kernel_its_archive_carries(
        image, tmp_path_factory: pytest.TempPathFactory, llm_source: Path, tmp_path: Path) -> None:
    """An int4 build in a read-only tree, in an image with no compiler, TEMP a world-writable scratch
    as a Kubernetes emptyDir is: the worker loads the kernel `maas package` put in the archive, writes
    its graph on it under the private TMPDIR the entrypoint made, and answers as the host does."""
    from click.testing import CliRunner

    from maas.cli import cli

    env, built = image
    store, build, out = (tmp_path_factory.mktemp(n) for n in ("int4_store", "int4_build", "int4_deploy"))
    packaged = CliRunner().invoke(cli, ["--model-store", str(store), "package", "--llm", str(llm_source), "--name", "q4",
                                        "--precision", "int4", "--int4-block-size", "256", "--max-kl", "5"],
                                  env={"MAAS_BUILD_DIR": str(build)}, catch_exceptions=False)
    assert packaged.exit_code == 0, packaged.output
    exported = CliRunner().invoke(cli, ["--model-store", str(store), "export-kserve", "q4", "--kserve-dir",
                                        str(out / "kserve"), "--kubernetes-dir", str(out / "k8s")])
    assert exported.exit_code == 0, exported.output
    host = bare_server(tmp_path_factory, store)
    try:
        d.deploy(host.client, store, "q4")
        expected = completion(host.endpoints.inference, host.client.fresh_key("inference"), "q4").json()
        assert "int4 products on int4_vnni.c" in (host.layout.log_dir / "model_log.log").read_text()
    finally:
        host.stop()
    with Container(env, built.tag, out / "kserve" / "storage" / "q4", token=False, scratch=tmp_path / "scratch") as box:
        assert completion(box.endpoints.inference, None, "q4").json()["choices"] == expected["choices"]
        logs = docker(env, "logs", box.name, check=False)  # after an answer: its worker has loaded
        loaded = [line for line in (logs.stdout + logs.stderr).splitlines() if "MODEL_LOG" in line]
        assert any("int4 products on int4_vnni.c" in line for line in loaded), "\n".join(loaded)[-4000:]
    assert list((tmp_path / "scratch" / ".maas-tmp").glob("maas-1000/q4-*/batch_decoder.int4_vnni.onnx"))
