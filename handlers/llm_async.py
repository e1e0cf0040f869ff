"""The generation handler's engine loop for TorchServe's asynchronous worker mode.

With continuous batching (the default) every step is a round trip: the frontend sends each live
request, the handler runs one step and answers all of them, and only then is the next step sent;
while the answers travel, nothing decodes (3.5-5 ms a step measured on 2 cores, against a 12-17 ms
step). With `asyncCommunication: true` in model-config.yaml TorchServe 0.12 hands each request to
the worker as it arrives (ts/async_service.py) and sends whatever the worker writes, when it writes
it: here the engine steps on a thread of its own, without pause, and each stream's events go out
as intermediate answers (TorchServe's send_intermediate_predict_response) while the next step
runs; a request's last answer is the value its coroutine returns.

What the mode gives up: TorchServe's async frontend never says that a client left, so such a
generation runs to its end (max_tokens or a stop) before its row is free; and it forgets a request
only at an answer marked last of a stream, so a refusal (sent whole: see EngineLoop._last) stays in
its memory for the worker's life.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from typing import Any

from inputs import request_header
from openai_api import ApiError

log = logging.getLogger(__name__)


class EngineLoop:
    """Requests in from the event loop; steps, intermediate answers and last answers out of one thread."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        handler.metrics_context = None  # the latest request's context: metrics go out through it
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: dict[str, tuple[Any, asyncio.AbstractEventLoop, asyncio.Future]] = {}  # rid -> context, loop, future
        self.opened: set[str] = set()  # requests with an intermediate answer sent: streams, to the frontend
        _serialize_socket_writes()
        self.thread = threading.Thread(target=self._run, name="maas-engine-loop", daemon=True)
        self.thread.start()

    async def generate(self, data: list[Any], context: Any) -> list[Any]:
        """One TorchServe request (model-config.yaml batchSize: 1): its last answer, when it ends."""
        loop = asyncio.get_running_loop()
        futures = []
        for idx, item in enumerate(data):  # one item with batchSize 1; several are answered together
            future = loop.create_future()
            self.inbox.put((item, context, idx, loop, future))
            futures.append(future)
        return [await f for f in futures]

    def _run(self) -> None:
        while True:
            busy = self.handler.streams or self.handler.queue
            arrivals = [] if busy else [self.inbox.get()]  # idle: sleep until a request comes
            while True:
                try:
                    arrivals.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._step(arrivals)
            except Exception:
                log.exception("engine loop step failed; its streams end with an error")
                try:
                    self._fail_all()
                except Exception:
                    # a loop that cannot answer would leave every client waiting: let TorchServe start a new worker
                    log.exception("engine loop cannot recover; the worker exits")
                    os._exit(1)

    def _step(self, arrivals: list[tuple[Any, Any, int, asyncio.AbstractEventLoop, asyncio.Future]]) -> None:
        h = self.handler
        for item, context, idx, loop, future in arrivals:
            rid = str((context.request_ids or {}).get(idx, idx))
            self.waiting[rid] = (context, loop, future)
            try:
                self._arrive(item, context, idx, rid)
            except Exception:  # one bad request never fails its neighbours
                log.exception("request %s: could not be admitted", rid)
                self._refuse(context, idx, rid)
        h.decode_step(h.metrics_context)
        h.prefill_step(h.metrics_context)
        self._answer_all()
        try:
            h.step_metrics(h.metrics_context)
        except Exception:
            log.warning("could not emit step metrics", exc_info=True)

    def _arrive(self, item: Any, context: Any, idx: int, rid: str) -> None:
        h = self.handler
        h.metrics_context = context
        answers: list[Any] = [b""] * (idx + 1)
        stream = h.new_request(context, idx, rid, item, answers, [False] * (idx + 1))
        h.closing.discard(rid)  # continuous batching's bookkeeping: here the answer below ends it
        if stream is None:  # refused, or v1/models
            self._last(context, idx, rid, answers[idx])
            return
        stream.context, stream.idx = context, idx
        if not stream.http:  # gRPC: one answer, whole (see llm._over_http)
            self._last(context, idx, rid, h.generate_alone(context, idx, stream))

    def _answer_all(self) -> None:
        """Each stream's new events go out now; a finished stream's last answer settles its request."""
        h = self.handler
        for stream in list(h.streams.values()) + h.ended:
            if stream.request_id not in self.waiting:
                continue
            try:
                events = h.answer(stream.context, stream.idx, stream)
                if stream.finish is not None:
                    self._last(stream.context, stream.idx, stream.request_id, events)
                elif events:
                    _send_intermediate(stream.context, stream.idx, stream.request_id, events)
                    self.opened.add(stream.request_id)
            except Exception:  # this stream ends with an error; the others go on
                log.exception("request %s: answer failed", stream.request_id)
                h.forget(stream)
                self._refuse(stream.context, stream.idx, stream.request_id)
        h.ended.clear()

    def _fail_all(self) -> None:
        """After a failed step: every request still waiting gets a 500, and the engine is emptied."""
        h = self.handler
        for stream in list(h.streams.values()):
            h.fail(stream)
        self._answer_all()  # a stream already answering gets its error as an event (LlmHandler.answer)
        for rid, (context, _, _) in list(self.waiting.items()):
            idx = next((i for i, r in (context.request_ids or {}).items() if str(r) == rid), 0)
            self._refuse(context, idx, rid)

    def _refuse(self, context: Any, idx: int, rid: str) -> None:
        answer = self.handler.refuse(context, idx, ApiError("generation failed for this request", status=500,
                                                            kind="server_error"))
        self._last(context, idx, rid, answer)

    def _last(self, context: Any, idx: int, rid: str, answer: Any) -> None:
        """A request's last answer. TorchServe's async frontend forgets a request only at an answer marked
        last of a stream; one answered whole it keeps for the worker's life. So a 200 answered whole (a
        JSON completion, v1/models) goes out as a one-chunk stream; a gRPC answer is marked last itself;
        an HTTP refusal cannot be (a 4xx stream's first chunk closes the connection before its body),
        and is sent whole."""
        entry = self.waiting.pop(rid, None)
        if entry is None:  # already answered
            return
        _, loop, future = entry
        try:
            if request_header(context, idx, "Host") is None:  # gRPC requests carry no Host
                context.set_response_header(idx, "ts_stream_next", "false")
            elif rid not in self.opened and (context.get_response_status(idx)[0] or 200) < 400:
                _send_intermediate(context, idx, rid, answer)
                answer = b""
        finally:  # settled whatever happened: a request never waits for ever
            self.opened.discard(rid)
            loop.call_soon_threadsafe(_settle, future, answer)


