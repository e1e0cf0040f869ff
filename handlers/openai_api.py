"""The OpenAI API's completions and chat completions as a generation handler reads and answers them.

Pure: parsing and checking a request body (every refusal a 400 in OpenAI's error shape, naming
the field), and the answers and server-sent-event chunks. The handler (llm.py) does the rest.
Only what the handler can honour is accepted: a field it would silently ignore (n > 1,
logprobs, penalties) is refused by name, not dropped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4
MAX_STOP_CHARS = 256
MAX_SEED = 2**31 - 1
DONE = b"data: [DONE]\n\n"
# Fields this server cannot honour, and the values that ask for nothing (accepted), compared with
# their JSON type: completions' `logprobs: 0` asks for the sampled tokens' logprobs, `false` does not.
# vLLM's sampling extras are refused by name too: a client that sends them expects them honoured.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "best_of": (None, 1), "logit_bias": (None, {}),
               "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
               "function_call": (None, "none", "auto"), "suffix": (None, ""), "echo": (None, False),
               "response_format": (None, {"type": "text"}), "min_p": (None, 0, 0.0), "repetition_penalty": (None, 1, 1.0),
               "min_tokens": (None, 0), "ignore_eos": (None, False)}


def _harmless(value: Any, harmless: tuple[Any, ...]) -> bool:
    return any(value is h or (type(value) is type(h) and value == h) for h in harmless)


class ApiError(Exception):
    """A request the API refuses: status, message, and the field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    """One checked request: what to generate, how, and how to answer."""

    route: str  # "chat" | "completion"
    prompt: str | list[int]  # text (chat already rendered by the handler), or token ids
    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int | None = None  # None: up to the context
    max_tokens_field: str = "max_tokens"  # the field that set it (max_completion_tokens, OpenAI's newer name)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    echo_model: str = ""
    return_token_ids: bool = False  # vLLM's extension: the prompt's and the answer's token ids in the choice

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def reproducible(self) -> bool:
        """Its tokens are a function of the request (greedy, or sampled from its seed); a sampled one
        without a seed is random anyway, so it may decode on numbers that depend on its neighbours."""
        return self.greedy or self.seed is not None


def route_of(url_path: str | None, body: Any) -> str:
    """The endpoint asked for: from the URL's tail (/predictions/M/V/v1/...), else from the body (gRPC)."""
    tail = (url_path or "").strip("/")
    if tail.endswith("chat/completions"):
        return "chat"
    if tail.endswith("completions"):
        return "completion"
    if tail.endswith("models") or tail.rpartition("/")[0].endswith("models"):  # v1/models, v1/models/NAME
        return "models"
    if tail:
        raise ApiError(f"no such endpoint: /{tail} (serves v1/completions, v1/chat/completions, v1/models)",
                       status=404, code="unknown_url")
    if isinstance(body, dict) and "messages" in body:
        return "chat"
    return "completion"


