"""The generation handler's scheduling, step by step, on the packaged tiny Llama (in process, with
the real ONNX Runtime sessions; tests/integration/test_llm_serving.py runs it inside TorchServe):
in-flight batching gives every request the tokens it gets alone, a long prompt is prefilled in
chunks while running streams keep their one token a step, a full queue answers 429 with
Retry-After, the KV budget bounds the context, and a client that leaves frees its row."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llm_steps import Call, handler_for, record_tokens, run_steps

PROMPTS = ["The pump", "Bearing temperature rose and the operator", "x", "Spindle torque of the lathe is high, so we"]


def mixed_calls(stagger: int = 2) -> list[Call]:
    """Greedy and seeded sampled requests of different lengths, arriving one every `stagger` steps."""
    bodies = [{"prompt": p, "max_tokens": 30 + 5 * i, "temperature": 0} for i, p in enumerate(PROMPTS)]
    bodies += [{"prompt": f"Pump {i} at", "max_tokens": 20, "temperature": 0.8, "top_p": 0.9, "seed": i} for i in range(4)]
    return [Call(body, joins=stagger * i) for i, body in enumerate(bodies)]


def texts(model_dir: Path, calls: list[Call], **settings) -> list[str]:
    handler, context = handler_for(model_dir, **settings)
    run_steps(handler, context, calls)
    assert handler.engine.running == 0 and not handler.streams and not handler.queue
    return [call.text() for call in calls]


def test_batched_streams_get_what_one_generator_each_gives(llm_archive: Path) -> None:
    """ONNX Runtime GenAI, one Generator per request (the engine CUDA archives run), is the reference:
    the batch engine gives the same greedy and seeded tokens, whether streams arrive one by one, wait
    for a row (3 rows for 8 requests) or have their prompts prefilled 2 tokens a step."""
    reference = texts(llm_archive, mixed_calls(), engine="generator")
    assert all(reference)
    assert texts(llm_archive, mixed_calls()) == reference
    assert texts(llm_archive, mixed_calls(), overlap_decode=False) == reference  # each step's decode in its step
    assert texts(llm_archive, mixed_calls(stagger=0), max_streams=3) == reference
    assert texts(llm_archive, mixed_calls(stagger=1), prefill_chunk_tokens=2, max_streams=5) == reference


def test_a_prompt_computes_the_logits_of_its_last_position_only(llm_archive: Path) -> None:
    """The archive carries the decoder's one-position copy (export/batch_decoder.py) and the engine
    runs it: a prompt's chunk comes back as one row of logits, those of its last token in the
    graph as built (which computes every position's)."""
    import json

    import numpy as np
    import onnxruntime as ort

    from maas.export.llm_verify import sequence_logits
    from maas.handlers.llm_engine import BATCH_DECODER, BatchEngine

    manifest = json.loads((llm_archive / "manifest.json").read_text())
    assert BATCH_DECODER in manifest["files"] and (llm_archive / BATCH_DECODER).is_file()
    engine = BatchEngine(llm_archive, 2, 64, 1, 2**24)
    assert engine.gathers and engine.decoder_path.name == BATCH_DECODER
    prompt = [5, 17, 42, 8, 99, 3, 61]
    decoder = json.loads((llm_archive / "genai_config.json").read_text())["model"]["decoder"]
    every = sequence_logits(ort.InferenceSession(str(llm_archive / "model.onnx"), providers=["CPUExecutionProvider"]),
                            decoder, prompt)
    assert every.shape[0] == len(prompt)
    np.testing.assert_allclose(engine.prefill("a", prompt), every[-1], atol=1e-4)
    run = engine._run(np.asarray([prompt[:4]], np.int64), np.ones((1, 4), np.int64), engine.staging + 1,
                      engine.staging + 2, at=2)
    np.testing.assert_allclose(run[0], every[2], atol=1e-4)


def test_batch_invariant_false_decodes_a_lone_stream_on_one_row(llm_archive: Path) -> None:
    """batch_invariant: false runs a stream that decodes alone as one row (the one-row kernel, 15 %
    faster at int4), true with a spare row beside it; at fp32 both give the reference's tokens."""
    reference = texts(llm_archive, mixed_calls(stagger=60), engine="generator")  # one stream at a time
    for invariant in (True, False):
        handler, context = handler_for(llm_archive, batch_invariant=invariant)
        rows: list[int] = []
        run = handler.engine._run
        handler.engine._run = lambda ids, mask, *rest, **at: rows.append(len(ids)) or run(ids, mask, *rest, **at)
        calls = mixed_calls(stagger=60)
        run_steps(handler, context, calls)
        assert [call.text() for call in calls] == reference
        assert (2 in rows) == invariant  # prefills run one row either way


def test_only_reproducible_requests_pay_for_the_spare_row(llm_archive: Path) -> None:
    """The spare row keeps a lone stream's tokens what they are among others; a request sampled
    without a seed cannot tell, so alone it decodes as one row (the faster one-row kernel at int4),
    on the same engine where a greedy or seeded request alone gets its spare row."""
    handler, context = handler_for(llm_archive)
    rows: list[int] = []
    run = handler.engine._run
    handler.engine._run = lambda ids, mask, *rest, **at: rows.append(len(ids)) or run(ids, mask, *rest, **at)
    for body, spare in (({"temperature": 0.8}, False), ({"temperature": 0.8, "seed": 5}, True),
                        ({"temperature": 0}, True)):
        rows.clear()
        call = Call({"prompt": "The pump", "max_tokens": 12, **body})
        run_steps(handler, context, [call])
        assert call.text() and (2 in rows) == spare, body


def test_a_long_prompt_is_prefilled_in_chunks_while_streams_go_on(llm_archive: Path) -> None:
    chunk, prompt = 16, list(range(3, 153))  # 150 token ids: 10 chunks
    running = Call({"prompt": "The pump", "max_tokens": 40, "temperature": 0, "stream": True, "stop": []})
    long = Call({"prompt": prompt, "max_tokens": 5, "temperature": 0, "stream": True}, joins=3)
    handler, context = handler_for(llm_archive, prefill_chunk_tokens=chunk)
    tokens = record_tokens(handler, context)
    run_steps(handler, context, [running, long])
    # the running stream had a token in every step until its 40th ...
    assert tokens["req-0"] == list(range(40))
    # ... while the long prompt took 10 steps to prefill, its first token coming with the last chunk
    assert tokens["req-1"] == list(range(3 + 10 - 1, 3 + 10 - 1 + 5))


def test_with_no_stream_decoding_a_prompt_goes_in_at_once(llm_archive: Path) -> None:
    """Chunks keep running streams going; with none running there is nobody to keep waiting, so
    up to idle_prefill_tokens go in one step (one pass over the weights: time to first token)."""
    def long() -> Call:
        return Call({"prompt": list(range(3, 153)), "max_tokens": 5, "temperature": 0, "stream": True})

    handler, context = handler_for(llm_archive, prefill_chunk_tokens=16)
    tokens = record_tokens(handler, context)
    run_steps(handler, context, [long()])
    assert tokens["req-0"] == list(range(5))  # its first token in the step it arrived
    handler, context = handler_for(llm_archive, prefill_chunk_tokens=16, idle_prefill_tokens=50)
    tokens = record_tokens(handler, context)
    run_steps(handler, context, [long()])
    assert tokens["req-0"] == list(range(2, 2 + 5))  # 150 tokens, 50 a step


def test_a_prompt_that_begins_as_the_last_one_did_is_prefilled_from_where_they_part(llm_archive: Path) -> None:
    """A shared head (a system prompt: 80 tokens here) is prefilled once: the next prompt starts
    after it, in the staging row the last one left, and gets the tokens it gets without reuse and
    from one Generator each (the reference). A single token left to compute runs with the one
    before it (int4's one-row kernel computes other numbers than the several-row one)."""
    head = list(range(3, 83))
    tails = ([90, 91], [91, 91], [91, 92])

    def calls() -> list[Call]:
        return [Call({"prompt": head + tail, "max_tokens": 6, "temperature": 0}, joins=12 * i)
                for i, tail in enumerate(tails)]

    reference = texts(llm_archive, calls(), engine="generator")
    for reuse in (True, False):
        handler, context = handler_for(llm_archive, reuse_prompt_prefix=reuse)
        assert staging_runs(handler, context, calls(), reference) == ([82, 2, 2] if reuse else [82, 82, 82])


def test_prompts_that_alternate_between_heads_are_prefilled_from_the_prompt_cache(llm_archive: Path) -> None:
    """Two system prompts in turn: each new prompt shares nothing with the last one (the staging
    row), but its head is in the prompt cache, copied back instead of computed; the same tokens as
    one Generator per request. With `prompt_cache_mb: 0` only the staging row is reused."""
    heads = list(range(3, 43)), list(range(100, 140))
    prompts = [heads[i % 2] + [200 + i, 201 + i] for i in range(4)]

    def calls() -> list[Call]:
        return [Call({"prompt": prompt, "max_tokens": 4, "temperature": 0}, joins=10 * i)
                for i, prompt in enumerate(prompts)]

    reference = texts(llm_archive, calls(), engine="generator")
    for budget, runs in ((128, [42, 42, 2, 2]), (0, [42, 42, 42, 42])):
        handler, context = handler_for(llm_archive, prompt_cache_mb=budget)
        assert staging_runs(handler, context, calls(), reference) == runs


def staging_runs(handler: Any, context: Any, calls: list[Call], reference: list[str]) -> list[int]:
    """Run `calls` to their end (their texts must be `reference`); -> the tokens of each run in the staging row."""
    prefilled: list[int] = []
    run, staging = handler.engine._run, handler.engine.slots

    def spy(ids, mask, first, end, at=0):
        if first == staging:
            prefilled.append(ids.shape[1])
        return run(ids, mask, first, end, at=at)
    handler.engine._run = spy
    run_steps(handler, context, calls)
    assert [call.text() for call in calls] == reference
    return prefilled


def test_a_full_queue_answers_429_with_retry_after(llm_archive: Path) -> None:
    calls = [Call({"prompt": f"Valve {i} is", "max_tokens": 10, "temperature": 0}) for i in range(5)]
    handler, context = handler_for(llm_archive, max_streams=2, max_waiting=1)
    run_steps(handler, context, calls)
    served, refused = calls[:3], calls[3:]
    assert [c.status for c in refused] == [429, 429]
    for call in refused:
        error = call.answer()["error"]
        assert call.headers["Retry-After"] == "1" and error["code"] == "rate_limit_exceeded", error
        assert "queue of 1" in error["message"]
    assert all(c.status == 200 and c.answer()["usage"]["completion_tokens"] == 10 for c in served)
    # the third waited for a row: its answer came after the first two finished
    assert served[2].steps[-1] > max(served[0].steps[-1], served[1].steps[-1])


def test_the_kv_budget_bounds_the_context(llm_archive: Path) -> None:
    # tiny Llama: 2 layers x (K, V) x 2 KV heads x 16 x 4 bytes = 512 bytes a token; 10 rows
    handler, context = handler_for(llm_archive, max_streams=8, kv_cache_mb=0.1)
    assert handler.context_length == 100_000 // (10 * 512) == 19
    call = Call({"prompt": list(range(3, 23)), "max_tokens": 1})
    run_steps(handler, context, [call])
    error = call.answer()["error"]
    assert call.status == 400 and error["code"] == "context_length_exceeded"
    assert "context is 19 tokens" in error["message"]
    with pytest.raises(ValueError, match="raise kv_cache_mb or lower max_streams"):
        handler_for(llm_archive, kv_cache_mb=0.05)
    # a mistyped setting stops the worker's load with one line naming it, before anything is allocated
    with pytest.raises(ValueError, match="unknown setting 'max_stream'.*batch_invariant must be true or false"):
        handler_for(llm_archive, max_stream=4, batch_invariant="flase")


def test_a_client_that_leaves_frees_its_row_and_the_others_are_untouched(llm_archive: Path) -> None:
    def three(leaves: int | None) -> list[Call]:
        return [Call({"prompt": p, "max_tokens": 30, "temperature": 0}, leaves=leaves if i == 0 else None)
                for i, p in enumerate(PROMPTS[:3])]

    alone = three(None)
    handler, context = handler_for(llm_archive)
    run_steps(handler, context, alone)
    left = three(5)  # the first leaves mid-stream: the last running row moves into its place
    run_steps(handler, context, left)
    assert [c.text() for c in left[1:]] == [c.text() for c in alone[1:]]
    assert handler.engine.running == 0 and handler.engine.free_slots() == 8 and not handler.engine.length


def test_a_stream_that_fails_mid_generation_ends_in_an_error_event_and_costs_no_one_else(llm_archive: Path) -> None:
    def calls() -> list[Call]:
        return [Call({"prompt": p, "max_tokens": 12, "temperature": 0, "stream": i == 0}) for i, p in enumerate(PROMPTS[:3])]

    alone = calls()
    handler, context = handler_for(llm_archive)
    run_steps(handler, context, alone)
    failing = calls()
    take = handler._take

    def fails_on_its_fourth_token(ctx: Any, stream: Any, token: int) -> None:
        if stream.request_id == "req-0" and stream.tokens == 3:
            raise RuntimeError("injected: this stream's token fails")
        take(ctx, stream, token)

    handler._take = fails_on_its_fourth_token  # type: ignore[method-assign]
    run_steps(handler, context, failing)
    handler._take = take  # type: ignore[method-assign]
    events = failing[0].body_bytes.decode().split("\n\n")
    # its 200 went out with its first events: the error is an event too, then [DONE] (as OpenAI's)
    assert failing[0].status == 200 and events[-3:] == [events[-3], "data: [DONE]", ""], events
    assert json.loads(events[-3].removeprefix("data: "))["error"]["type"] == "server_error"
    assert [c.text() for c in failing[1:]] == [c.text() for c in alone[1:]]
    again = calls()  # the worker goes on: nothing of the failed step is left behind
    run_steps(handler, context, again)
    assert [streamed(c) for c in again[:1]] + [c.text() for c in again[1:]] == \
        [streamed(alone[0])] + [c.text() for c in alone[1:]]
    assert handler.engine.running == 0 and not handler.streams and not handler.ended


def streamed(call: Call) -> str:
    events = [e.removeprefix("data: ") for e in call.body_bytes.decode().split("\n\n") if e.startswith("data: {")]
    return "".join(json.loads(e)["choices"][0].get("text") or "" for e in events if json.loads(e).get("choices"))


def test_messages_a_chat_template_refuses_are_a_400_naming_its_reason(llm_archive: Path) -> None:
    handler, context = handler_for(llm_archive)
    genai = handler.tokenizer

    class AlternatingRoles:  # the archive's GenAI tokenizer with a Mistral-Instruct-like template
        TEMPLATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
                    "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                    "[{{ m['content'] }}]{% endfor %}")

        def apply_chat_template(self, messages: str, add_generation_prompt: bool) -> str:
            return genai.apply_chat_template(messages, template_str=self.TEMPLATE, add_generation_prompt=add_generation_prompt)

        def __getattr__(self, name: str) -> Any:
            return getattr(genai, name)

    handler.tokenizer = AlternatingRoles()
    handler.manifest = {**handler.manifest, "chat_template": AlternatingRoles.TEMPLATE}
    two_users = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]
    calls = [Call({"messages": two_users, "max_tokens": 4}), Call({"messages": two_users[:1], "max_tokens": 4})]
    context_headers = {"Host": "127.0.0.1", "url_path": "v1/chat/completions"}
    run_steps(handler, context, calls, headers=context_headers)
    error = calls[0].answer()["error"]
    assert calls[0].status == 400 and error["param"] == "messages", error
    assert error["message"] == ("this model's chat template refused these messages: Conversation roles must "
                                "alternate user/assistant/user/assistant/...")
    assert calls[1].status == 200 and calls[1].answer()["usage"]["completion_tokens"] == 4


