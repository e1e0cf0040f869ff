"""Open Inference Protocol (KServe v2) against the real TorchServe, with Triton's own client."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import tritonclient.http as httpclient

from maas.export.zoo import maintenance as m
from maas.export.zoo import minilm as minilm_model


def client_and_headers(server):
    url = server.endpoints.inference.split("://", 1)[1]
    return httpclient.InferenceServerClient(url=url), {"Authorization": f"Bearer {server.client.fresh_key('inference')}"}


def infer(server, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    client, headers = client_and_headers(server)
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(n, binary_data=False) for n in outputs]
    result = client.infer(model, inputs, outputs=requested, headers=headers)
    return {n: result.as_numpy(n) for n in outputs}


def test_health_and_server_metadata(server) -> None:
    client, headers = client_and_headers(server)
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    base = server.endpoints.inference
    # Not served by TorchServe 0.12 (documented): model metadata and model readiness.
    assert requests.get(f"{base}/v2/models/maintenance", headers=headers, timeout=10).status_code == 404


def test_v2_tritonclient_matches_the_json_api_and_survives_batching(server) -> None:
    records = m.generate(24, seed=4)
    feats = records.features()
    expected = [server.client.predict_json("maintenance", records.as_json(i))["failure_probability"] for i in range(24)]
    # 24 concurrent single-row v2 requests: TorchServe batches them (batchSize 16); each gets its own answer.
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: infer(server, "maintenance", {"features": feats[i:i + 1]},
                                            ["failure_probability"])["failure_probability"][0], range(24)))
    json_feats = np.array([[1.0 if records.as_json(i)["type"] == t else 0.0 for t in m.PRODUCT_TYPES]
                           + [records.as_json(i)[f] for f in m.NUMERIC_FIELDS] for i in range(24)], dtype=np.float32)
    rounded = [infer(server, "maintenance", {"features": json_feats[i:i + 1]}, ["failure_probability"])
               ["failure_probability"][0] for i in range(3)]
    assert np.allclose(rounded, expected[:3], atol=1e-6)  # same inputs as the JSON API -> same answers
    whole = infer(server, "maintenance", {"features": feats}, ["failure_probability", "mode_probabilities"])
    assert np.allclose(got, whole["failure_probability"], atol=1e-6) and whole["mode_probabilities"].shape == (24, 5)


def test_v2_minilm_matches_the_json_api(server) -> None:
    texts = ["The spindle bearing is overheating.", "Ça coûte 12,50 €"]
    tokens = minilm_model.encode(texts)
    out = infer(server, "minilm", tokens, ["sentence_embedding"])["sentence_embedding"]
    served = np.array(server.client.predict_json("minilm", {"texts": texts})["embeddings"])
    assert out.shape == (2, 384) and np.allclose(out, served, atol=1e-5)


def test_bad_v2_request_is_a_4xx_error(server) -> None:
    _, headers = client_and_headers(server)
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [float("nan")] * 8}]}
    resp = requests.post(f"{server.endpoints.inference}/v2/models/maintenance/infer", headers=headers, timeout=10,
                         data=json.dumps(body, allow_nan=True))
    assert resp.status_code == 400 and "finite" in resp.json()["error"]
