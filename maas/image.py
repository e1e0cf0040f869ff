"""The serving image (deploy/docker/Dockerfile), built without a registry, and the Docker daemon
it is built and run with.

Here nothing but the package registries is reachable, so `build_image` makes the base from
Debian packages (deploy/docker/base.sh), downloads the image's wheels with this machine's pip
configuration into a cache, and serves that wheelhouse on a loopback port to `docker build
--network host` (no wheel ever lands in a layer). An image is rebuilt only when its recipe
changes (Dockerfile, requirements, health check, build arguments): the recipe's hash is a label.

Where no daemon answers and we are root, `docker_env` starts one made for a sandbox: no bridge,
no iptables (containers use the host's network and bind where their config says, loopback
here), its own socket under /run/maas-docker.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from maas.core.errors import MaasError

DOCKER_DIR = Path(__file__).resolve().parents[1] / "deploy" / "docker"
TAG = "maas-torchserve:0.12.0"  # what every manifest under deploy/ runs (maas/kube.py IMAGE)
BASE = "maas-base:bookworm"
ORT_VERSION, GENAI_VERSION, OPENVINO = "1.31.1", "0.18.0", "openvino==2026.4.1"
OWN_DAEMON = Path("/run/maas-docker")
WHEEL_CACHE = Path(os.environ.get("MAAS_WHEEL_CACHE", Path.home() / ".cache" / "maas" / "image-wheels"))


class ImageError(MaasError):
    """Docker or the image cannot be had here; the message says what to install or run."""


@dataclass(frozen=True)
class ImagePlan:
    tag: str = TAG
    base: str = BASE  # maas-base:bookworm (made here) or python:3.11-slim (from a registry)
    ort: str = "onnxruntime"  # onnxruntime-gpu for a GPU image
    genai: str = "onnxruntime-genai"  # onnxruntime-genai-cuda for a GPU image
    openvino: str = OPENVINO  # "" leaves OpenVINO out (archives whose engine is openvino then fail to load)

    def packages(self) -> list[str]:
        return [f"{self.ort}=={ORT_VERSION}", f"{self.genai}=={GENAI_VERSION}", *([self.openvino] if self.openvino else [])]

    def recipe(self) -> str:
        """A hash of everything the image is made from: same hash, same image."""
        digest = hashlib.sha256(repr(self).encode())
        for name in ("Dockerfile", "requirements.txt", "healthcheck.py", "entrypoint.py", "log4j2.xml", "base.sh"):
            digest.update((DOCKER_DIR / name).read_bytes())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    tag: str
    size_mb: float
    build_s: float  # 0.0 when the image was already up to date
    recipe: str


def docker(env: dict[str, str], *args: str, check: bool = True, capture: bool = True,
           timeout: float | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], env=env, text=True, timeout=timeout,
                            capture_output=capture)
    if check and result.returncode != 0:
        raise ImageError(f"docker {' '.join(args[:3])} failed: {(result.stderr or '').strip()[-2000:]}")
    return result


def _answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_env() -> dict[str, str]:
    """The environment for `docker` commands: the daemon DOCKER_HOST names or the default one when
    it answers, else our own (started here, once, and left running for the next build or test)."""
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder: Debian's daemon has no buildx
    if shutil.which("docker") is None:
        raise ImageError("no docker command: install Docker (Debian: apt-get install docker.io)")
    if _answers(env):
        return env
    env["DOCKER_HOST"] = f"unix://{OWN_DAEMON / 'docker.sock'}"
    if _answers(env):
        return env
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        raise ImageError("no Docker daemon answers; start one (or run as root with dockerd installed: "
                         "maas starts its own)")
    OWN_DAEMON.mkdir(parents=True, exist_ok=True)
    log = open(OWN_DAEMON / "dockerd.log", "ab")  # left open: the daemon outlives us
    # No bridge and no iptables: a sandbox without those privileges; containers run --network host.
    subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
                      f"--host={env['DOCKER_HOST']}", f"--pidfile={OWN_DAEMON / 'docker.pid'}",
                      f"--exec-root={OWN_DAEMON / 'exec'}", "--data-root=/var/lib/maas-docker"],
                     stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _answers(env):
            return env
        time.sleep(0.5)
    raise ImageError(f"dockerd did not answer within 60 s; see {OWN_DAEMON / 'dockerd.log'}")


def image_label(env: dict[str, str], tag: str, label: str) -> str | None:
    found = docker(env, "image", "inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', tag, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def image_size_mb(env: dict[str, str], tag: str) -> float:
    return int(docker(env, "image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6


def wheelhouse(plan: ImagePlan, folder: Path = WHEEL_CACHE) -> Path:
    """Every wheel the image installs, fetched once with this machine's pip configuration (its
    index, find-links and constraints: here the CPU torch wheel on disk) into a cache."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", str(folder),
           "-r", str(DOCKER_DIR / "requirements.txt"), *plan.packages()]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"pip download for the image failed: {result.stderr.strip()[-2000:]}")
    return folder


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def build_image(plan: ImagePlan = ImagePlan(), env: dict[str, str] | None = None, force: bool = False,
                echo=print) -> Built:
    """Build plan.tag unless an image of the same recipe is there; returns its size and build time."""
    if not (DOCKER_DIR / "Dockerfile").is_file():
        raise ImageError(f"no {DOCKER_DIR / 'Dockerfile'}: the image is built from a maas checkout (its deploy/docker)")
    env = env or docker_env()
    recipe = plan.recipe()
    if not force and image_label(env, plan.tag, "maas.recipe") == recipe:
        return Built(plan.tag, image_size_mb(env, plan.tag), 0.0, recipe)
    started = time.monotonic()
    if plan.base == BASE:
        if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
            raise ImageError(f"{BASE} is made with mmdebstrap as root (apt-get install mmdebstrap), "
                             "or build on a registry's base: --base python:3.11-slim")
        subprocess.run(["bash", str(DOCKER_DIR / "base.sh"), BASE], env=env, check=True)
    echo("fetching the image's wheels (cached)")
    wheels = wheelhouse(plan)
    server = _serve(wheels)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        echo(f"building {plan.tag} on {plan.base} (a few minutes)")
        args = ["build", "--network", "host", "--label", f"maas.recipe={recipe}", "-t", plan.tag,
                "--build-arg", f"BASE={plan.base}", "--build-arg", f"ORT={plan.ort}",
                "--build-arg", f"GENAI={plan.genai}", "--build-arg", f"OPENVINO={plan.openvino}",
                "--build-arg", "PIP_NO_INDEX=1", "--build-arg", f"PIP_FIND_LINKS={url}", str(DOCKER_DIR)]
        result = docker(env, *args, check=False)
        if result.returncode != 0:
            raise ImageError(f"docker build failed:\n{(result.stdout + result.stderr)[-3000:]}")
    finally:
        server.shutdown()
    return Built(plan.tag, image_size_mb(env, plan.tag), time.monotonic() - started, recipe)


def run_flags(tree: Path, scratch: Path | None = None, cores: int | None = None) -> list[str]:
    """`docker run` flags that run the image as the manifests run it: uid 1000, read-only root
    filesystem, every capability dropped, no privilege escalation, the storage tree read-only at
    /mnt/models, a writable scratch (TorchServe's cwd and TEMP) and /tmp (workers' sockets).
    The host's network: TorchServe listens where the tree's config.properties says."""
    flags = ["--network", "host", "--user", "1000:1000", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:uid=1000,gid=1000",
             "-v", f"{tree.resolve()}:/mnt/models:ro"]
    flags += (["-v", f"{scratch.resolve()}:/home/model-server/tmp"] if scratch is not None
              else ["--tmpfs", "/home/model-server/tmp:uid=1000,gid=1000,exec"])
    if cores:
        flags += ["-e", f"MAAS_CPU_CORES={cores}"]
    return flags


def health(env: dict[str, str], container: str) -> str:
    """Docker's view of the HEALTHCHECK: starting, healthy or unhealthy ('' once it is gone)."""
    found = docker(env, "inspect", "-f", "{{.State.Health.Status}}", container, check=False)
    return found.stdout.strip() if found.returncode == 0 else ""