def parse_body(raw: Any) -> dict[str, Any]:
    """The request body as a JSON object (TorchServe may hand over bytes, text or parsed JSON)."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if isinstance(raw, str):
        if not raw.strip():
            raise ApiError("the body is empty: send a JSON object")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ApiError(f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise ApiError("the body is nested too deeply to be a request") from None
    if not isinstance(raw, dict):
        raise ApiError(f"the body must be a JSON object, not {type(raw).__name__}")
    return raw


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"{name} must be a number, not {json.dumps(value)[:40]}", name)
    if isinstance(value, int) and not low <= value <= high:  # before float(): 10**400 overflows it
        raise ApiError(f"{name} must be in [{low:g}, {high:g}], not {str(value)[:40]}", name)
    if not math.isfinite(value):
        raise ApiError(f"{name} must be a number, not {json.dumps(value)[:40]}", name)
    if value > high or value < low:
        raise ApiError(f"{name} must be in [{low:g}, {high:g}], not {value:g}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, not {json.dumps(value)[:40]}", name)
    if not low <= value <= high:
        raise ApiError(f"{name} must be between {low} and {high}, not {value}", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"{name} must be true or false, not {json.dumps(value)[:40]}", name)
    return value


def _utf8(text: str, param: str) -> str:
    """`text`, when it can be written as UTF-8 (JSON's \\ud83d escapes make lone surrogates that cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(f"{param} holds a lone surrogate (character {exc.start}): not text", param) from None
    return text


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(f"stop takes at most {MAX_STOPS} sequences, not {len(stops)}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters", "stop")
    return tuple(_utf8(s, "stop") for s in stops)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(f"{where}.role must be one of {', '.join(ROLES)}, not {json.dumps(role)[:40]}", f"{where}.role")
        content = message.get("content")
        if content is None and role == "assistant":  # an assistant turn that only called a tool: OpenAI allows null
            content = ""
        if isinstance(content, list):  # content parts: only text is served
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(f"{where}.content parts must be text parts ({{\"type\": \"text\", \"text\": ...}})",
                               f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(f"{where}.content must be a string", f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": _utf8(content, f"{where}.content")})
    if not any(m["content"].strip() for m in out):
        raise ApiError("messages carry no text", "messages")
    return out


def _prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # the client's one-prompt batch
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            return prompt
        raise ApiError("prompt must be a string, or a list of token ids (one prompt per request)", "prompt")
    if not isinstance(prompt, str):
        raise ApiError("prompt must be a string" if prompt is not None else "prompt is required", "prompt")
    if not prompt:
        raise ApiError("prompt is empty", "prompt")
    return _utf8(prompt, "prompt")


def parse_request(body: dict[str, Any], route: str, served: str) -> GenerationRequest:
    """A checked GenerationRequest from an OpenAI-style body; ApiError naming the field otherwise."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("model must be a string", "model")
    if model and model.split(":")[0] != served:
        raise ApiError(f"the model {model!r} is not served here: this endpoint serves {served!r}", "model",
                       status=404, code="model_not_found")
    n = _integer(body, "n", 1, 1 << 30)
    if n not in (None, 1):
        raise ApiError("n must be 1: ask once per completion", "n")
    for name, harmless in UNSUPPORTED.items():
        if not _harmless(body.get(name), harmless):
            raise ApiError(f"{name} is not supported by this server", name)
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise ApiError(f"{name} is not supported by this server (only 0)", name)
    # max_completion_tokens, OpenAI's newer name, first; both are checked whichever is given
    newer, older = (_integer(body, name, 1, 1 << 30) for name in ("max_completion_tokens", "max_tokens"))
    max_tokens = newer if newer is not None else older
    if route == "completion" and max_tokens is None:
        max_tokens = 16  # the completions API's own default
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise ApiError("stream_options is only allowed when stream is true", "stream_options")
    if options is not None and not (isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)):
        raise ApiError("stream_options must be an object like {\"include_usage\": true}", "stream_options")
    return GenerationRequest(
        route=route,
        prompt="" if route == "chat" else _prompt(body),
        messages=_messages(body) if route == "chat" else [],
        max_tokens=max_tokens,
        max_tokens_field="max_completion_tokens" if newer is not None else "max_tokens",
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),  # 0: the most likely token only
        top_k=max(_integer(body, "top_k", -1, 1 << 20) or 0, 0),  # -1: off, as vLLM's
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        stop=_stops(body),
        stream=stream,
        include_usage=bool(stream and options and options.get("include_usage")),
        echo_model=model or served,
        return_token_ids=_flag(body, "return_token_ids"),
    )


def seed_for_sampling(seed: int) -> int:
    """The API's 64-bit seed folded into the sampler's range, the same way every time."""
    return seed % MAX_SEED


# ---- answers ------------------------------------------------------------------------------
def _base(request_id: str, req: GenerationRequest, created: int) -> dict[str, Any]:
    prefix, kind = ("chatcmpl", "chat.completion") if req.route == "chat" else ("cmpl", "text_completion")
    return {"id": f"{prefix}-{request_id}", "object": kind, "created": created, "model": req.echo_model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def full_answer(request_id: str, req: GenerationRequest, created: int, text: str, finish: str,
                prompt_tokens: int, completion_tokens: int, token_ids: tuple[list[int], list[int]] | None = None) -> dict[str, Any]:
    """The non-streaming answer; `token_ids` (prompt's, answer's) when the request asked for them."""
    body = _base(request_id, req, created)
    if req.route == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    if req.return_token_ids and token_ids is not None:
        choice["prompt_token_ids"], choice["token_ids"] = token_ids
    return {**body, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n\n"


def chunk(request_id: str, req: GenerationRequest, created: int, text: str | None, finish: str | None,
          first: bool = False, token_ids: tuple[list[int], list[int]] | None = None) -> bytes:
    """One server-sent event of a streaming answer (a delta of text, or the finish reason: with every
    token id when the request asked for them)."""
    body = _base(request_id, req, created)
    if req.route == "chat":
        body["object"] = "chat.completion.chunk"
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    else:
        body["choices"] = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
    if req.return_token_ids and token_ids is not None:
        body["choices"][0]["prompt_token_ids"], body["choices"][0]["token_ids"] = token_ids
    return sse(body)


def usage_chunk(request_id: str, req: GenerationRequest, created: int, prompt_tokens: int, completion_tokens: int) -> bytes:
    body = _base(request_id, req, created)
    if req.route == "chat":
        body["object"] = "chat.completion.chunk"
    return sse({**body, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def models_list(served: str, version: str, context_length: int | None) -> dict[str, Any]:
    """GET v1/models: the one model this endpoint serves."""
    return {"object": "list", "data": [{"id": served, "object": "model", "created": int(time.time()),
                                        "owned_by": "maas", "version": version, "context_length": context_length}]}


def models_answer(url_path: str | None, served: str, version: str, context_length: int | None) -> dict[str, Any]:
    """GET v1/models (the list), or v1/models/NAME (that model; a 404 for one not served here)."""
    listing = models_list(served, version, context_length)
    tail = (url_path or "").strip("/")
    if not tail or tail.endswith("models"):
        return listing
    name = tail.rpartition("/")[2]
    if name.split(":")[0] != served:
        raise ApiError(f"the model {name!r} is not served here: this endpoint serves {served!r}", "model",
                       status=404, code="model_not_found")
    return listing["data"][0]


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` might begin a stop sequence (not sent yet)."""
    longest = 0
    for stop in stops:  # per stream and step: only where the stop's first character is, earliest first
        at = text.find(stop[0], max(len(text) - len(stop) + 1, 0)) if len(stop) > 1 else -1
        while at != -1 and len(text) - at > longest:
            if stop.startswith(text[at:]):
                longest = len(text) - at
                break
            at = text.find(stop[0], at + 1)
    return longest
