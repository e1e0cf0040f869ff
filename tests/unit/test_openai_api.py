"""The OpenAI API as the generation handler reads it (handlers/openai_api.py): pure logic."""
from __future__ import annotations

import json

import pytest

from maas.handlers.openai_api import ApiError, chunk, held_back, parse_body, parse_request, route_of, seed_for_sampling


def test_routes_come_from_the_url_tail_or_else_the_body() -> None:
    assert route_of("v1/chat/completions", None) == "chat"
    assert route_of("/v1/completions", None) == "completion"
    assert route_of("v1/models", None) == "models" and route_of("v1/models/tiny-llama", None) == "models"
    assert route_of(None, {"messages": []}) == "chat" and route_of("", {"prompt": "x"}) == "completion"
    with pytest.raises(ApiError) as caught:
        route_of("v1/embeddings", None)
    assert caught.value.status == 404


def test_a_full_request_reads_as_asked() -> None:
    req = parse_request({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                                    {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                         "max_completion_tokens": 9, "temperature": 0.5, "top_p": 0.8, "top_k": 20, "seed": 2**40,
                         "stop": "\n", "stream": True, "stream_options": {"include_usage": True}}, "chat", "m")
    assert req.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stop) == (9, 0.5, 0.8, 20, ("\n",))
    assert req.stream and req.include_usage and not req.greedy
    assert 0 <= seed_for_sampling(req.seed) < 2**31 - 1
    assert parse_request({"prompt": ["one"]}, "completion", "m").max_tokens == 16  # the API's own default
    assert parse_request({"prompt": [3, 4]}, "completion", "m").prompt == [3, 4]


@pytest.mark.parametrize("body, param", [
    ({"prompt": None}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": [True]}, "prompt"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"), ({"prompt": "x", "temperature": float("nan")}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"), ({"prompt": "x", "stop": [""]}, "stop"), ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "presence_penalty": 1}, "presence_penalty"), ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "stream_options": "usage"}, "stream_options"), ({"prompt": "x", "model": 5}, "model"),
    # asked for and not honoured: refused by name, never ignored
    ({"prompt": "x", "echo": True}, "echo"), ({"prompt": "x", "logprobs": 0}, "logprobs"),
    ({"prompt": "x", "functions": [{"name": "f"}]}, "functions"), ({"prompt": "x", "tool_choice": "required"}, "tool_choice"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"), ({"prompt": "x", "min_p": 0.1}, "min_p"),
    ({"prompt": "x", "repetition_penalty": 1.2}, "repetition_penalty"), ({"prompt": "x", "ignore_eos": True}, "ignore_eos"),
])
def test_refusals_name_the_field(body, param) -> None:
    with pytest.raises(ApiError) as caught:
        parse_request(body, "completion", "m")
    assert caught.value.param == param and caught.value.status == 400
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_values_that_ask_for_nothing_are_accepted() -> None:
    req = parse_request({"prompt": "x", "echo": False, "logprobs": None, "tool_choice": "none", "top_p": 0, "top_k": -1,
                         "repetition_penalty": 1.0, "min_p": 0, "stream": False}, "completion", "m")
    assert (req.top_p, req.top_k) == (0.0, 0)  # top_p 0: the most likely token only; top_k -1: off (vLLM's)


def test_bodies_that_are_not_json_objects_are_refused() -> None:
    for raw in (b"\xff", b"", "nope", b"[1]", 3, b"[" * 5000 + b"]" * 5000):
        with pytest.raises(ApiError):
            parse_body(raw)
    assert parse_body(b'{"prompt": "\\u00e9"}') == {"prompt": "é"}


def test_text_that_may_begin_a_stop_sequence_is_held_back() -> None:
    assert held_back("the end", ("ending",)) == 3
    assert held_back("the cat", ("dog",)) == 0
    assert held_back("ab", ("abc", "b")) == 2
    # only where a stop's first character is: a long stop costs nothing where its head is absent
    assert held_back("a stop is END OF", ("END OF REPORT",)) == 6 and held_back("x" * 5000, ("y" * 256,)) == 0
    assert held_back("ENDEND", ("ENDENDX", "DX")) == 6 and held_back("aXa", ("aXaY", "aB")) == 3


def test_chunks_are_server_sent_events() -> None:
    req = parse_request({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "chat", "m")
    event = chunk("r1", req, 1, "é", None, first=True)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.isascii()
    body = json.loads(event[6:])
    assert body["object"] == "chat.completion.chunk" and body["choices"][0]["delta"] == {"role": "assistant", "content": "é"}


def test_token_ids_come_back_when_asked_for() -> None:
    """vLLM's `return_token_ids`: the prompt's and the answer's ids in the choice (the bench checks a
    peer's greedy tokens with it)."""
    from maas.handlers.openai_api import full_answer

    req = parse_request({"prompt": "x", "return_token_ids": True}, "completion", "m")
    choice = full_answer("r", req, 0, "ab", "length", 2, 2, ([5, 6], [7, 8]))["choices"][0]
    assert (choice["prompt_token_ids"], choice["token_ids"]) == ([5, 6], [7, 8])
    plain = parse_request({"prompt": "x"}, "completion", "m")
    assert "token_ids" not in full_answer("r", plain, 0, "ab", "length", 2, 2, ([5, 6], [7, 8]))["choices"][0]
    events = chunk("r", req, 0, None, "stop", token_ids=([5], [9]))
    assert json.loads(events[6:])["choices"][0]["token_ids"] == [9]
    with pytest.raises(ApiError, match="return_token_ids must be true or false"):
        parse_request({"prompt": "x", "return_token_ids": "yes"}, "completion", "m")


def test_a_model_is_listed_or_named_and_another_name_is_a_404() -> None:
    from maas.handlers.openai_api import models_answer

    assert [m["id"] for m in models_answer("v1/models", "m", "1.0", 256)["data"]] == ["m"]
    assert models_answer("v1/models/m", "m", "1.0", 256)["id"] == "m"
    with pytest.raises(ApiError) as caught:
        models_answer("v1/models/other", "m", "1.0", 256)
    assert caught.value.status == 404 and caught.value.body()["error"]["code"] == "model_not_found"


def test_numbers_beyond_a_float_and_both_token_caps_are_checked() -> None:
    for name in ("temperature", "top_p", "presence_penalty"):
        with pytest.raises(ApiError) as caught:
            parse_request({"prompt": "x", name: 10**400}, "completion", "m")
        assert caught.value.status == 400 and name in str(caught.value), name
    with pytest.raises(ApiError, match="max_tokens"):
        parse_request({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5, "max_tokens": "abc"},
                      "chat", "m")
    newer = parse_request({"prompt": "x", "max_completion_tokens": 5, "max_tokens": 9}, "completion", "m")
    assert (newer.max_tokens, newer.max_tokens_field) == (5, "max_completion_tokens")  # errors name what was sent
    assert parse_request({"prompt": "x", "max_tokens": 9}, "completion", "m").max_tokens_field == "max_tokens"


def test_an_assistant_turn_without_content_is_a_turn_with_no_text() -> None:
    """OpenAI allows `content: null` on an assistant message (one that called a tool), and clients
    replay such histories; a user's null content is still a mistake."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "go"}]
    assert parse_request({"messages": turns}, "chat", "m").messages[1] == {"role": "assistant", "content": ""}
    with pytest.raises(ApiError, match=r"messages\[0\].content must be a string"):
        parse_request({"messages": [{"role": "user", "content": None}]}, "chat", "m")
