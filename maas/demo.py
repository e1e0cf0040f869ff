"""`maas demo`: the whole road in one go, on the zoo and on one model no one here wrote.

Builds the zoo, packages Google's Magika file-type model (the .onnx inside the `magika` wheel
on PyPI) with `maas package`, trains a small language model on maintenance notes and packages it
with `maas package --llm`, serves everything, sends real requests (one short line each), streams
the language model's answer through the OpenAI client, load-tests every model and prints one
table of the results and where the reports are.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from maas.core.summary import clip, error_line, request_line
from maas.gate import generation_line

MAGIKA = ("magika", "1.0.3", "magika/models/standard_v3_3")  # package, version, model folder in the wheel
MAGIKA_SPEC = """\
name: magika
description: Google's Magika file-type detection (standard_v3_3), from the magika wheel on PyPI
inputs:
  - name: bytes
    dtype: int32
    shape: [batch, 2048]
    range: [0, 256]
    description: the first and last 1024 bytes of a file, padded with 256
outputs:
  - {name: target_label, dtype: float32, shape: [batch, 214], labels: magika_labels.txt, top_k: 3}
serving: {batch_size: 16, max_batch_delay_ms: 5, workers: 1}
"""


def magika_files(into: Path) -> tuple[Path, Path]:
    """(model.onnx, maas.yaml with its labels file beside it), from the magika wheel (pip download)."""
    from maas.thirdparty import wheel_files

    model, config = wheel_files(MAGIKA[0], MAGIKA[1], [f"{MAGIKA[2]}/model.onnx", f"{MAGIKA[2]}/config.min.json"], into)
    labels = json.loads(config.read_text())["target_labels_space"]
    (into / "magika_labels.txt").write_text("\n".join(labels) + "\n")
    spec = into / "magika.yaml"
    spec.write_text(MAGIKA_SPEC)
    return model, spec


def magika_request(data: bytes) -> dict[str, Any]:
    """Magika's input for a file: its first and last 1024 bytes, each side padded with 256."""
    begin, end = list(data[:1024]), list(data[-1024:])
    return {"inputs": {"bytes": begin + [256] * (1024 - len(begin)) + [256] * (1024 - len(end)) + end}}


def request_rows(server: Any, model_store: Path, models: list[str],
                 extra: dict[str, list[tuple[str, bytes, str]]]) -> list[str]:
    """Send each model's demo requests; one line per request: model, input, answer, status, time."""
    from maas.core.store import archive_manifest, find_archive
    from maas.export.clients import client_for

    lines = []
    for model in models:
        client = client_for(model, model_store)
        example = archive_manifest(find_archive(model_store, model, None)).get("example_request")
        requests = [("the manifest's example", json.dumps(example).encode(), "application/json")] if example else []
        requests += client.demo_requests(example) + extra.get(model, [])
        for _title, body, content_type in requests:
            started = time.perf_counter()
            resp = server.client.predict(model, body, content_type)
            ms = (time.perf_counter() - started) * 1000
            try:
                answer = resp.json()
            except ValueError:
                answer = resp.text
            said = client.answer_summary(answer) if resp.status_code == 200 else error_line(resp.status_code, answer)
            lines.append(f"{model:<12} {request_line(body, content_type, 48):<48} -> {clip(said, 90)}  ({ms:.0f} ms)")
    return lines


def grpc_rows(server: Any, model_store: Path, models: list[str]) -> list[str]:
    """Each model's manifest example over TorchServe's gRPC API, beside the HTTP answer to it."""
    from maas.core.store import archive_manifest, find_archive
    from maas.grpc_client import GrpcInference

    lines = []
    with GrpcInference.for_server(server) as client:
        client.ping()  # the channel's connection, not the first model, pays the set-up
        for model in models:
            example = archive_manifest(find_archive(model_store, model, None)).get("example_request")
            if example is None:
                continue
            body = json.dumps(example).encode()
            started = time.perf_counter()
            over_grpc = json.loads(client.predict(model, body))
            ms = (time.perf_counter() - started) * 1000
            over_http = server.client.predict(model, body).json()
            same = _rounded(over_grpc) == _rounded(over_http)
            lines.append(f"{model:<12} the manifest's example -> {'the same answer as over HTTP' if same else 'DIFFERENT from HTTP'}"
                         f"  ({ms:.0f} ms)")
    return lines


def _rounded(value: Any) -> Any:
    """JSON with floats to 5 places: two calls may be batched with different neighbours."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def notes_model(project: Any, echo: Callable[[str], None]) -> str:
    """The demo's language model in the store: trained (about two minutes) and packaged once."""
    from maas.export.llm_build import LlmOptions, package_llm, summary_lines
    from maas.export.notes_llm import NAME, train

    if (project.model_store / NAME).is_dir():
        echo(f"language model {NAME}: in the store already (remove {project.model_store / NAME} to train it again)")
        return NAME
    echo(f"training {NAME}: a 0.8M-parameter Llama learns maintenance notes written from the maintenance "
         "records (about 1.5 minutes; it writes their style, its numbers are not to be trusted)")
    folder = project.build_dir / f"{NAME}-hf"
    facts = train(folder)
    echo(f"trained in {facts['seconds']:.0f} s, final loss {facts['final_loss']:.2f}; packaging it with "
         f"`maas package --llm {folder}`")
    result = package_llm(LlmOptions(folder, name=NAME), project.build_dir, project.model_store)
    for line in summary_lines(result.path, result.manifest):
        echo(line)
    return NAME


