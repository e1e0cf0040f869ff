"""The one place statuses and headers are set (handlers/http_reply.py), and the worker-restart
count read from TorchServe's log (maas/worker_log.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from http_reply import header_value, reason_phrase, reply
from hypothesis import given
from hypothesis import strategies as st

from conftest import FakeContext
from maas.worker_log import restarts_of, worker_restarts


@pytest.mark.parametrize("code,phrase", [(200, "OK"), (400, "Bad Request"), (404, "Not Found"),
                                         (413, "Request Entity Too Large"), (500, "Internal Server Error"),
                                         (599, "Error")])
def test_phrases_are_the_fixed_ascii_phrase_of_the_code(code: int, phrase: str) -> None:
    assert reason_phrase(code) == phrase and phrase.isascii()


@given(st.text(st.characters(codec=None, exclude_categories=())) | st.integers(0xD800, 0xDFFF).map(chr))
def test_header_values_are_printable_ascii_whatever_they_were(value: str) -> None:
    cleaned = header_value(value)
    assert cleaned.isascii() and cleaned.isprintable() and len(cleaned) <= 256
    assert "\r" not in cleaned and "\n" not in cleaned


def test_reply_escapes_the_body_and_keeps_the_message_out_of_the_phrase(tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, yaml_config={})
    body = reply(ctx, 3, {"message": "got 'é\ud83d'"}, 400, {"X-Model-Version": "été\r\n1"})
    assert body.isascii() and json.loads(body)["message"] == "got 'é\ud83d'"
    assert ctx.status[3] == (400, "Bad Request")
    assert ctx.headers[3] == {"content-type": "application/json", "X-Model-Version": "?t???1"}
    reply(ctx, 4, {"ok": 1})
    assert 4 not in ctx.status  # 200 is TorchServe's default: nothing set


def test_an_invalid_header_name_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        reply(FakeContext(tmp_path, yaml_config={}), 0, {}, 200, {"X Bad": "1"})


LOG = """\
2026-11-24T17:10:00,000 [INFO ] main org.pytorch.serve.ModelServer - Torchserve version: 0.12.0
2026-11-24T17:11:00,041 [INFO ] W-9001-maintenance_1.0 org.pytorch.serve.wlm.WorkerThread - Retry worker: 9001 in 1 seconds.
2026-11-24T17:20:00,000 [INFO ] main org.pytorch.serve.ModelServer - Torchserve version: 0.12.0
2026-11-24T17:21:00,041 [INFO ] W-9001-maintenance_1.0 org.pytorch.serve.wlm.WorkerThread - Retry worker: 9001 in 1 seconds.
2026-11-24T17:21:00,041 [INFO ] W-9001-maintenance_1.0 org.pytorch.serve.wlm.WorkerThread - Retry worker: 9001 in 1 seconds.
2026-11-24T17:22:00,041 [INFO ] W-9004-my_model_2.0-int8 org.pytorch.serve.wlm.WorkerThread - Retry worker: 9004 in 2 seconds.
2026-11-24T17:23:00,041 [INFO ] W-9001-maintenance_1.0 org.pytorch.serve.wlm.WorkerThread - Retry worker: 9001 in 2 seconds.
2026-11-24T17:24:00,000 [INFO ] W-9002-digits_1.0 org.pytorch.serve.wlm.WorkerThread - 9002 Worker disconnected. WORKER_SCALED_DOWN
"""


def test_worker_restarts_are_counted_since_the_last_server_start(tmp_path: Path) -> None:
    (tmp_path / "ts_log.log").write_text(LOG)
    counts = worker_restarts(tmp_path)
    # the first server's restart is not counted; a line logged twice is one restart; scale-down is none
    assert counts == {("maintenance", "1.0"): 2, ("my_model", "2.0-int8"): 1}
    assert restarts_of(counts, "maintenance") == 2 and restarts_of(counts, "my_model", "2.0-int8") == 1
    assert restarts_of(counts, "digits") == 0 and worker_restarts(tmp_path / "nowhere") == {}


def test_array_answers_take_the_fast_path_and_keep_float32_values() -> None:
    import numpy as np
    from http_reply import json_body

    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    fast, slow = json_body({"embedding": vector}), json_body({"embedding": vector}, fast=False)
    assert isinstance(fast, bytes) and fast.isascii() and len(fast) < len(slow)
    # Both parse to the same float32 values: the fast path's shortest float32 form loses nothing.
    assert np.array_equal(np.asarray(json.loads(fast)["embedding"], dtype=np.float32), vector)
    assert np.array_equal(np.asarray(json.loads(slow)["embedding"], dtype=np.float32), vector)


@pytest.mark.parametrize("text", ["café", "\ud83d", "日本", "\u202e"])
def test_client_text_in_a_body_is_always_escaped_ascii(text: str) -> None:
    from http_reply import json_body

    body = json_body({"message": "bad", "field": text})
    assert isinstance(body, str) and body.isascii() and json.loads(body)["field"] == text
