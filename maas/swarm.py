"""Replicas of the serving image under Docker Swarm, behind the same HAProxy front as `maas cluster`
(`maas swarm`): Swarm keeps N containers running (a killed one is replaced), scales them and rolls
a new model version out one container at a time; HAProxy gives them one address, checks the
cluster key, health-checks every replica and retries a request another replica failed.

Each container runs the image as the manifests run it (uid 1000, read-only root filesystem, every
capability dropped) on a storage tree that `maas export-kserve` wrote, mounted read-only. Without a
bridge network (a sandbox; `dockerd --bridge=none`) the containers share the host's network, so no
two may listen on one port: Swarm's task slot picks each container's config.properties from
`gen-<g>/slot-<n>/` (the tree's own config on the slot's loopback ports), which a templated mount
brings in; an update writes the next generation for the new tree, the slots keeping their ports.
HAProxy lists every slot up to --max-replicas; the slots Swarm runs are UP.

The trade of keys is the process cluster's (maas/cluster.py): TorchServe 0.12 draws its own random
keys, so the replicas run without token authorization on loopback and HAProxy checks the key.
"""
from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from maas.cluster import Cluster, ClusterError
from maas.image import TAG, docker, docker_env
from maas.keys import write_private
from maas.kube import MOUNT
from maas.properties import Endpoints, free_loopback_ports, on_free_loopback_ports, read_properties, write_properties

SLOT_MOUNT = "/mnt/slot"