def stream_answer(server: Any, model: str, echo: Callable[[str], None]) -> None:
    """The language model's answer, streamed to the terminal through the official OpenAI client."""
    import openai

    from maas.export.notes_llm import DEMO_QUESTION

    base_url = f"{server.endpoints.inference}/predictions/{model}/1.0/v1"
    client = openai.OpenAI(base_url=base_url, api_key=server.client.fresh_key("inference") or "none", max_retries=0)
    echo(f"\nstreaming from {model} through the OpenAI client (base_url {base_url}, api_key: the inference key):")
    echo(f"  user: {DEMO_QUESTION}")
    sys.stdout.write("  assistant: ")
    started, first = time.perf_counter(), None
    tokens = 0
    for part in client.chat.completions.create(model=model, messages=[{"role": "user", "content": DEMO_QUESTION}],
                                               max_tokens=80, temperature=0, stream=True,
                                               stream_options={"include_usage": True}):
        if part.usage:
            tokens = part.usage.completion_tokens
        text = part.choices[0].delta.content if part.choices else None
        if text:
            first = first or time.perf_counter()
            sys.stdout.write(text)
            sys.stdout.flush()
    total = time.perf_counter() - started
    echo(f"\n  ({tokens} tokens in {total * 1000:.0f} ms, first after {((first or started) - started) * 1000:.0f} ms)")


def load_table(summaries: list[tuple[dict[str, Any], Path]]) -> str:
    """One row per load test: throughput, latency percentiles, errors, restarts, gate."""
    head = f"{'MODEL':<12} {'REQ/S':>7} {'P50 MS':>7} {'P95 MS':>7} {'P99 MS':>7} {'ERRORS':>7} {'RESTARTS':>8}  GATE"
    rows = [head] + [f"{s['model']:<12} {s['rps']:>7.1f} {s['p50_ms']:>7.1f} {s['p95_ms']:>7.1f} {s['p99_ms']:>7.1f} "
                     f"{s['failures']:>7d} {s.get('worker_restarts', 0):>8}  {'PASS' if s['passed'] else 'FAIL'}"
                     for s, _ in summaries]
    rows += [f"{s['model']:<12} {generation_line(s['generation'])}" for s, _ in summaries if s.get("generation")]
    return "\n".join(rows)


def serve_and_show(project: Any, run_time: int, echo: Callable[[str], None]) -> None:
    """After the zoo is built: package Magika, start the project's TorchServe, send each model its
    example requests over HTTP and gRPC, load-test each for `run_time` s, stop the server."""
    from maas import loadtest as lt
    from maas.export import zoo
    from maas.export.package import PackageOptions, package_model
    from maas.grpc_client import grpc_target
    from maas.slo import slo_for
    from maas.status_table import server_summary

    echo("packaging a model no one here wrote: Magika (its .onnx from the magika wheel on PyPI)")
    model_file, spec = magika_files(project.build_dir / "third-party")
    made = package_model(PackageOptions(onnx=model_file, spec_file=spec), project.build_dir, project.model_store)
    echo(f"packaged {made.mar}")
    llm = notes_model(project, echo)
    models = [*zoo.models(), made.name, llm]
    server = project.server()
    if server.is_running():
        echo("stopping the TorchServe already running from this project")
        server.stop()
    server.start()
    try:
        echo(server_summary(server))
        here = Path(__file__)
        extra = {"magika": [(f"{p.name} ({p.stat().st_size // 1024} kB)", json.dumps(magika_request(p.read_bytes())).encode(),
                             "application/json") for p in (here, here.parent / "templates" / "config.properties")]}
        echo(f"\nrequests ({server.endpoints.inference}/predictions/MODEL, token from {server.client.key_file}):")
        for line in request_rows(server, project.model_store, models, extra):
            echo(line)
        echo(f"\nthe same over gRPC ({grpc_target(server.props)}, the same key; `maas predict --grpc`):")
        for line in grpc_rows(server, project.model_store, models):
            echo(line)
        stream_answer(server, llm, echo)
        slos = {model: slo_for(model, None, project.root, run_time_s=run_time) for model in models}
        lt.ready_for_load(server, sum(s.warmup_s + s.run_time_s + 10 for s in slos.values()))
        renew = (lambda: server.client.fresh_key("inference")) if server.client.key_file else None
        summaries = [lt.run(lt.LoadTest(model, slo, model_store=project.model_store), server.endpoints.inference,
                            server.client.key_file, project.reports_dir, {}, renew, worker_restarts=server.worker_restarts)
                     for model, slo in slos.items()]
        echo(f"\nload tests ({run_time} s each after warm-up, closed loop):")
        echo(load_table(summaries))
        echo(f"reports: {project.reports_dir}/ (per run: summary.json, report.html, throughput_latency.png; "
             f"{llm}'s also generation.png: time to first token, inter-token latency, tokens/s)")
    finally:
        server.stop()
        echo("TorchServe stopped")
