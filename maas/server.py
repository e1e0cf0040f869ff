"""Start, wait for, inspect and stop a TorchServe (Java frontend + Python workers).

Each server gets its own run directory: TorchServe's working directory (key_file.json),
logs/ (LOG_LOCATION), and tmp/ (TMPDIR: TorchServe keeps its pid file and unpacked
archives in the temp dir, so separate run dirs let servers run side by side).
The launcher runs in its own process group; stopping the group stops workers too.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from maas.client import ApiError, ServeError, ServerNotRunning, TLSError, TorchServeClient, api_path
from maas.config_audit import audit
from maas.java import have_java, java_home
from maas.pidfile import recorded_pid, write_pid
from maas.properties import Endpoints, read_properties, resolve_paths, write_properties
from maas.worker_log import load_failure, worker_restarts

log = logging.getLogger(__name__)

LOAD_ATTEMPTS = 3  # failed loads of one model at start before its workers are stopped


class ModelsNotLoaded(ServeError):
    """The server is up and serves its other models; these could not load (why, from the worker log)."""

    show_type = False

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = failed
        lines = "\n".join(f"  - {model}: {why}" for model, why in sorted(failed.items()))
        super().__init__(f"TorchServe is up, but {len(failed)} model(s) could not load and are held at 0 workers:\n"
                         f"{lines}", hint="fix or remove the archive, then `maas deploy MODEL` "
                                          "(or `maas undeploy MODEL --version V`); the other models are serving")


@dataclass(frozen=True)
class ServerLayout:
    config: Path  # config.properties
    model_store: Path
    run_dir: Path

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "maas-server.pid"


def log_config(config: Path) -> Path:
    """The log4j2 configuration TorchServe starts with: a log4j2.xml beside config.properties when
    the project has one, else maas's (maas/templates/log4j2.xml: each line once, no per-request
    debug chatter; TorchServe's own writes ~10 lines per request, most of them two or three times)."""
    own = config.resolve().parent / "log4j2.xml"
    if own.is_file():
        return own
    with resources.as_file(resources.files("maas").joinpath("templates", "log4j2.xml")) as path:
        return Path(path)


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


