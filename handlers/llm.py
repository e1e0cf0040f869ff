"""Generation handler: a language model built by ONNX Runtime GenAI, served OpenAI-compatible.

Routes (TorchServe passes the URL's tail as the `url_path` header):
    POST /predictions/M/V/v1/completions        {"prompt", "max_tokens", "temperature", ...}
    POST /predictions/M/V/v1/chat/completions   {"messages": [{"role", "content"}], ...}
    GET  /predictions/M/V/v1/models
gRPC (no URL): a body with "messages" is a chat completion, else a completion.

TorchServe's continuous batching (model-config.yaml `continuousBatching: true`) calls handle()
once per step with every live request of this worker: new ones are checked and queued, every
running stream decodes one token (one run for all of them: llm_engine.BatchEngine), then queued
prompts are prefilled, `prefill_chunk_tokens` a step, into free KV cache rows; beyond the rows
and the queue a request gets a 429 with Retry-After (settings: llm_settings.py). A streaming request answers each step with its server-sent
events (kept open by `ts_stream_next`, through `context.stopping_criteria`); a non-streaming one
answers empty steps and then its whole JSON. TorchServe never tells a handler that a client left:
its request id is simply missing from the next step, and the stream's state is freed then.

Never logs request headers: they carry the inference key.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cores import note_worker_start, worker_threads
from http_reply import json_body, set_header, set_status
from inputs import request_header
from integrity import sha256_file
from kv_int8 import CALIBRATION_TEXT
from llm_async import EngineLoop
from llm_engine import BatchEngine, GeneratorEngine
from llm_settings import is_true, read_settings
from openai_api import (
    DONE,
    ApiError,
    GenerationRequest,
    chunk,
    full_answer,
    held_back,
    models_answer,
    parse_body,
    parse_request,
    route_of,
    usage_chunk,
)
from step_metrics import StepWindow
from token_sampler import generator_for, next_token
from token_text import text_streams

log = logging.getLogger(__name__)
# This handler's own series (metrics.yaml declares them; the ORT handlers' MaasRequests and
# MaasRejectedRequests are counted here too)
GENERATION_METRICS = ("MaasTimeToFirstTokenMs", "MaasInterTokenLatencyMs", "MaasOutputTokensPerSecond",
                      "MaasRunningSequences", "MaasWaitingRequests", "MaasPromptTokens", "MaasCompletionTokens",
                      "MaasGenerationsCancelled")
RETRY_AFTER_S = 1


@dataclass(eq=False)
class Stream:
    """One request: what is left of its prompt to prefill, and what has been said so far."""

    request_id: str
    req: GenerationRequest
    pending: list[int]  # prompt tokens not yet in the KV cache
    decoder: Any  # token_text: bytes of a token may complete a character only later
    rng: Any  # its own sampler: its tokens depend on nothing but its own logits
    prompt_tokens: int
    max_new: int
    http: bool = True  # else gRPC (no Host header)
    created: int = field(default_factory=lambda: int(time.time()))
    arrived: float = field(default_factory=time.perf_counter)
    text: str = ""
    sent: int = 0  # characters of `text` already sent
    tokens: int = 0
    last_token: int = -1  # the token the next decode step feeds
    ids: tuple[list[int], list[int]] | None = None  # prompt's and answer's token ids, when asked for
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish: str | None = None
    opened: bool = False  # its first event (the assistant role) was sent
    steps: int = 0  # answers sent
    context: Any = None  # asyncCommunication: its own TorchServe context (idx in it), answered from the engine loop
    idx: int = 0


class LlmHandler:
    """TorchServe handler (entry point: handle)."""

    def __init__(self) -> None:
        self.initialized = False
        self.streams: dict[str, Stream] = {}  # every request with a generation in progress
        self.queue: deque[Stream] = deque()  # admitted, prompt not (all) prefilled yet; the first may be staged
        self.closing: set[str] = set()  # answered whole; their empty last answer goes out next step
        self.ended: list[Stream] = []  # finished or failed in this step, answered at its end
        self.manifest: dict[str, Any] = {}
        self.provider = "CPUExecutionProvider"  # named as ONNX Runtime names it, like the other handlers
        self.loop: EngineLoop | None = None
        self.window = StepWindow()  # inter-token gaps and step gauges: emitted once a second, not once a token
        self.ahead_pool: ThreadPoolExecutor | None = None  # overlap_decode: the next step's decode, started early
        self.ahead: Future | None = None

    # ---- start ---------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        import onnxruntime_genai as og

        props = context.system_properties
        model_dir = Path(props["model_dir"])
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        self.name = self.manifest["name"]
        self.version = str(props.get("model_version") or self.manifest.get("version", ""))
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        settings = read_settings(yaml_config.get("handler"))  # a bad setting: one line naming it
        start = time.perf_counter()
        for file, facts in self.manifest["files"].items():  # nothing loads that was not verified
            if sha256_file(model_dir / file) != facts["sha256"]:
                raise RuntimeError(f"{file}: sha256 differs from manifest.json; refusing to load")
        checked = time.perf_counter()
        self.og, self.tokenizer = og, og.Tokenizer(str(model_dir))
        self.text_stream = text_streams(model_dir, self.tokenizer)
        model_context = int(self.manifest.get("context_length") or 2048)
        self.context_length = min(model_context, settings["max_sequence_tokens"] or model_context)
        self.eos = set(self.manifest.get("eos_token_ids") or [])
        self.max_waiting = settings["max_waiting"]
        self.prefill_chunk = settings["prefill_chunk_tokens"]
        self.idle_prefill = max(self.prefill_chunk, settings["idle_prefill_tokens"])
        streams, gpu_id, engine = settings["max_streams"], props.get("gpu_id"), settings["engine"]
        on_cuda = self.manifest.get("execution_provider") == "cuda" and gpu_id is not None and og.is_cuda_available()
        if on_cuda or engine == "generator":
            config = og.Config(str(model_dir))
            config.clear_providers()
            if on_cuda:
                config.append_provider("cuda")
                config.set_provider_option("cuda", "device_id", str(gpu_id))
                self.provider = "CUDAExecutionProvider"
            self.engine: Any = GeneratorEngine(og, og.Model(config), streams, self.context_length)
            if settings["kv_cache_int8"]:  # GenAI's Generator keeps the cache the build made
                log.warning("kv_cache_int8 applies to the batch engine on CPU; this one keeps its cache as built")
        else:
            threads = worker_threads(settings["intra_op_threads"], int(yaml_config.get("maxWorkers", 1)))
            self.engine = BatchEngine(model_dir, streams, self.context_length, threads,
                                      int(settings["kv_cache_mb"] * 1e6), settings["batch_invariant"],
                                      settings["allow_spinning"], settings["reuse_prompt_prefix"],
                                      int(settings["prompt_cache_mb"] * 1e6), settings["int4_vnni"],
                                      list(self.tokenizer.encode(CALIBRATION_TEXT)) if settings["kv_cache_int8"] else None)
            self.context_length = self.engine.max_len
        self._warm_up()
        # TorchServe's asynchronous worker (model-config.yaml asyncCommunication: true): the engine steps
        # on its own thread and streams answers while it runs (llm_async.py); else one step a call
        self.loop = EngineLoop(self) if is_true(yaml_config.get("asyncCommunication")) else None
        if settings["overlap_decode"] and self.loop is None and self.engine.kind == "batch":
            self.ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="maas-decode-ahead")
        log.info("%s %s: loaded on %s, %s engine: %d streams x %d tokens (KV cache %.1f MB, %d bytes a token), "
                 "prefill chunk %d, queue %d%s%s (sha256 check %.1f s, load and warm-up %.1f s)", self.name, self.version,
                 self.provider, self.engine.kind, streams, self.context_length, self.engine.cache_bytes / 1e6,
                 self.engine.bytes_per_token, self.prefill_chunk, self.max_waiting,
                 (", batch-invariant" if getattr(self.engine, "batch_invariant", False) else "") +
                 (", int4 products on int4_vnni.c" if getattr(self.engine, "int4_kernel", "") == "int4_vnni" else ""),
                 (f", prompt cache up to {kept / 1e6:.0f} MB" if (kept := getattr(self.engine, "prompts_budget", 0)) else "")
                 + (f", int8 KV cache (KL {kl:.4f} nats)" if (kl := getattr(self.engine, "kv_int8_kl", None)) is not None
                    else ""), checked - start, time.perf_counter() - checked)
        self._note_start(context, model_dir)
        self.initialized = True

    def _note_start(self, context: Any, model_dir: Path) -> None:
        """MaasWorkerRestarts, as the ONNX Runtime handlers emit it: +1 for a worker in place of one that died."""
        restarted = note_worker_start(model_dir)
        if restarted:
            log.warning("%s: this worker replaces one that died (see ts_log.log)", self.name)
        self._count(context, "MaasWorkerRestarts", int(restarted))

    def _warm_up(self) -> None:
        ids = [int(t) for t in self.tokenizer.encode("warm up")][: self.context_length - 1] or [0]
        self.engine.prefill("warm-up", ids, alone=True)
        self.engine.drop("warm-up")

    # ---- one step ------------------------------------------------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        ahead = self._decoded_ahead()  # first: nothing else touches the engine while it decodes
        ids = {idx: str(rid) for idx, rid in (context.request_ids or {}).items()}
        live = set(ids.values())
        for rid in [r for r in self.streams if r not in live]:  # its client went away
            self.forget(self.streams[rid])
            log.info("request %s: client left; its generation stopped and freed", rid)
            self._count(context, "MaasGenerationsCancelled", 1)
        self.closing &= live
        answers: list[Any] = [b""] * len(data)
        # TorchServe 0.12's continuous batching, as its frontend reads `ts_stream_next` (per request):
        #   absent   the answer is sent whole, but the request stays in the batch (for ever, on a
        #            kept-alive connection); a 4xx closes the connection, which ends it
        #   "true"   the status line and this chunk go out; more follows
        #   "false"  the last chunk goes out (no status line: never on a first answer) and the request ends
        # So over HTTP a generation answers "true" first and "false" last; a refusal is sent whole (None
        # here), and if its request comes back on the next step, an empty "false" ends it; an answer
        # with nothing more to say on its first step (v1/models, one token) is ended the same way.
        # gRPC's StreamPredictions needs the header on every answer and ends at the first "false";
        # and it gets one answer only (see _over_http).
        finished: list[bool | None] = [False] * len(data)
        index: dict[str, int] = {}
        for idx, item in enumerate(data):
            rid = ids.get(idx, str(idx))
            index[rid] = idx
            if rid in self.closing:
                self.closing.discard(rid)
                finished[idx] = True
            elif rid not in self.streams:
                stream = self.new_request(context, idx, rid, item, answers, finished)
                if stream is not None and not stream.http:  # see _over_http: one gRPC answer, whole
                    answers[idx] = self.generate_alone(context, idx, stream)
                    finished[idx] = True
        self.decode_step(context, ahead)
        self.prefill_step(context)
        try:
            for rid, stream in list(self.streams.items()) + [(s.request_id, s) for s in self.ended]:
                idx = index[rid]
                answers[idx] = self.answer(context, idx, stream)
                if stream.finish is not None:
                    if stream.steps > 1:
                        finished[idx] = True
                    else:
                        self.closing.add(rid)
        finally:  # answered, or failed with the whole batch: either way no later step owes them an answer
            self.ended.clear()
        self.step_metrics(context)
        context.stopping_criteria = [(lambda _answer, done=done: done) for done in finished]
        self._decode_ahead()
        return answers

    def _decode_ahead(self) -> None:
        """Start the next step's decode now, on a thread of its own, so that it runs while this step's
        answers travel to the frontend and the next step comes back (a round trip of 2.5-5 ms on 2
        cores, against a 13-17 ms step): its inputs, every running stream's last token, are known
        now, and nothing a step brings changes them: new requests join the batch only after the
        decode, and a stream whose client left is dropped with its extra token unused."""
        if self.ahead_pool is not None and self.engine.key_at:
            running = [self.streams[key] for key in self.engine.key_at]
            self.ahead = self.ahead_pool.submit(self.engine.decode, {s.request_id: s.last_token for s in running},
                                                _exact(running))

    def _decoded_ahead(self) -> dict[str, Any] | Exception | None:
        """The logits the decode started at the end of the last step gives (waiting for it), or its error."""
        if self.ahead is None:
            return None
        future, self.ahead = self.ahead, None
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 (decode_step logs it and fails the streams it was for)
            return exc

    def decode_step(self, context: Any, ahead: dict[str, Any] | Exception | None = None) -> None:
        """One token for every running stream, in one run of the model (or the run `ahead` already made)."""
        running = [self.streams[key] for key in self.engine.key_at]  # the engine's rows, in order
        if not running:
            return
        try:
            if isinstance(ahead, Exception):
                raise ahead
            if ahead is not None and any(s.request_id not in ahead for s in running):
                raise RuntimeError("a running stream missed the decode made ahead")  # never: only drops come between
            logits = ahead if ahead is not None else self.engine.decode({s.request_id: s.last_token for s in running},
                                                                        _exact(running))
        except Exception:
            log.exception("decoding step failed; its %d streams end with an error", len(running))
            for stream in running:
                self.fail(stream)
            return
        for stream in running:
            try:
                self._take(context, stream, next_token(logits[stream.request_id], stream.req, stream.rng))
            except Exception:  # one stream's failure (its sampling, its text) is not its neighbours'
                log.exception("request %s: its next token failed", stream.request_id)
                self.fail(stream)

    def prefill_step(self, context: Any) -> None:
        """Prompts into the cache, in order, up to `prefill_chunk` tokens a step: a long prompt is
        prefilled over several steps while running streams go on. With none running, up to
        `idle_prefill` tokens a step: each step is a pass over all the weights, so a prompt that
        keeps nobody waiting goes in at once (time to first token). A new prompt starts only when
        a slot is free for it once it is done."""
        budget = self.prefill_chunk if self.engine.running else self.idle_prefill
        while budget > 0 and self.queue:
            stream = self.queue[0]
            starts = self.engine.staged != stream.request_id
            if starts and not self.engine.free_slots():
                return  # it waits in the queue
            try:
                if starts:  # what the last prompt left in the staging row is not computed again
                    stream.pending = stream.pending[self.engine.reuse_prefix(stream.request_id, stream.pending):]
                part, stream.pending = stream.pending[:budget], stream.pending[budget:]
                budget -= len(part)
                logits = self.engine.prefill(stream.request_id, part)
                if stream.pending:
                    continue
                self.queue.popleft()
                self._take(context, stream, next_token(logits, stream.req, stream.rng))
                if stream.finish is None:
                    self.engine.activate(stream.request_id)
            except Exception:
                log.exception("request %s: prefill failed", stream.request_id)
                self.fail(stream)

    def generate_alone(self, context: Any, idx: int, stream: Stream) -> bytes:
        """A whole generation in this step, outside the batch (gRPC)."""
        self.queue.remove(stream)
        try:
            prompt, stream.pending = stream.pending, []
            logits = self.engine.prefill(stream.request_id, prompt, alone=True)
            while True:
                self._take(context, stream, next_token(logits, stream.req, stream.rng))
                if stream.finish is not None:
                    break
                logits = self.engine.prefill(stream.request_id, [stream.last_token], alone=True,
                                             exact=stream.req.reproducible)
        except Exception:
            log.exception("request %s: generation failed", stream.request_id)
            self.fail(stream)
        self.ended.remove(stream)
        if stream.finish == "error":
            return self.refuse(context, idx, ApiError("generation failed for this request", status=500,
                                                       kind="server_error"))
        return self.answer(context, idx, stream)

    def _take(self, context: Any, stream: Stream, token: int) -> None:
        """`token` is `stream`'s next: its text, its timing, and whether it ends the generation."""
        now = time.perf_counter()
        if stream.first_token_at is None:
            stream.first_token_at = now
            self._time(context, "MaasTimeToFirstTokenMs", (now - stream.arrived) * 1000)
        else:
            self.window.add_gap((now - stream.last_token_at) * 1000)
        stream.last_token_at = now
        stream.last_token = token
        stream.tokens += 1
        if stream.ids is not None:
            stream.ids[1].append(token)
        if token in self.eos:
            stream.finish = "stop"
        else:
            stream.text += stream.decoder.decode(token)
            if stream.tokens >= stream.max_new:
                stream.finish = "length"
        if stream.finish is not None:
            stream.text += stream.decoder.flush()  # bytes no later token will complete
        cut = min((i for i in (stream.text.find(s, max(0, stream.sent - len(s))) for s in stream.req.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            stream.text, stream.finish = stream.text[:cut], "stop"
        if stream.finish is not None:
            self._finished(context, stream)

    def answer(self, context: Any, idx: int, stream: Stream) -> bytes:
        """This step's answer to `stream`: its new events (streaming), or its whole answer when done."""
        stream.steps += 1
        if stream.finish == "error":
            failure = ApiError("generation failed for this request", status=500, kind="server_error")
            # Once its 200 went out (its first event; in continuous batching its first answer, even an
            # empty one), a stream's error is an event, as OpenAI's are: its client raises it
            if stream.req.stream and (stream.opened or (self.loop is None and stream.steps > 1)):
                context.set_response_content_type(idx, "text/event-stream")
                return b"data: " + _bytes(json_body(failure.body())) + b"\n\n" + DONE
            return self.refuse(context, idx, failure)
        context.set_response_content_type(idx, "text/event-stream" if stream.req.stream else "application/json")
        if not stream.req.stream:
            if stream.finish is None:
                return b""
            return _bytes(json_body(full_answer(stream.request_id, stream.req, stream.created, stream.text, stream.finish,
                                                stream.prompt_tokens, stream.tokens, stream.ids)))
        set_header(context, idx, "Cache-Control", "no-cache")
        if stream.tokens == 0:
            return b""  # waiting or prefilling
        upto = len(stream.text) - (0 if stream.finish else held_back(stream.text, stream.req.stop))
        events = b""
        if stream.sent == 0 and not stream.opened or upto > stream.sent:
            events += chunk(stream.request_id, stream.req, stream.created, stream.text[stream.sent:upto], None,
                            first=not stream.opened)
            stream.opened = True
            stream.sent = max(stream.sent, upto)
        if stream.finish is not None:
            events += chunk(stream.request_id, stream.req, stream.created, None, stream.finish, token_ids=stream.ids)
            if stream.req.include_usage:
                events += usage_chunk(stream.request_id, stream.req, stream.created, stream.prompt_tokens, stream.tokens)
            events += DONE
        return events

    def fail(self, stream: Stream) -> None:
        stream.finish = "error"
        self.forget(stream)
        self.ended.append(stream)

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.request_id, None)
        if stream in self.queue:
            self.queue.remove(stream)
        self.engine.drop(stream.request_id)

    def new_request(self, context: Any, idx: int, rid: str, item: Any, answers: list[Any],
                     finished: list[bool | None]) -> Stream | None:
        """A request seen for the first time: its stream, queued; or its whole answer (a refusal,
        v1/models) put in `answers`, with how it ends in `finished`."""
        self._count(context, "MaasRequests", 1)
        try:
            stream = self._admit(rid, item, context, idx)
            if stream is None:  # v1/models
                answers[idx] = self._models(context, idx)
        except Exception as exc:  # one bad request never fails its neighbours
            if not isinstance(exc, ApiError):
                log.exception("request %s: could not be admitted", rid)
                exc = ApiError("generation failed for this request", status=500, kind="server_error")
            answers[idx] = self.refuse(context, idx, exc)
            finished[idx] = None if _over_http(context, idx) else True
        else:
            if stream is not None:
                return stream
            finished[idx] = not _over_http(context, idx)
        if not finished[idx]:
            self.closing.add(rid)
        return None

    def _admit(self, rid: str, item: dict[str, Any], context: Any, idx: int) -> Stream | None:
        raw = item.get("body", item.get("data")) if isinstance(item, dict) else item
        url = request_header(context, idx, "url_path")
        if route_of(url, None) == "models":  # a GET: no body to read
            return None
        body = parse_body(raw)  # before the route: gRPC and /predictions/NAME name it by the body alone (messages)
        req = parse_request(body, route_of(url, body), self.name)
        http = _over_http(context, idx)
        if http and len(self.queue) >= self.max_waiting + self.engine.free_slots():
            # every slot is taken and the queue is full: the client should come back (the openai
            # client retries a 429 by itself, after Retry-After); before the prompt is tokenized, which
            # the running streams wait for
            set_header(context, idx, "Retry-After", RETRY_AFTER_S)
            raise ApiError(f"this worker's {self.engine.slots} streams and its queue of {self.max_waiting} requests are "
                           "full; retry later", status=429, kind="requests", code="rate_limit_exceeded")
        prompt_ids = self._prompt_ids(req)
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise ApiError(f"the prompt is {len(prompt_ids)} tokens; this model's context is {self.context_length} tokens",
                           "messages" if req.route == "chat" else "prompt", code="context_length_exceeded")
        if req.max_tokens is not None and req.max_tokens > room:
            raise ApiError(f"{req.max_tokens_field} is {req.max_tokens}, but the prompt leaves room for {room} tokens of "
                           f"this model's {self.context_length}-token context", req.max_tokens_field,
                           code="context_length_exceeded")
        decoder = self.text_stream(prompt_ids if req.route == "completion" else ())  # a completion continues its prompt
        stream = Stream(rid, req, prompt_ids, decoder, generator_for(req), len(prompt_ids),
                        req.max_tokens or room, http=http)
        if req.return_token_ids:
            stream.ids = (list(prompt_ids), [])
        self.streams[rid] = stream
        self.queue.append(stream)
        return stream

    def _prompt_ids(self, req: GenerationRequest) -> list[int]:
        if isinstance(req.prompt, list):
            vocab = int(self.manifest.get("vocab_size") or 0)
            if vocab and max(req.prompt) >= vocab:
                raise ApiError(f"prompt token ids must be below the vocabulary size {vocab}", "prompt")
            return req.prompt
        if req.route == "chat":
            if not self.manifest.get("chat_template"):
                raise ApiError("this model has no chat template: use v1/completions", "messages")
            try:
                text = self.tokenizer.apply_chat_template(json.dumps(req.messages), add_generation_prompt=True)
            except RuntimeError as exc:  # GenAI: the template's raise_exception (roles must alternate, no system role)
                reason = str(exc).split("\n")[0].split(" at row ")[0][:300]
                raise ApiError(f"this model's chat template refused these messages: {reason}", "messages") from None
        else:
            text = req.prompt
        ids = [int(t) for t in self.tokenizer.encode(text)]
        if not ids:
            raise ApiError("the prompt encodes to no tokens", "messages" if req.route == "chat" else "prompt")
        return ids

    def _finished(self, context: Any, stream: Stream) -> None:
        self.forget(stream)
        self.ended.append(stream)
        self._count(context, "MaasPromptTokens", stream.prompt_tokens)
        self._count(context, "MaasCompletionTokens", stream.tokens)
        if stream.first_token_at is not None and stream.last_token_at is not None and stream.tokens > 1:
            rate = (stream.tokens - 1) / max(stream.last_token_at - stream.first_token_at, 1e-9)
            self._gauge(context, "MaasOutputTokensPerSecond", rate)

    def _models(self, context: Any, idx: int) -> bytes:
        answer = models_answer(request_header(context, idx, "url_path"), self.name, self.version, self.context_length)
        context.set_response_content_type(idx, "application/json")
        return _bytes(json_body(answer))

    def refuse(self, context: Any, idx: int, exc: ApiError) -> bytes:
        context.set_response_content_type(idx, "application/json")
        set_status(context, idx, exc.status)
        if exc.status < 500:
            self._count(context, "MaasRejectedRequests", 1)
        return _bytes(json_body(exc.body()))

    # ---- metrics (declared in metrics.yaml) -------------------------------------------------
    def step_metrics(self, context: Any) -> None:
        """The window's mean inter-token gap and the step gauges, when due (step_metrics.py: a metric
        line a token cost a lone stream a fifth of its speed)."""
        idle = not self.engine.running and not self.queue
        if not self.window.due(idle):
            return
        gap = self.window.take(idle)
        if gap is not None:
            self._time(context, "MaasInterTokenLatencyMs", gap)
        self._gauge(context, "MaasRunningSequences", self.engine.running)
        self._gauge(context, "MaasWaitingRequests", len(self.queue))

    def _emit(self, context: Any, emit: Any) -> None:
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        try:
            from ts.metrics.dimension import Dimension

            emit(metrics, [Dimension("ModelName", self.name), Dimension("Level", "Model"), Dimension("Provider", self.provider)])
        except Exception:
            log.warning("could not emit generation metrics", exc_info=True)

    def _count(self, context: Any, name: str, value: float) -> None:
        self._emit(context, lambda m, dims: m.add_counter(name, value, None, dims))

    def _gauge(self, context: Any, name: str, value: float) -> None:
        from ts.metrics.metric_type_enum import MetricTypes

        self._emit(context, lambda m, dims: m.add_metric(name, value, "count", None, dims, MetricTypes.GAUGE))

    def _time(self, context: Any, name: str, ms: float) -> None:
        self._emit(context, lambda m, dims: m.add_time(name, ms, None, "ms", dims))


def _exact(running: list[Stream]) -> bool:
    """Whether a step must compute as the batch does: only when a request's tokens are reproducible
    (greedy or seeded); a lone stream sampled without a seed then skips the spare row (llm_engine)."""
    return any(stream.req.reproducible for stream in running)


def _over_http(context: Any, idx: int) -> bool:
    """HTTP requests carry their headers (Host among them); gRPC ones only their input's name.

    A gRPC generation is answered in one message, generated whole in one step (the other streams
    wait for it): TorchServe 0.12's GRPCJob.isOpen() returns isCancelled(), inverted, so its
    continuous batching drops every live gRPC stream after its first message ("Connection to client
    got closed; Removing job") and the client would wait for ever. HTTP streams token by token."""
    return request_header(context, idx, "Host") is not None


def _bytes(body: str | bytes) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


_service = LlmHandler()


def handle(data: list[dict[str, Any]], context: Any) -> list[Any] | None:
    """TorchServe's entry point."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    if _service.loop is not None:
        return _service.loop.generate(data, context)  # a coroutine: TorchServe's async worker awaits it
    return _service.handle(data, context)


