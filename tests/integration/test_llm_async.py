"""The language-model archive with TorchServe's asynchronous worker (model-config.yaml
`asyncCommunication: true`, handlers/llm_async.py): the engine steps on its own thread and each
stream's events go out while the next step runs. Same answers as in process and as the default
continuous batching: alone, among 8 concurrent streams, streamed or whole; refusals are the same
OpenAI errors and disturb nothing."""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from test_llm_serving import in_process_greedy

from conftest import LLM, bare_server
from maas import deploy as d


@pytest.fixture(scope="module")
def llm_async(tmp_path_factory: pytest.TempPathFactory, llm_archive: Path):
    """The session's tiny Llama, its model-config.yaml switched to the asynchronous worker."""
    store = tmp_path_factory.mktemp("llm_async_store")
    folder = store / llm_archive.name
    shutil.copytree(llm_archive, folder)
    config = yaml.safe_load((folder / "model-config.yaml").read_text())
    config.update(asyncCommunication=True, continuousBatching=False, batchSize=1)
    (folder / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ts = bare_server(tmp_path_factory, store)
    try:
        d.deploy(ts.client, store, LLM)
        yield ts, folder
    finally:
        ts.stop()


def post(ts, route: str, body: dict, stream: bool = False) -> requests.Response:
    return requests.post(f"{ts.endpoints.inference}/predictions/{LLM}/1.0/v1/{route}", json=body, stream=stream,
                         headers={"Authorization": f"Bearer {ts.client.fresh_key('inference')}"}, timeout=120)


def streamed_text(ts, body: dict) -> str:
    import json

    text = ""
    with post(ts, "completions", {**body, "stream": True}, stream=True) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    for line in lines[:-1]:
        text += "".join(c.get("text") or "" for c in json.loads(line[6:])["choices"])
    return text


def test_streams_and_whole_answers_equal_in_process_greedy(llm_async) -> None:
    ts, folder = llm_async
    for prompt in ("The pump reports", "torque"):
        expected, _ = in_process_greedy(folder, prompt, 24)
        body = {"prompt": prompt, "max_tokens": 24, "temperature": 0}
        whole = post(ts, "completions", body)
        assert whole.json()["choices"][0]["text"] == expected
        # sent as a one-chunk stream: TorchServe's async frontend forgets only requests whose stream ended
        assert whole.headers.get("Transfer-Encoding") == "chunked"
        assert streamed_text(ts, body) == expected
    models = requests.get(
        f"{ts.endpoints.inference}/predictions/{LLM}/1.0/v1/models",
        headers={"Authorization": f"Bearer {ts.client.fresh_key('inference')}"}, timeout=60).json()
    assert [m["id"] for m in models["data"]] == [LLM]


def test_eight_concurrent_streams_get_what_each_gets_alone_and_a_refusal_disturbs_none(llm_async) -> None:
    ts, _ = llm_async
    bodies = [{"prompt": f"Pump {i} at", "max_tokens": 30 + 5 * i, "temperature": 0.8, "seed": i} for i in range(8)]
    alone = [streamed_text(ts, b) for b in bodies]
    with ThreadPoolExecutor(9) as pool:
        crowded = [pool.submit(streamed_text, ts, b) for b in bodies]
        time.sleep(0.2)
        refused = post(ts, "completions", {"prompt": "The", "temperature": "hot"})
        assert [f.result() for f in crowded] == alone
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "temperature"
    log_text = (ts.layout.log_dir / "model_log.log").read_text(errors="replace")
    assert "handle_connection_async" in log_text  # TorchServe's asynchronous worker ran it, not continuous batching
    assert "engine loop step failed" not in log_text


def test_grpc_answers_whole_and_its_refusals_as_over_http(llm_async) -> None:
    """gRPC's StreamPredictions gets the same events in one answer (marked last, so the async frontend
    forgets it), and a refusal as INVALID_ARGUMENT; the worker serves on."""
    import json

    from maas.grpc_client import GrpcCallError, GrpcInference

    ts, folder = llm_async
    expected, _ = in_process_greedy(folder, "The pump reports", 12)
    body = json.dumps({"prompt": "The pump reports", "max_tokens": 12, "temperature": 0, "stream": True}).encode()
    with GrpcInference.for_server(ts) as client:
        events = b"".join(client.stream_predict(LLM, body)).split(b"\n\n")
        with pytest.raises(GrpcCallError, match="INVALID_ARGUMENT.*prompt is empty"):
            list(client.stream_predict(LLM, b'{"prompt": ""}'))
    assert events[-2] == b"data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events if e.startswith(b"data: {")) == expected
    assert streamed_text(ts, {"prompt": "torque", "max_tokens": 4, "temperature": 0})



def test_a_version_with_mistaken_settings_fails_to_deploy_naming_them(llm_async) -> None:
    """A typo in model-config.yaml's handler: block is refused when the worker loads, and `maas
    deploy` quotes the worker's one-line reason (read from model_log.log) after TorchServe's retries,
    not a bare failure; the good version serves on. (In the asynchronous mode TorchServe never
    reports a failed load: tests/unit/test_deploy_retry.py, docs/how-to/language-models.md.)"""
    import json

    ts, folder = llm_async
    bad = folder.parent / f"{LLM}-bad"
    shutil.copytree(folder, bad)
    manifest = json.loads((bad / "MAR-INF" / "MANIFEST.json").read_text())
    manifest["model"]["modelVersion"] = "1.0-bad"
    (bad / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    config = yaml.safe_load((bad / "model-config.yaml").read_text())
    config.update(asyncCommunication=False, continuousBatching=True,
                  handler={**config.get("handler", {}), "max_stream": 4, "prefill_chunk_tokens": "lots"})
    (bad / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(d.ServeError, match=r"workers failed to load 3 times: llm_settings.SettingsError: .*"
                                           r"prefill_chunk_tokens must be an integer.*unknown setting 'max_stream'"):
        d.deploy(ts.client, ts.layout.model_store, LLM, "1.0-bad", timeout=60, log_dir=ts.layout.log_dir)
    assert streamed_text(ts, {"prompt": "torque", "max_tokens": 4, "temperature": 0})  # 1.0 serves on
