"""digits and minilm served by the real TorchServe: equal to in-process, batched = single, 4xx on bad input."""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from maas.export.zoo import digits as digits_model
from maas.export.zoo import minilm as minilm_model


def worker_pid(server, model: str) -> int:
    return server.client.describe(model)[0]["workers"][0]["pid"]


def test_digits_served_top5_identical_to_in_process(server, built_models) -> None:
    x_tr, y_tr, x_te, y_te = digits_model._split(*digits_model._arrays(), 0)
    bodies = [{"pixels": x_te[i, 0].astype(int).tolist()} for i in range(40)]
    with ThreadPoolExecutor(16) as pool:  # concurrent: TorchServe batches them (batchSize 16)
        batched = list(pool.map(lambda b: server.client.predict_json("digits", b), bodies))
    singles = [server.client.predict_json("digits", b) for b in bodies[:8]]
    probs = ort.InferenceSession(str(built_models["digits"].build_dir / "model.onnx")).run(None, {"pixels": x_te[:40]})[0]
    for answer, p in zip(batched, probs):
        assert list(answer) == [str(i) for i in np.argsort(-p, kind="stable")[:5]]
        assert np.allclose(list(answer.values()), np.sort(p)[::-1][:5], atol=1e-6)
    assert singles == batched[:8]


def test_digits_png_upload(server) -> None:
    grid = digits_model._arrays()[0][3, 0]  # a 3
    buf = io.BytesIO()
    Image.fromarray((255 - np.kron(grid, np.ones((16, 16))) / 16 * 255).astype(np.uint8)).save(buf, format="PNG")
    resp = server.client.predict("digits", buf.getvalue(), "image/png")
    assert resp.status_code == 200 and next(iter(resp.json())) == "3"


def test_minilm_served_matches_sentence_transformers_single_and_batched(server) -> None:
    texts = minilm_model.SENTENCES
    reference = minilm_model.reference_embeddings(texts)
    with ThreadPoolExecutor(8) as pool:  # concurrent single-text requests: padded together in batches
        single = np.array(list(pool.map(lambda t: server.client.predict_json("minilm", {"text": t})["embedding"], texts)))
    batched = np.array(server.client.predict_json("minilm", {"texts": texts})["embeddings"])
    for got in (single, batched):
        cos = np.sum(got * reference, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cos.min() >= 0.9999, cos.min()
    plain = server.client.predict("minilm", texts[0].encode(), "text/plain")
    assert plain.status_code == 200 and np.allclose(plain.json()["embedding"], single[0], atol=1e-6)


@pytest.mark.parametrize("model,body,content_type,status", [
    ("digits", b"not an image", "application/octet-stream", 400),
    ("digits", b"\x89PNG\r\n\x1a\ntruncated", "image/png", 400),
    ("digits", json.dumps({"pixels": [[20] * 8] * 8}).encode(), "application/json", 400),
    ("digits", json.dumps({"pixels": [[0] * 8] * 7}).encode(), "application/json", 400),
    ("minilm", json.dumps({"texts": []}).encode(), "application/json", 400),
    ("minilm", json.dumps({"text": ["nested"]}).encode(), "application/json", 400),
    ("minilm", json.dumps({"texts": ["t"] * 1000}).encode(), "application/json", 413),
    ("minilm", b"{nope", "application/json", 400),
])
def test_zoo_bad_input_gets_4xx_and_the_worker_keeps_serving(server, model, body, content_type, status) -> None:
    before = worker_pid(server, model)
    resp = server.client.predict(model, body, content_type)
    assert resp.status_code == status and resp.json()["code"] == status and resp.json()["message"]
    assert worker_pid(server, model) == before

