"""Locust load test for a maas model served by TorchServe.

Run through `maas loadtest MODEL` (headless, bounded, reports + release gate), or by hand:
  locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 20s \
         --host http://127.0.0.1:8080 --model maintenance --key-file run/key_file.json
With `--protocol grpc` the same requests go to TorchServe's gRPC inference API (`--grpc-target`)
instead, through Locust's gRPC recipe: gevent-cooperative grpc, each call fired as a request event.
The inference key is read from TorchServe's key_file.json and re-read whenever the file
changes (maas renews keys there), so a long run never sends an expired copy.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Optional

import gevent
import locust.stats
import orjson
from locust import FastHttpUser, User, events, task
from locust.runners import WorkerRunner

from maas.client import TokenRefused, api_path, says_token_refused
from maas.grpc_client import (  # grpc itself is imported on first use
    GrpcCallError,
    GrpcInference,
    refused,
)
from maas.loadtests import payloads
from maas.locust_csv import STALE_KEY

# The history CSV reaches the disk each second, not each 5 s: maas prints progress from it while a
# run goes (a short run's lines said "users 0" throughout).
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

KEY_RETRIES = 5  # re-reads of key_file.json after a refused (just renewed) key
_USERS_STARTED = itertools.count()


def user_seed(environment) -> int:
    """A user's payload seed: its start order in this process and the process's worker index, so
    every run (and every configuration a bench compares) sends the same prompts and sampling seeds."""
    worker = max(getattr(environment.runner, "worker_index", 0) or 0, 0)
    return worker * 1000 + next(_USERS_STARTED) % 1000


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--model", default="maintenance", env_var="MAAS_MODEL", help="model name to load")
    parser.add_argument("--endpoint", default="predictions", choices=["predictions", "explanations"],
                        env_var="MAAS_ENDPOINT", help="TorchServe inference API route to load")
    parser.add_argument("--payload", default="", env_var="MAAS_PAYLOAD",
                        help="payload generator (loadtests/payloads.py) [the model's own]")
    parser.add_argument("--model-version", default="", env_var="MAAS_MODEL_VERSION",
                        help="version to target (default: the model's default version)")
    parser.add_argument("--model-store", default="", env_var="MAAS_MODEL_STORE",
                        help="model store holding the archive (request bodies of a packaged model)")
    parser.add_argument("--key-file", default="", env_var="MAAS_KEY_FILE",
                        help="TorchServe key_file.json (empty: token authorization is off)")
    parser.add_argument("--requests-log", default="", env_var="MAAS_REQUESTS_LOG",
                        help="folder for one CSV per Locust process: every request's end time, latency, failure "
                             "(the per-second figures and plots are computed from them)")
    parser.add_argument("--warmup", type=float, default=0.0, env_var="MAAS_WARMUP",
                        help="seconds of load before the statistics are reset (excluded from the figures)")
    parser.add_argument("--protocol", default="http", choices=["http", "grpc"], env_var="MAAS_PROTOCOL",
                        help="HTTP /predictions (--host) or TorchServe's gRPC Predictions (--grpc-target)")
    parser.add_argument("--grpc-target", default="127.0.0.1:7070", env_var="MAAS_GRPC_TARGET",
                        help="host:port of TorchServe's gRPC inference API")
    parser.add_argument("--grpc-ca", default="", env_var="MAAS_GRPC_CA",
                        help="CA certificate to trust when TorchServe's gRPC uses TLS (empty: plain gRPC)")
    parser.add_argument("--openai-path", default="", env_var="MAAS_OPENAI_PATH",
                        help="--generative: the chat completions path [/predictions/MODEL/VERSION/v1/chat/completions]"
                             " (another OpenAI-compatible server, e.g. llama.cpp's /v1/chat/completions)")
    parser.add_argument("--generative", action="store_true", env_var="MAAS_GENERATIVE",
                        help="a language model: stream chat completions (OpenAI API) and record time to first "
                             "token, inter-token latency and tokens per second")


@events.init.add_listener
def _one_protocol(environment, **_kwargs) -> None:
    """Run the user class of --protocol only (both live in this file)."""
    grpc = environment.parsed_options is not None and environment.parsed_options.protocol == "grpc"
    generative = environment.parsed_options is not None and environment.parsed_options.generative
    wanted = GenerationUser if generative else GrpcModelUser if grpc else ModelUser
    if wanted in environment.user_classes:
        environment.user_classes[:] = [wanted]
    if grpc:  # before any channel exists: grpc's polling must yield to gevent, or one call blocks every user
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()


@events.test_start.add_listener
def _schedule_warmup_reset(environment, **_kwargs) -> None:
    """Reset statistics once the warm-up is over (on the master or the only runner: workers
    report deltas, so the merged figures start from the reset too)."""
    warmup = getattr(environment.parsed_options, "warmup", 0.0) if environment.parsed_options else 0.0
    if warmup > 0 and not isinstance(environment.runner, WorkerRunner):
        gevent.spawn_later(warmup, environment.runner.stats.reset_all)
    folder = getattr(environment.parsed_options, "requests_log", "") if environment.parsed_options else ""
    if folder and not isinstance(environment.runner, WorkerRunner):  # the clock the warm-up runs on
        with open(os.path.join(folder, "requests-start.txt"), "w") as f:
            f.write(f"{time.time():.4f}\n")


REQUESTS: list[tuple[float, float, int]] = []  # (end time, latency ms, failed) of every request this process sent


@events.request.add_listener
def _record_request(response_time, exception, start_time=None, **_kwargs) -> None:
    start = start_time if start_time is not None else time.time() - response_time / 1000
    REQUESTS.append((start + response_time / 1000, response_time, int(exception is not None)))


# Generations (GenerationUser): (end time, time to first token ms, completion tokens, duration ms, failed),
# and every gap between two tokens of a stream: (time, ms)
GENERATIONS: list[tuple[float, float, int, float, int]] = []
TOKEN_GAPS: list[tuple[float, float]] = []


@events.test_stop.add_listener
def _write_requests(environment, **_kwargs) -> None:
    folder = getattr(environment.parsed_options, "requests_log", "") if environment.parsed_options else ""
    if folder and REQUESTS:
        with open(os.path.join(folder, f"requests-{os.getpid()}.csv"), "w") as f:
            f.write("end_s,latency_ms,failed\n")
            f.writelines(f"{t:.4f},{ms:.3f},{failed}\n" for t, ms, failed in REQUESTS)
    if folder and GENERATIONS:
        with open(os.path.join(folder, f"generations-{os.getpid()}.csv"), "w") as f:
            f.write("end_s,ttft_ms,completion_tokens,duration_ms,failed\n")
            f.writelines(f"{t:.4f},{ttft:.3f},{n},{ms:.3f},{failed}\n" for t, ttft, n, ms, failed in GENERATIONS)
        with open(os.path.join(folder, f"token-gaps-{os.getpid()}.csv"), "w") as f:
            f.write("t_s,gap_ms\n")
            f.writelines(f"{t:.4f},{ms:.3f}\n" for t, ms in TOKEN_GAPS)


class KeyFile:
    """The inference key, re-read only when key_file.json changes on disk. Not maas.keys.read_keys:
    the key files of a cluster or a Swarm (HAProxy in front) hold only an "inference" key, which
    read_keys refuses, and a Locust user must not block its gevent loop while the file is rewritten."""

    def __init__(self, path: str) -> None:
        self.path, self._mtime, self._key = path, None, None

    def key(self, reread: bool = False) -> str | None:
        if not self.path:
            return None
        for _ in range(100):
            mtime = os.stat(self.path).st_mtime_ns
            if not (reread or mtime != self._mtime):
                break
            try:
                with open(self.path) as f:
                    self._key = json.load(f)["inference"]["key"]
            except ValueError:  # empty or cut short: TorchServe truncates and rewrites it in place
                gevent.sleep(0.005)
                continue
            self._mtime = mtime
            break
        return self._key

    def header(self, reread: bool = False) -> dict[str, str]:
        key = self.key(reread)
        return {"Authorization": f"Bearer {key}"} if key else {}


def token_refused(resp) -> bool:
    """An HTTP answer refusing the key (TorchServe 0.12 says so with a 400)."""
    return resp.status_code in (400, 401) and says_token_refused(resp.text)


def answer_problem(body, explaining: bool, check) -> Optional[str]:
    """What is wrong with a decoded answer (None: it is right), over either protocol."""
    if explaining:
        found = isinstance(body, dict) and ("attributions" in body or "occlusion" in body)
        return None if found else f"not an explanation: {str(body)[:120]}"
    try:
        return check(body)
    except Exception as exc:  # noqa: BLE001 -- an answer the check cannot even read is a wrong one; raised out
        # of Locust's response block it would leave the request out of every count, errors included
        return f"answer could not be checked ({type(exc).__name__}: {str(exc)[:120]})"


class ModelUser(FastHttpUser):
    """Sends one valid request after another (closed loop), validating every body."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = opts.model
        self.path = api_path(opts.endpoint, opts.model, opts.model_version)
        self.explaining = opts.endpoint == "explanations"
        self.payloads = payloads.for_model(opts.payload or opts.model, seed=user_seed(self.environment),
                                           version=opts.model_version, model_store=opts.model_store)
        self.keys = KeyFile(opts.key_file)

    @task
    def predict(self) -> None:
        body = self.payloads.next()
        for attempt in range(1, KEY_RETRIES + 2):
            headers = {"Content-Type": self.payloads.content_type, **self.keys.header(reread=attempt > 1)}
            with self.client.post(self.path, data=body, headers=headers, name=self.path, catch_response=True) as resp:
                if attempt <= KEY_RETRIES and token_refused(resp):
                    # The key was renewed between reading the file and sending (TorchServe switches
                    # keys before it rewrites the file): not the server's fault. Reported under its
                    # own name, then retried with the file's key once it has changed.
                    resp.request_meta["name"] = f"{self.path}{STALE_KEY}"
                    resp.success()
                    gevent.sleep(0.05 * attempt)
                    continue
                problem = self._problem(resp)
                if problem:
                    resp.failure(problem)
                return

    def _problem(self, resp) -> Optional[str]:
        if resp.status_code == 0:  # FastHttp's status when no answer came at all
            return f"HTTP 0: connection failed ({type(resp.error).__name__}: {str(resp.error)[:160]})"
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {(resp.text or '')[:200]}"
        try:  # orjson: a 384-float answer parses in ~10 us, json.loads takes ~55 (Locust shares the server's cores)
            body = orjson.loads(resp.content or b"")
        except ValueError:
            return "response is not JSON"
        return answer_problem(body, self.explaining, self.payloads.check)