class TorchServe:
    def __init__(self, layout: ServerLayout) -> None:
        self.layout = layout
        self.props = read_properties(layout.config)
        self.endpoints = Endpoints.from_properties(self.props)
        token_off = self.props.get("disable_token_authorization", "false").lower() == "true"
        self.client = TorchServeClient(self.endpoints, None if token_off else layout.key_file,
                                       verify=self._ca_bundle())
        self._proc: subprocess.Popen | None = None
        self._given_up: set[str] = set()

    def _ca_bundle(self) -> bool | str:
        """How the client checks https endpoints: $MAAS_CA_BUNDLE, else the server's own
        certificate (right for a self-signed one, as scripts/make_cert.py makes), else the system CAs."""
        if os.environ.get("MAAS_CA_BUNDLE"):
            return os.environ["MAAS_CA_BUNDLE"]
        cert = resolve_paths(self.props, self.layout.config.resolve().parent).get("certificate_file")
        if cert:
            return cert
        return True

    # ---- state ------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The launcher's pid (= process group) when a server of this run dir is alive."""
        pid = recorded_pid(self.layout.pid_file)  # None for a stale file whose pid another process has now
        return pid if pid is not None and _group_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    # ---- start ------------------------------------------------------------------------
    def start(self, models: list[str] | None = None, timeout: float = 240.0, insecure: bool = False) -> None:
        """Start TorchServe and return once /ping answers and every model has READY workers.

        A config that fails the security audit is refused unless `insecure` is set.
        """
        problems = audit(self.props)
        if problems and not insecure:
            raise ServeError(f"{self.layout.config} weakens the security defaults (start with --insecure to accept):\n  - "
                             + "\n  - ".join(problems))
        for problem in problems:
            log.warning("insecure configuration accepted: %s", problem)
        if self.is_running():
            raise ServeError(f"a TorchServe from {self.layout.run_dir} is already running (pid {self.pid()})")
        busy = [u for u in (self.endpoints.inference, self.endpoints.management, self.endpoints.metrics) if _port_open(u)]
        if busy:
            raise ServeError(f"address already in use: {', '.join(busy)} (another server? `maas serve stop`)")
        if not have_java():
            raise ServeError("no Java 11+ runtime found (TorchServe's frontend): put one on the PATH or set JAVA_HOME; "
                             "in a maas checkout `make setup` installs one (scripts/ensure-java.sh)")
        if not self.layout.model_store.is_dir():
            raise ServeError(f"model store {self.layout.model_store} does not exist: run `maas build`")

        for d in (self.layout.run_dir, self.layout.log_dir, self.layout.run_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.layout.key_file.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(LOG_LOCATION=str(self.layout.log_dir), METRICS_LOCATION=str(self.layout.log_dir),
                   TMPDIR=str(self.layout.run_dir / "tmp"))
        home = java_home()
        if home:
            env["JAVA_HOME"] = home
        # TorchServe runs in run_dir: hand it a copy whose relative paths point where the config meant.
        effective = self.layout.run_dir / "config.effective.properties"
        write_properties(effective, resolve_paths(self.props, self.layout.config.resolve().parent),
                         header=f"generated by maas from {self.layout.config.resolve()}; edit that file instead", private=True)
        cmd = [str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground",
               "--ts-config", str(effective),
               "--model-store", str(self.layout.model_store.resolve()), "--ncs",
               "--log-config", str(log_config(self.layout.config))]
        if models:
            cmd += ["--models", *models]
        console = open(self.layout.console_log, "ab")
        self._proc = subprocess.Popen(cmd, cwd=self.layout.run_dir, env=env, stdout=console,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        console.close()
        write_pid(self.layout.pid_file, self._proc.pid)
        log.info("TorchServe starting (pid %d), logs in %s", self._proc.pid, self.layout.log_dir)
        try:
            self.wait_ready(timeout)
        except ModelsNotLoaded:
            raise  # the server is up and serves every other model
        except BaseException:
            self.stop()
            raise

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.layout.console_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        picked = [line for line in text if "ERROR" in line or "Exception" in line or "Error:" in line] or text
        return "\n".join(picked[-lines:])

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until every model has READY workers. A model whose workers keep failing to load
        (LOAD_ATTEMPTS times) is stopped at 0 workers, so TorchServe does not restart them forever,
        and named with the reason from its worker log in a ModelsNotLoaded once the others are READY."""
        deadline = time.monotonic() + timeout
        pending, failed = "the server", {}
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServeError(f"TorchServe exited with code {self._proc.returncode} while starting; "
                                 f"log: {self.layout.console_log}\n{self._log_tail()}")
            try:
                self.client.ping()
                failed.update(self._stop_failing_loads())
                pending = ", ".join(w for w in self.models_not_ready() if w.split(" ")[0] not in failed)
                if not pending:
                    if failed:
                        raise ModelsNotLoaded(self._load_failures(failed))
                    return
            except (TLSError, ModelsNotLoaded):
                raise
            except ServeError:
                pass
            time.sleep(0.5)
        raise ServeError(f"TorchServe did not become ready in {timeout:g} s (waiting for {pending}); "
                         f"log: {self.layout.console_log}\n{self._log_tail()}")

    def _stop_failing_loads(self) -> dict[str, str]:
        """{"model/version": why} for each model whose workers failed to load LOAD_ATTEMPTS times,
        now held at 0 workers (it stays registered: `maas status` shows it, `maas undeploy` removes it)."""
        stopped = {}
        for (model, version), restarts in self.worker_restarts().items():
            key = f"{model}/{version}"
            if restarts < LOAD_ATTEMPTS or key in self._given_up:
                continue
            try:
                self.client.management("PUT", api_path("models", model, version),
                                       params={"min_worker": 0, "max_worker": 0, "synchronous": "false"})
            except ApiError as err:
                if err.status != 404:
                    raise
            self._given_up.add(key)
            stopped[key] = "see model_log.log"
            log.warning("%s: workers failed to load %d times; stopped at 0 workers", key, restarts)
        return stopped

    def _load_failures(self, failed: dict[str, str], wait_s: float = 10.0) -> dict[str, str]:
        """Each failed model's reason from its worker log; the worker's last lines can reach the
        file a moment after TorchServe logged the retry, so wait a little for them."""
        deadline = time.monotonic() + wait_s
        while True:
            found = {key: load_failure(self.layout.log_dir, *key.split("/", 1)) for key in failed}
            if all(found.values()) or time.monotonic() > deadline:
                return {key: why or failed[key] for key, why in found.items()}
            time.sleep(0.5)

    def models_not_ready(self) -> list[str]:
        """Registered models (name/version) whose workers are not all READY yet."""
        waiting = []
        for model in self.client.list_models():
            for desc in self.client.describe(model["modelName"], "all"):
                workers = desc.get("workers", [])
                want = desc.get("minWorkers", 1)
                ready = sum(w.get("status") == "READY" for w in workers)
                if ready < want:
                    waiting.append(f"{desc['modelName']}/{desc['modelVersion']} ({ready}/{want} workers READY)")
        return waiting

    # ---- stop -------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the whole process group; returns False when nothing was running."""
        pgid = self.pid() or (self._proc.pid if self._proc and self._proc.poll() is None else None)
        if pgid is None:
            self.layout.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                if self._proc is not None:
                    self._proc.poll()  # reap our own child so it does not linger as a zombie
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.layout.pid_file.unlink(missing_ok=True)
        self.layout.key_file.unlink(missing_ok=True)
        return True

    # ---- status -----------------------------------------------------------------------
    def worker_restarts(self) -> dict[tuple[str, str], int]:
        """{(model, version): worker restarts} since this server started (from its ts_log.log)."""
        return worker_restarts(self.layout.log_dir)

    def status(self) -> dict[str, Any]:
        """Health and addresses (models: maas.status_table.status_rows)."""
        info: dict[str, Any] = {"running": False, "pid": self.pid(), "endpoints": vars(self.endpoints),
                                "log_dir": str(self.layout.log_dir)}
        try:
            info["health"] = self.client.ping().get("status")
            info["running"] = True
        except ServerNotRunning:
            pass
        return info