@dataclass
class Swarm:
    home: Path  # run/swarm: gen-<g>/slot-<n>/config.properties, haproxy.cfg, key_file.json, swarm.json
    service: str = "maas"
    image: str = TAG

    @property
    def cluster(self) -> Cluster:
        """The HAProxy side, shared with the process cluster (its config is unused here)."""
        return Cluster(self.home / "unused.properties", self.home, self.home)

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    def state(self) -> dict:
        path = self.home / "swarm.json"
        if not path.exists():
            raise ClusterError(f"no swarm service of {self.home} (`maas swarm start`)")
        return json.loads(path.read_text())

    def slot_endpoints(self, slot: int) -> Endpoints:
        return Endpoints.from_properties(read_properties(self.home / "gen-1" / f"slot-{slot}" / "config.properties"))

    def _write_generation(self, tree: Path, generation: int, slots: int) -> Path:
        """gen-<generation>/slot-<n>/config.properties: `tree`'s config on slot n's own ports (drawn
        for generation 1, kept after), token authorization off (HAProxy checks the key)."""
        base = read_properties(tree / "config" / "config.properties")
        folder = self.home / f"gen-{generation}"
        for slot in range(1, slots + 1):
            first = self.home / "gen-1" / f"slot-{slot}" / "config.properties"
            if first.exists():
                ports = {k: v for k, v in read_properties(first).items() if k.endswith(("_address", "_port"))}
            else:
                # Workers talk to their frontend over TCP when netty cannot load epoll from a noexec
                # /tmp (Swarm's tmpfs): each slot's from its own first port, not everyone's 9000.
                ports = {**on_free_loopback_ports({}), "initial_worker_port": str(free_loopback_ports(1)[0])}
            (folder / f"slot-{slot}").mkdir(parents=True, exist_ok=True)  # a retry after a rolled-back update
            write_properties(folder / f"slot-{slot}" / "config.properties",
                             {**base, **ports, "disable_token_authorization": "true"},
                             header=f"swarm slot {slot}: {tree}'s config on the slot's own loopback ports")
        return folder

    # ---- start / stop -----------------------------------------------------------------------
    def start(self, tree: Path, replicas: int, port: int, max_replicas: int = 8, timeout: float = 300.0) -> str:
        """`replicas` containers of the image serving `tree` under Swarm, HAProxy on 127.0.0.1:`port`."""
        if shutil.which("haproxy") is None:
            raise ClusterError("HAProxy is not installed: `apt-get install haproxy` (in a checkout: `make haproxy`)")
        _check_tree(tree)
        if not 1 <= replicas <= max_replicas:
            raise ClusterError(f"--replicas {replicas}: between 1 and --max-replicas {max_replicas}")
        env = docker_env()
        if self.cluster.pid() or self._exists(env):
            raise ClusterError(f"swarm service {self.service} is already running: `maas swarm stop` first")
        if docker(env, "info", "-f", "{{.Swarm.LocalNodeState}}").stdout.strip() != "active":
            # One manager on loopback: nothing outside this machine can join or reach it.
            docker(env, "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        self._write_generation(tree, 1, max_replicas)
        self.home.chmod(0o755)
        key = secrets.token_urlsafe(24)
        write_private(self.key_file, json.dumps({"inference": {"key": key}}))
        address = f"http://127.0.0.1:{port}"
        (self.home / "swarm.json").write_text(json.dumps({"address": address, "tree": str(tree.resolve()), "generation": 1,
                                                          "max_replicas": max_replicas, "service": self.service}))
        docker(env, "service", "create", "--detach", "--quiet", *self._service_flags(tree, replicas), self.image,
               "torchserve", "--start", "--foreground", f"--ts-config={SLOT_MOUNT}/config.properties",
               f"--model-store={MOUNT}/model-store")
        servers = [self.slot_endpoints(s).inference for s in range(1, max_replicas + 1)]
        self.cluster.start_haproxy(port, key, timeout=timeout, servers=servers, up=0)
        self.wait_up(replicas, timeout)
        return address

    def _mounts(self, tree: Path, generation: int) -> list[str]:
        slots = f"{self.home.resolve()}/gen-{generation}/slot-{{{{.Task.Slot}}}}"
        return ["--mount", f"type=bind,src={tree.resolve()},dst={MOUNT},readonly",
                "--mount", f"type=bind,src={slots},dst={SLOT_MOUNT},readonly"]

    def _service_flags(self, tree: Path, replicas: int) -> list[str]:
        return [
            "--name", self.service, "--replicas", str(replicas), "--network", "host",
            "--user", "1000:1000", "--read-only", "--cap-drop", "ALL", *self._mounts(tree, 1),
            # Swarm's tmpfs takes no owner, and one over the image's /home/model-server/tmp keeps that
            # folder's root-owned 755: TorchServe's cwd and TEMP move to /tmp (1777) instead.
            "--mount", "type=tmpfs,dst=/tmp,tmpfs-mode=1777", "--workdir", "/tmp", "--env", "TEMP=/tmp",
            "--env", f"MAAS_TS_CONFIG={SLOT_MOUNT}/config.properties",
            # One container at a time, the old one first (two cannot share a slot's ports); Swarm
            # waits for the new one's HEALTHCHECK before the next. A failed update rolls back.
            "--update-order", "stop-first", "--update-parallelism", "1", "--update-delay", "2s",
            "--update-failure-action", "rollback", "--restart-condition", "any", "--restart-delay", "1s",
            "--stop-grace-period", "10s",
        ]

    def _exists(self, env: dict[str, str]) -> bool:
        return docker(env, "service", "inspect", self.service, check=False).returncode == 0

    def stop(self) -> bool:
        env = docker_env()
        existed = self._exists(env)
        if existed:
            docker(env, "service", "rm", self.service)
        return self.cluster.stop() or existed

    # ---- change -------------------------------------------------------------------------------
    def scale(self, replicas: int, timeout: float = 300.0) -> None:
        """Run `replicas` containers; returns once HAProxy sees that many UP."""
        limit = self.state()["max_replicas"]
        if not 1 <= replicas <= limit:
            raise ClusterError(f"{replicas} replicas: between 1 and the {limit} slots HAProxy was started with")
        docker(docker_env(), "service", "scale", "--detach", f"{self.service}={replicas}")
        self.wait_up(replicas, timeout)

    def update(self, tree: Path, timeout: float = 600.0) -> None:
        """Roll the service onto another storage tree (a new model version), one container at a time;
        returns when Swarm reports the update completed (it rolls back on a failed one)."""
        _check_tree(tree)
        env = docker_env()
        replicas = self.replicas(env)
        # From a settled service only: a container still starting (say, one just replaced) that the
        # update stops counts as the update's failure, and Swarm rolls back.
        self.wait_up(replicas, timeout)
        before = self.update_status(env)
        state = self.state()
        generation = state.get("generation", 1) + 1
        self._write_generation(tree, generation, state["max_replicas"])
        # --mount-add replaces the mount at the same target (with --mount-rm too, the CLI would drop both).
        mounts = [flag.replace("--mount", "--mount-add") for flag in self._mounts(tree, generation)]
        docker(env, "service", "update", "--detach", "--quiet", *mounts, self.service)
        deadline = time.monotonic() + timeout
        while True:  # this update's state: a new start time, then a final state
            status = self.update_status(env)
            phase = status.split(" ")[0]
            if status != before and phase in ("completed", "rollback_completed", "paused"):
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"swarm update still {phase!r} after {timeout:g} s")
            time.sleep(1)
        status = phase
        if status != "completed":
            tasks = docker(env, "service", "ps", "--no-trunc", "--format", "{{.Name}} {{.CurrentState}} {{.Error}}",
                           self.service, check=False).stdout
            message = docker(env, "service", "inspect", "-f", "{{.UpdateStatus.Message}}", self.service,
                             check=False).stdout.strip()
            raise ClusterError(f"swarm update {status} ({message}); tasks:\n{tasks.strip()}")
        state.update(tree=str(tree.resolve()), generation=generation)
        (self.home / "swarm.json").write_text(json.dumps(state))
        self.wait_up(replicas, timeout)

    def kill_one(self) -> str:
        """SIGKILL one running container of the service (a crash, for tests and drills); returns its id."""
        env = docker_env()
        found = docker(env, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.service}")
        ids = found.stdout.split()
        if not ids:
            raise ClusterError(f"no running container of {self.service}")
        docker(env, "kill", ids[0])
        return ids[0]

    # ---- views -----------------------------------------------------------------------------------
    def replicas(self, env: dict[str, str] | None = None) -> int:
        spec = docker(env or docker_env(), "service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}",
                      self.service)
        return int(spec.stdout.strip())

    def update_status(self, env: dict[str, str] | None = None) -> str:
        """Swarm's last update of the service: 'STATE STARTED-AT' ('none' before the first)."""
        found = docker(env or docker_env(), "service", "inspect", "-f",
                       "{{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt}}{{end}}",
                       self.service)
        return found.stdout.strip() or "none"

    def server_states(self) -> dict[str, str]:
        return self.cluster.server_states()

    def up(self) -> int:
        return sum(state == "UP" for state in self.server_states().values())

    def healthy(self, env: dict[str, str] | None = None) -> int:
        """Containers of the service whose HEALTHCHECK passes (Docker's view)."""
        found = docker(env or docker_env(), "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.service}",
                       "--filter", "health=healthy")
        return len(found.stdout.split())

    def wait_up(self, replicas: int, timeout: float) -> None:
        """Until Docker sees `replicas` healthy containers and HAProxy exactly as many slots UP (HAProxy
        starts every server UP, so a slot no container serves counts only after its checks fail)."""
        env = docker_env()
        deadline = time.monotonic() + timeout
        while self.healthy(env) != replicas or self.up() != replicas:
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.healthy(env)} healthy containers and {self.up()} slots UP in HAProxy, "
                                   f"not {replicas}, after {timeout:g} s")
            time.sleep(0.5)


def _check_tree(tree: Path) -> None:
    if not (tree / "config" / "config.properties").is_file() or not (tree / "model-store").is_dir():
        raise ClusterError(f"{tree} is not a storage tree (config/config.properties, model-store/): "
                           "write one with `maas export-kserve MODEL`")