def test_every_run_of_a_reproducible_request_has_an_even_number_of_rows(llm_archive: Path) -> None:
    """int4's MatMulNBits computes rows in pairs and an odd one out on another kernel (the 568M
    Llama: the third of three streams 0.045 off its logits alone, a 5-token chunk 0.13): a greedy or
    seeded request's runs are padded to even (a spare row; a copy of a chunk's last token), so its
    tokens do not depend on how many streams run beside it or how its prompt was cut."""
    handler, context = handler_for(llm_archive, prefill_chunk_tokens=5, max_streams=3)
    assert handler.engine.staging == 4  # a spare decode row beyond an odd max_streams
    runs: list[tuple[int, int]] = []
    run = handler.engine._run
    handler.engine._run = lambda ids, mask, *rest, **at: runs.append(ids.shape) or run(ids, mask, *rest, **at)
    calls = [Call({"prompt": p, "max_tokens": 9, "temperature": 0}, joins=i) for i, p in enumerate(PROMPTS[1:4])]
    run_steps(handler, context, calls)
    assert {rows * length % 2 for rows, length in runs} == {0} and (4, 1) in runs, runs
    alone = []
    for call in calls:
        again = Call(call.body)
        run_steps(handler, context, [again])
        alone.append(again.text())
    assert [c.text() for c in calls] == alone
    runs.clear()  # sampled without a seed: nothing to keep reproducible, no spare decode rows; but its
    # prompt's chunks stay even: the staging row keeps them for later prompts that begin alike, greedy ones too
    run_steps(handler, context, [Call({"prompt": p, "max_tokens": 9, "temperature": 0.9}, joins=i)
                                 for i, p in enumerate(["Coolant flow dropped below the", "Gearbox oil is dark",
                                                        "Every conveyor stopped when"])])  # none seen before
    assert {rows * length % 2 for rows, length in runs} == {0, 1}
    assert all(length % 2 == 0 for rows, length in runs if length > 1), runs
