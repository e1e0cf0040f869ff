"""Drive the generation handler step by step in process, the way TorchServe's continuous batching
does (one handle() call per step with every live request), to check its scheduling exactly: which
request got a token in which step. The serving tests run the same handler in a real TorchServe."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llm


class StepContext:
    """What the handler reads and writes of TorchServe's context."""

    def __init__(self, model_dir: Path, settings: dict[str, Any] | None = None) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.model_yaml_config = {"handler": settings or {}}
        self.metrics = None
        self.request_ids: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.status: dict[int, int] = {}
        self.response_headers: dict[int, dict[str, str]] = {}
        self.stopping_criteria: list[Any] = []
        self.step = 0  # not TorchServe's: the driver's step, for tests that record what happened when

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.headers.get(idx, {})

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.status[idx] = code

    def set_response_header(self, idx: int, name: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[name] = value


@dataclass
class Call:
    """One request's life: what it was answered, step by step."""

    body: dict[str, Any]
    joins: int = 0  # the step it arrives in
    leaves: int | None = None  # the step its client hangs up in (never answered after it)
    answers: list[bytes] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # the step of each answer
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body_bytes(self) -> bytes:
        return b"".join(self.answers)

    def answer(self) -> dict[str, Any]:
        return json.loads(self.body_bytes)

    def text(self) -> str:
        return self.answer()["choices"][0]["text"]


def run_steps(handler: llm.LlmHandler, context: StepContext, calls: list[Call], max_steps: int = 10_000,
              headers: dict[str, str] | None = None) -> int:
    """Step until every call is answered whole (or left); returns the number of steps. `headers`:
    every request's (default: HTTP to v1/completions)."""
    headers = headers or {"Host": "127.0.0.1", "url_path": "v1/completions"}
    live: list[int] = []
    for step in range(max_steps):
        live += [i for i, call in enumerate(calls) if call.joins == step]
        live = [i for i in live if calls[i].leaves is None or calls[i].leaves > step]
        if not live and all(c.joins <= step for c in calls):
            return step
        if not live:
            continue
        context.step = step
        context.request_ids = {k: f"req-{i}" for k, i in enumerate(live)}
        context.headers = {k: dict(headers) for k in range(len(live))}
        context.status, context.response_headers = {}, {}
        answers = handler.handle([{"body": calls[i].body} for i in live], context)
        still = []
        for k, i in enumerate(live):
            call = calls[i]
            if answers[k]:
                call.answers.append(answers[k])
                call.steps.append(step)
            call.status = context.status.get(k, call.status)
            call.headers.update(context.response_headers.get(k, {}))
            done = context.stopping_criteria[k](answers[k])  # None: answered whole (a refusal)
            if done is False and call.status < 400:
                still.append(i)
        live = still
    raise AssertionError("the calls did not finish")


def record_tokens(handler: llm.LlmHandler, context: StepContext) -> dict[str, list[int]]:
    """The steps in which each request (by id) got a token, filled in as the handler runs."""
    steps: dict[str, list[int]] = {}
    take = handler._take

    def recording(ctx: Any, stream: Any, token: int) -> None:
        steps.setdefault(stream.request_id, []).append(context.step)
        take(ctx, stream, token)

    handler._take = recording  # type: ignore[method-assign]
    return steps


def handler_for(model_dir: Path, **settings: Any) -> tuple[llm.LlmHandler, StepContext]:
    handler, context = llm.LlmHandler(), StepContext(model_dir, settings)
    handler.initialize(context)
    return handler, context