def _settle(future: asyncio.Future, answer: Any) -> None:
    if not future.done():
        future.set_result(answer)


# TorchServe's async worker writes last answers from its own thread (AsyncService.send_responses);
# intermediate ones go out from the engine loop's: one lock, so two messages never interleave on
# the socket when a write blocks part-way
_SOCKET_LOCK = threading.Lock()


def _serialize_socket_writes() -> None:
    """Make TorchServe 0.12's AsyncService.send_responses take _SOCKET_LOCK for each message (its own
    loop, as written there, plus the lock); the worker starts those threads after the handler loads."""
    from ts import async_service

    if getattr(async_service.AsyncService.send_responses, "maas_locked", False):
        return

    def send_responses(service: Any) -> None:
        while True:
            future = asyncio.run_coroutine_threadsafe(service.out_queue.get(), service.loop)
            message = future.result()
            with _SOCKET_LOCK:
                service.service.cl_socket.sendall(message)

    send_responses.maas_locked = True  # type: ignore[attr-defined]
    async_service.AsyncService.send_responses = send_responses


def _send_intermediate(context: Any, idx: int, rid: str, answer: Any) -> None:
    """What ts.handler_utils.utils.send_intermediate_predict_response does, under _SOCKET_LOCK."""
    from ts.protocol.otf_message_handler import create_predict_response

    message = create_predict_response({idx: answer}, {idx: rid}, "Intermediate Prediction success", 200, context, True)
    if message is not None:  # None on ranks other than 0 (never here: one process a worker)
        with _SOCKET_LOCK:
            context.cl_socket.sendall(message)
