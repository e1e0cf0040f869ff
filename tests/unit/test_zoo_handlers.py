"""digits and minilm handlers with a fake TorchServe context."""
from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ort_base import InputError
from PIL import Image

from conftest import call, load_handler, png
from maas.export.zoo import digits as digits_model
from maas.export.zoo import minilm as minilm_model


@pytest.fixture(scope="module")
def digits_handler(tiny_models, tmp_path_factory):
    return load_handler(tiny_models["digits"], tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def minilm_handler(tiny_models, tmp_path_factory):
    return load_handler(tiny_models["minilm"], tmp_path_factory.mktemp("minilm"))


# ---- digits -------------------------------------------------------------------------
def test_digits_json_pixels_give_top5_like_onnx_runtime(digits_handler, tiny_models) -> None:
    x_tr, y_tr, x_te, y_te = digits_model._split(*digits_model._arrays(), 0)
    bodies = [json.dumps({"pixels": x_te[i, 0].astype(int).tolist()}).encode() for i in range(30)]
    answers, ctx = call(digits_handler, *bodies)
    probs = ort.InferenceSession(str(tiny_models["digits"].build_dir / "model.onnx")).run(None, {"pixels": x_te[:30]})[0]
    for answer, p in zip(answers, probs):
        assert list(answer) == [str(i) for i in np.argsort(-p, kind="stable")[:5]]
        assert list(answer.values()) == sorted(answer.values(), reverse=True)
    assert ctx.status == {}


@pytest.mark.parametrize("fmt,mode,dark_ink,scale", [("PNG", "L", True, 12), ("JPEG", "RGB", True, 20),
                                                     ("PNG", "RGBA", True, 5), ("PNG", "L", False, 8)])
def test_digits_images_become_the_scans_they_show(digits_handler, fmt, mode, dark_ink, scale) -> None:
    """An upscaled scan in any ink, mode or format is read back as (nearly) the 8x8 grid it
    came from: the answer is the one for the grid sent as JSON pixels."""
    grids = [digits_model._arrays()[0][i, 0] for i in range(12)]
    from_images, ctx = call(digits_handler, *[png(g, scale, fmt, mode, dark_ink) for g in grids])
    from_pixels, _ = call(digits_handler, *[json.dumps({"pixels": g.astype(int).tolist()}).encode() for g in grids])
    assert ctx.status == {}
    for image_answer, pixel_answer in zip(from_images, from_pixels):
        assert next(iter(image_answer)) == next(iter(pixel_answer))
        assert np.allclose(list(image_answer.values()), list(pixel_answer.values()), atol=0.02)


GRID = [[0] * 8 for _ in range(8)]
DIGIT_BAD = [
    (b"GIF89a\x01\x00\x01\x00", None, "neither a PNG/JPEG image nor JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image", "could not be decoded"),
    (json.dumps({"pixels": GRID[:7]}).encode(), "pixels", "8 rows of 8"),
    (json.dumps({"pixels": [[0] * 9] * 8}).encode(), "pixels", "8 rows of 8"),
    (json.dumps({"pixels": [[17] + [0] * 7] + GRID[1:]}).encode(), "pixels[0][0]", "outside the accepted range"),
    (json.dumps({"pixels": [[-1] + [0] * 7] + GRID[1:]}).encode(), "pixels[0][0]", "outside the accepted range"),
    (json.dumps({"pixels": [["x"] + [0] * 7] + GRID[1:]}).encode(), "pixels[0][0]", "must be a number"),
    (json.dumps({"image": "abc"}).encode(), "pixels", "send a PNG/JPEG image"),
    (json.dumps({"pixels": GRID, "extra": 1}).encode(), "extra", "unknown field"),
]


@pytest.mark.parametrize("body,field,problem", DIGIT_BAD, ids=[f"bad{i}" for i in range(len(DIGIT_BAD))])
def test_digits_bad_input_is_400(digits_handler, body, field, problem) -> None:
    (answer,), ctx = call(digits_handler, body)
    assert ctx.status[0][0] == 400 and problem in answer["message"] and answer.get("field") == field


def test_truncated_image_is_400(digits_handler) -> None:
    whole = png(np.full((8, 8), 8.0))
    (answer,), ctx = call(digits_handler, whole[: len(whole) // 2])
    assert ctx.status[0][0] == 400 and answer["field"] == "image"


def test_decompression_bomb_is_refused(digits_handler) -> None:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000), 255).save(buf, format="PNG")  # 25 M pixels, a few KB compressed
    (answer,), ctx = call(digits_handler, buf.getvalue())
    assert ctx.status[0][0] == 413 and "pixels are accepted" in answer["message"]


# ---- minilm -------------------------------------------------------------------------
def test_minilm_single_batched_and_plain_text_agree(minilm_handler, tiny_models) -> None:
    """One sentence per request, all in one, or as text/plain: the same vectors, equal to ONNX
    Runtime on the archive's file (closeness to sentence-transformers needs the real weights:
    tests/integration/test_trained_zoo.py)."""
    texts = minilm_model.SENTENCES
    session = ort.InferenceSession(str(tiny_models["minilm"].build_dir / "model.onnx"))
    reference = np.concatenate([session.run(None, minilm_model.encode([t]))[0] for t in texts])
    singles, ctx = call(minilm_handler, *[json.dumps({"text": t}).encode() for t in texts])
    (batched,), _ = call(minilm_handler, json.dumps({"texts": texts}).encode())
    (plain,), _ = call(minilm_handler, texts[0])  # text/plain arrives as str
    single = np.array([a["embedding"] for a in singles])
    assert single.shape == (len(texts), minilm_model.EMBEDDING_DIM)
    assert np.allclose(single, reference, atol=1e-4) and np.allclose(batched["embeddings"], reference, atol=1e-4)
    assert np.allclose(plain["embedding"], single[0], atol=1e-6)
    assert ctx.status == {}


MINILM_BAD = [
    (json.dumps({}).encode(), "text", 400, "exactly one"),
    (json.dumps({"text": 5}).encode(), "text", 400, "must be a string"),
    (json.dumps({"texts": "abc"}).encode(), "texts", 400, "must be a list"),
    (json.dumps({"texts": []}).encode(), "texts", 400, "empty list"),
    (json.dumps({"texts": ["a", None]}).encode(), "texts[1]", 400, "must be a string"),
    (json.dumps({"texts": ["a"] * 1000}).encode(), "texts", 413, "the limit is 64"),
    (json.dumps({"text": "a", "texts": ["b"]}).encode(), "text", 400, "exactly one"),
    (json.dumps({"text": "x" * 200_000}).encode(), "text", 413, "characters"),
    (json.dumps(["a"]).encode(), None, 400, "body must be"),
    (b"{broken", None, 400, "not valid JSON"),
]


@pytest.mark.parametrize("body,field,status,problem", MINILM_BAD, ids=[f"bad{i}" for i in range(len(MINILM_BAD))])
def test_minilm_bad_input(minilm_handler, body, field, status, problem) -> None:
    (answer,), ctx = call(minilm_handler, body)
    assert ctx.status[0][0] == status and problem in answer["message"] and answer.get("field") == field


def test_minilm_batch_pads_to_its_longest_sequence(minilm_handler) -> None:
    items = [minilm_handler.preprocess(json.dumps({"text": t}).encode())[0] for t in ("a", "a much longer sentence here")]
    batch = minilm_handler.collate(items)
    assert batch["input_ids"].shape == (2, items[1]["input_ids"].shape[1])
    assert batch["attention_mask"][0].sum() == items[0]["input_ids"].shape[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                            lambda c: st.lists(c, max_size=4)
                            | st.dictionaries(st.sampled_from(["text", "texts", "pixels", "x"]), c, max_size=3),
                            max_leaves=20) | st.binary(max_size=64))
def test_zoo_preprocess_raises_only_input_error(digits_handler, minilm_handler, payload) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    for handler in (digits_handler, minilm_handler):
        try:
            handler.preprocess(body)
        except InputError as err:
            assert 400 <= err.status < 500


def test_a_thin_wide_image_costs_its_pixels_not_its_width_squared() -> None:
    """A line across a 20000x800 page (within the 16 M-pixel limit) was padded to a 20000-pixel square
    before averaging: 1.6 GB, the digits worker's whole memory. The ink is averaged down first."""
    import tracemalloc

    from image_input import to_digit_grid

    page = np.full((800, 20000), 255.0, np.float32)
    page[399:402] = 0.0
    tracemalloc.start()
    grid = to_digit_grid(page)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 400e6, peak  # the page is 64 MB; its square would be 1600
    assert grid.shape == (8, 8) and grid[3:5].max() > 0 and grid[0].max() == grid[7].max() == 0
