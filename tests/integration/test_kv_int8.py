"""The int8 KV cache (handlers/kv_int8.py): the engine's graph rewritten so that ONNX Runtime's
GroupQueryAttention keeps keys and values as int8 with calibrated per-channel scales, made once
beside the decoder, checked against the float cache, and served by the generation handler with the
same tokens for a request alone and among others."""
from __future__ import annotations

import shutil
from pathlib import Path

import kv_int8
import numpy as np
import pytest
from llm_steps import Call, handler_for, run_steps

from maas.handlers.llm_engine import BatchEngine

PROMPTS = [[5, 17, 42, 8, 99, 3], [9, 9, 30], [100, 3, 61, 200, 7, 12, 40], [11]]


@pytest.fixture
def archive(tmp_path: Path, llm_archive: Path) -> Path:
    """A copy of the session's tiny Llama archive: what the cache's calibration writes stays here."""
    return Path(shutil.copytree(llm_archive, tmp_path / "tiny-llama"))


def calibration(folder: Path) -> list[int]:
    import onnxruntime_genai as og

    return list(og.Tokenizer(str(folder)).encode(kv_int8.CALIBRATION_TEXT))


def decoded(engine: BatchEngine, prompts: list[list[int]], steps: int = 6) -> np.ndarray:
    """The first sequence's logits after its prompt and over `steps` decode steps, `prompts` running together."""
    first = []
    for key, prompt in enumerate(prompts):
        logits = engine.prefill(str(key), prompt)
        engine.activate(str(key))
        first.append(logits)
    rows = [first[0]]
    for step in range(steps):
        rows.append(engine.decode({str(key): 7 + step for key in range(len(prompts))})["0"])
    return np.stack(rows)


def test_an_int8_cache_is_made_once_and_reads_within_the_float_caches_logits(archive: Path) -> None:
    ids = calibration(archive)
    engine = BatchEngine(archive, 4, 128, 2, 2**26, kv_int8_text=ids)
    reference = BatchEngine(archive, 4, 128, 2, 2**26)
    assert engine.cache[0].dtype == np.int8 and reference.cache[0].dtype == np.float32
    assert engine.decoder_path.name == "batch_decoder.kv_int8.onnx" and 0 <= engine.kv_int8_kl < kv_int8.MAX_KL
    assert engine.bytes_per_token * 4 == reference.bytes_per_token  # a quarter of the memory a token
    cost = kv_int8.kl(decoded(reference, PROMPTS), decoded(engine, PROMPTS))
    assert cost < 1e-4, cost  # 7e-7 here; scales a tenth of the calibrated ones (values clipped) cost 5e-3
    written = engine.decoder_path.stat().st_mtime_ns
    again = BatchEngine(archive, 4, 128, 2, 2**26, kv_int8_text=ids)  # another worker: the copy is reused
    assert again.decoder_path.stat().st_mtime_ns == written and again.kv_int8_kl == pytest.approx(engine.kv_int8_kl, abs=1e-6)
    made = sorted(p.name for p in archive.glob("batch_decoder.kv_int8*"))
    assert made == ["batch_decoder.kv_int8.onnx", "batch_decoder.kv_int8.onnx.lock"]  # no partial copy left


def test_a_sequence_gets_the_same_logits_alone_and_among_others(archive: Path) -> None:
    ids = calibration(archive)
    alone = decoded(BatchEngine(archive, 1, 128, 2, 2**26, kv_int8_text=ids), PROMPTS[:1])
    for count in (2, 3, 4):
        together = decoded(BatchEngine(archive, count, 128, 2, 2**26, kv_int8_text=ids), PROMPTS[:count])
        np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_a_changed_decoder_is_calibrated_again(archive: Path) -> None:
    import onnx

    ids = calibration(archive)
    BatchEngine(archive, 2, 64, 2, 2**24, kv_int8_text=ids)
    decoder = archive / "batch_decoder.onnx"
    model = onnx.load(str(decoder), load_external_data=False)
    onnx.helper.set_model_props(model, {"edited": "yes"})
    onnx.save(model, str(decoder))
    engine = BatchEngine(archive, 2, 64, 2, 2**24, kv_int8_text=ids)
    made = onnx.load(str(engine.decoder_path), load_external_data=False).metadata_props
    assert {p.key: p.value for p in made}[kv_int8.SOURCE] == kv_int8.digest(decoder)


def test_a_cache_that_costs_too_much_stays_float(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maas.handlers import llm_engine

    monkeypatch.setattr(llm_engine.kv_int8, "MAX_KL", -1.0)  # every copy costs more than that
    engine = BatchEngine(archive, 2, 64, 2, 2**24, kv_int8_text=calibration(archive))
    assert engine.cache[0].dtype == np.float32 and engine.kv_int8_kl is None
    assert engine.decoder_path.name == "batch_decoder.onnx" and not list(archive.glob("*kv_int8*.onnx"))
    assert engine.prefill("a", PROMPTS[0]).shape == (engine.session.get_outputs()[0].shape[-1],)


def test_the_handler_serves_an_int8_cache_with_the_same_tokens_alone_and_among_others(archive: Path) -> None:
    bodies = [{"prompt": p, "max_tokens": 16, "temperature": 0} for p in ("The pump", "Bearing 7 at", "x")]
    bodies += [{"prompt": f"Valve {i} reports", "max_tokens": 12, "temperature": 0.9, "seed": i} for i in range(3)]

    def texts(stagger: int) -> list[str]:
        calls = [Call(body, joins=stagger * i) for i, body in enumerate(bodies)]
        handler, context = handler_for(archive, kv_cache_int8=True)
        assert handler.engine.cache[0].dtype == np.int8
        run_steps(handler, context, calls)
        assert all(call.status == 200 for call in calls)
        return [call.text() for call in calls]

    alone = texts(stagger=30)
    assert all(alone) and texts(stagger=0) == alone


def test_key_scales_cover_both_channels_of_a_rotary_pair() -> None:
    from onnx import helper, numpy_helper

    cos = numpy_helper.from_array(np.zeros((16, 4), np.float32), "cos")  # rotary over 8 channels: pairs (i, i + 4)
    node = helper.make_node("GroupQueryAttention", ["q", "", "", "pk", "pv", "s", "t", "cos", "sin"], ["o", "k", "v"],
                            domain="com.microsoft", num_heads=2, kv_num_heads=1, do_rotary=1)
    graph = helper.make_graph([node], "g", [], [], [cos])
    key = np.zeros((1, 3, 8), np.float32)
    key[0, 0, 1], key[0, 0, 5] = 3.0, 4.0  # one position: channel 1 at 3, its pair (5) at 4 -> norm 5
    value = np.full((1, 3, 8), 2.0, np.float32)
    key_scale, value_scale = kv_int8.scales(graph, [key, value])
    assert key_scale.shape == (1, 1, 1, 8)
    np.testing.assert_allclose(key_scale[0, 0, 0, [1, 5]] * 127 / kv_int8.MARGIN, [5.0, 5.0], rtol=1e-6)
    np.testing.assert_allclose(value_scale * 127 / kv_int8.MARGIN, 2.0, rtol=1e-6)


def test_an_engine_that_cannot_take_it_says_so(archive: Path, caplog: pytest.LogCaptureFixture) -> None:
    handler, _ = handler_for(archive, engine="generator", kv_cache_int8=True)
    assert handler.engine.kind == "generator"
    assert "kv_cache_int8 applies to the batch engine on CPU" in caplog.text