class AnswerError(Exception):
    """A gRPC reply that is not the right answer (reported as the request's failure)."""


class GrpcModelUser(User):
    """The same closed loop over TorchServe's gRPC Predictions call, every answer validated."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        if opts.endpoint != "predictions":
            raise ValueError("TorchServe's gRPC API has no explanations call: load it over HTTP")
        self.model, self.version = opts.model, opts.model_version or None
        self.name = f"gRPC Predictions {opts.model}" + (f" {opts.model_version}" if opts.model_version else "")
        self.payloads = payloads.for_model(opts.payload or opts.model, seed=user_seed(self.environment),
                                           version=opts.model_version, model_store=opts.model_store)
        self.keys = KeyFile(opts.key_file)
        root = Path(opts.grpc_ca).read_bytes() if opts.grpc_ca else None
        self._reread = False
        self.client = GrpcInference(opts.grpc_target, lambda: self.keys.key(self._reread), None, root)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def predict(self) -> None:
        body = self.payloads.next()
        started, t0 = time.time(), time.perf_counter()
        length, failure = 0, None
        for attempt in range(1, KEY_RETRIES + 2):
            self._reread = attempt > 1
            try:
                answer = self.client.predict_raw(self.model, body, self.version)
            except TokenRefused as exc:  # renewed between reading the file and sending: as over HTTP
                failure = exc
                gevent.sleep(0.05 * attempt)
                continue
            except GrpcCallError as exc:
                failure = exc
                break
            length, failure = len(answer), refused(answer)
            if failure is None:
                try:
                    problem = answer_problem(orjson.loads(answer), False, self.payloads.check)
                except ValueError:
                    problem = "answer is not JSON"
                failure = AnswerError(problem) if problem else None
            break
        self.environment.events.request.fire(
            request_type="gRPC", name=self.name, response_time=(time.perf_counter() - t0) * 1000,
            response_length=length, exception=failure, context={}, start_time=started)


class GenerationUser(User):
    """Streams OpenAI chat completions from a language model (closed loop): each request's time to
    first token, the gaps between its tokens and its token count are recorded beside Locust's own
    figures (whose latency is the whole generation's)."""

    def on_start(self) -> None:
        import requests

        opts = self.environment.parsed_options
        if opts.protocol != "http":
            raise ValueError("load a language model over HTTP (its gRPC answers come whole)")
        self.model = opts.model
        version = opts.model_version or "1.0"
        path = opts.openai_path or f"/predictions/{opts.model}/{version}/v1/chat/completions"
        self.url = f"{self.environment.host}{path}"
        self.name = f"{path} (stream)"
        self.payloads = payloads.for_model(opts.payload or opts.model, seed=user_seed(self.environment),
                                           version=opts.model_version, model_store=opts.model_store)
        self.keys = KeyFile(opts.key_file)
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def generate(self) -> None:
        body = self.payloads.next()
        started, t0 = time.time(), time.perf_counter()
        first = last = None
        tokens, finish, length, failure = 0, None, 0, None
        try:
            with self._post(body) as resp:
                if resp.status_code != 200:
                    failure = AnswerError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                for line in (resp.iter_lines() if failure is None else ()):
                    length += len(line)
                    if not line.startswith(b"data: {"):
                        continue
                    event = orjson.loads(line[6:])
                    now = time.perf_counter()
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                    for choice in event.get("choices") or ():
                        if (choice.get("delta") or {}).get("content"):
                            if first is None:
                                first = now
                            else:
                                TOKEN_GAPS.append((time.time(), (now - last) * 1000))
                            last = now
                        finish = choice.get("finish_reason") or finish
            if failure is None:
                problem = self.payloads.check({"finish_reason": finish, "completion_tokens": tokens})
                failure = AnswerError(problem) if problem else None
        except Exception as exc:  # noqa: BLE001 - a broken stream is this request's failure
            failure = exc
        elapsed = (time.perf_counter() - t0) * 1000
        ttft = (first - t0) * 1000 if first is not None else elapsed
        GENERATIONS.append((time.time(), ttft, tokens, elapsed, int(failure is not None)))
        self.environment.events.request.fire(request_type="POST", name=self.name, response_time=elapsed,
                                             response_length=length, exception=failure, context={}, start_time=started)

    def _post(self, body: bytes):
        """The streaming response; a key refused because it was just renewed is retried with the file's
        new one, as ModelUser does (the retry's time counts: the client waited for it)."""
        for attempt in range(1, KEY_RETRIES + 2):
            headers = {"Content-Type": "application/json", **self.keys.header(reread=attempt > 1)}
            resp = self._send(body, headers)
            if attempt > KEY_RETRIES or not token_refused(resp):
                return resp
            resp.close()
            gevent.sleep(0.05 * attempt)

    def _send(self, body: bytes, headers: dict[str, str]):
        """One POST; sent again once on a new connection when a kept-alive one was closed before any
        answer came (the server's keep-alive timeout racing the next request: llama-server's rows lost
        a quarter of their requests at one user to it, as any HTTP client reusing connections would
        without this retry, which browsers and urllib3 make). The retry's time counts."""
        import requests

        try:
            return self.session.post(self.url, data=body, headers=headers, stream=True, timeout=300)
        except requests.ConnectionError:
            self.session.close()  # its pool: the next request opens a new connection
            return self.session.post(self.url, data=body, headers=headers, stream=True, timeout=300)
