"""Replicas behind a load balancer on one machine: N TorchServes, each with its own ports, run
directory and logs, behind Debian's HAProxy on one inference address (`maas cluster`).

HAProxy health-checks each replica (`/v2/health/ready`, every second, down after 2 misses) and
retries an inference request on another replica when its replica fails it (connection refused
or reset, no answer, 502/503/504), so losing a whole TorchServe costs clients nothing.

Keys: every TorchServe 0.12 draws its own random keys and cannot be given one, so no client key
could be valid on every replica. HAProxy checks the cluster's key instead (run/cluster/key_file.json,
the same format as TorchServe's, so maas's clients and Locust read it unchanged), and the replicas
run without token authorization on 127.0.0.1, reachable only from this machine: the trade a pod
makes (SECURITY.md, "In a pod"), with the balancer in the ingress's place.
"""
from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from maas.client import ServeError
from maas.config_audit import audit
from maas.keys import write_private
from maas.pidfile import live_pid, write_pid
from maas.properties import on_free_loopback_ports, read_properties, resolve_paths, write_properties
from maas.server import ServerLayout, TorchServe

TOKEN_PROBLEM = "disable_token_authorization=true"


class ClusterError(ServeError):
    """The cluster could not be started, changed or asked (one line saying why)."""


@dataclass
class Cluster:
    config: Path  # the project's config.properties (each replica gets a copy on its own ports)
    model_store: Path
    home: Path  # run/cluster: replica-<i>/, haproxy.cfg, key_file.json, haproxy.sock

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    @property
    def socket_path(self) -> Path:
        return self.home / "haproxy.sock"

    @property
    def pid_file(self) -> Path:
        return self.home / "haproxy.pid"

    def replica_dirs(self) -> list[Path]:
        return sorted(self.home.glob("replica-*"), key=lambda p: int(p.name.split("-")[1]))

    def replica(self, index: int) -> TorchServe:
        run_dir = self.home / f"replica-{index}"
        return TorchServe(ServerLayout(run_dir / "config.properties", self.model_store, run_dir))

    def replicas(self) -> list[TorchServe]:
        return [self.replica(int(d.name.split("-")[1])) for d in self.replica_dirs()]

    def address(self) -> str:
        return json.loads((self.home / "cluster.json").read_text())["address"]

    # ---- start / stop -----------------------------------------------------------------------
    def start(self, replicas: int, port: int, models: list[str] | None = None, timeout: float = 240.0) -> str:
        """Start `replicas` TorchServes and HAProxy in front on 127.0.0.1:`port`; returns its address."""
        if shutil.which("haproxy") is None:
            raise ClusterError("HAProxy is not installed: `apt-get install haproxy` (in a checkout: `make haproxy`)")
        if self.pid() or any(server.is_running() for server in self.replicas()):
            raise ClusterError(f"a cluster of {self.home} is already running: `maas cluster stop` first")
        base = resolve_paths(read_properties(self.config), self.config.resolve().parent)
        base["disable_token_authorization"] = "true"  # HAProxy checks the key (see the module docstring)
        others = [p for p in audit(base) if not p.startswith(TOKEN_PROBLEM)]
        if others:
            raise ClusterError(f"{self.config} weakens the security defaults: {'; '.join(others)}")
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        started: list[TorchServe] = []
        try:
            for index in range(1, replicas + 1):
                run_dir = self.home / f"replica-{index}"
                run_dir.mkdir()
                write_properties(run_dir / "config.properties", on_free_loopback_ports(base),
                                 header=f"replica {index} of {self.config.resolve()}: its own ports, no token "
                                        "authorization (HAProxy checks the cluster key)")
                server = self.replica(index)
                server.start(models, timeout, insecure=True)
                started.append(server)
            key = secrets.token_urlsafe(24)
            write_private(self.key_file, json.dumps({"inference": {"key": key}}))
            address = f"http://127.0.0.1:{port}"
            (self.home / "cluster.json").write_text(json.dumps({"address": address, "replicas": replicas}))
            self.start_haproxy(port, key)
            return address
        except BaseException:
            for server in started:
                server.stop()
            raise

    def start_haproxy(self, port: int, key: str, timeout: float = 30.0, servers: list[str] | None = None,
                       up: int | None = None) -> None:
        """HAProxy on `port` in front of `servers` (default: every replica); returns once `up` of them
        (default: all) pass its health check."""
        servers = servers or [s.endpoints.inference for s in self.replicas()]
        up = len(servers) if up is None else up
        config = self.home / "haproxy.cfg"
        write_private(config, haproxy_config(port, key, servers, self.socket_path))  # it holds the key
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ClusterError(f"HAProxy refused {config}: {(check.stdout + check.stderr).strip()[-400:]}")
        log = open(self.home / "haproxy.log", "ab")
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        write_pid(self.pid_file, proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"HAProxy exited ({proc.returncode}); see {self.home / 'haproxy.log'}")
            states = self.server_states() if self.socket_path.exists() else {}
            if states and sum(s == "UP" for s in states.values()) >= up:
                return
            time.sleep(0.5)
        raise ClusterError(f"HAProxy did not see {up} replicas UP within {timeout:g} s: {self.server_states()}")

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def stop(self) -> bool:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.pid():
                time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)
        stopped = [server.stop() for server in self.replicas()]
        return pid is not None or any(stopped)

    def restart_replica(self, index: int, timeout: float = 240.0) -> None:
        """Start replica `index` again on its own ports (after it died or was stopped); HAProxy
        takes it back once its health check passes."""
        server = self.replica(index)
        server.stop()  # whatever is left of it, and its pid file
        server.start(timeout=timeout, insecure=True)  # its one loosened setting is the token (see start)

    # ---- HAProxy's view ---------------------------------------------------------------------
    def _admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """replica name -> HAProxy's status of it (UP, DOWN, MAINT, ...)."""
        rows = csv.DictReader(io.StringIO(self._admin("show stat").lstrip("# ")))
        return {r["svname"]: r["status"].split(" ")[0] for r in rows
                if r["pxname"] == "replicas" and r["svname"] not in ("FRONTEND", "BACKEND")}

    def set_replica(self, index: int, state: str) -> None:
        """'drain' (no new requests), 'maint' (out) or 'ready' (back in) one replica."""
        self._admin(f"set server replicas/replica-{index} state {state}")


def haproxy_config(port: int, key: str, replicas: list[str], admin_socket: Path) -> str:
    """HAProxy 2.6: one address, the key checked, health checks, retries on another replica."""
    servers = "\n".join(f"    server replica-{i} {url.split('//', 1)[1]} check inter 1s fall 2 rise 2"
                        for i, url in enumerate(replicas, 1))
    refusal = '{"code": 401, "type": "Unauthorized", "message": "missing or wrong key (cluster key_file.json)"}'
    key_matches = '{ req.hdr(authorization) -m str "Bearer ' + key + '" }'
    return f"""# Generated by `maas cluster start`; it holds the cluster key (mode 600).
global
    stats socket {admin_socket} mode 600 level admin
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 90s
    timeout server 90s
    timeout queue 30s
    option http-buffer-request  # retries need the whole request in hand
    retries 3
    option redispatch 1         # a retry goes to another replica
    retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected 502 503 504

frontend inference
    bind 127.0.0.1:{port}
    http-request return status 401 content-type application/json string '{refusal}' unless {key_matches}
    http-request del-header authorization
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /v2/health/ready
    http-check expect status 200
{servers}
"""
