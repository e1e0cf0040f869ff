"""`maas bench --llm FOLDER`: a language model served by maas, measured against the machine's limit.

For each precision (fp32, int4 by default) the folder is packaged (`maas package --llm`; kept
archives are reused), registered alone in a bench TorchServe and loaded by Locust's streaming
users at each concurrency: aggregate output tokens per second, p50/p95/p99 time to first token
and inter-token latency, errors. In the same run: the machine's memory read bandwidth and the
bytes of weights each decoded token reads, so single-stream decode is reported as a fraction of
its bound; the worker's memory, start to READY, and its KV cache; one lever taken away at a time
(batching: one GenAI Generator per stream); and whether batching changes any token (each of 8
prompts decoded alone and among the 8, in process). Writes results.json, report.md, llm.png.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from maas.bench import bench_server, machine_info, worker_rss_mb
from maas.compute_bound import INT4_KERNEL_BLOCK, gemm_peak_gmacs, int4_kernel_gmacs, macs_per_token
from maas.core.machine import cores
from maas.export.llm_build import ASYNC_SERVING
from maas.loadtest import LoadTest
from maas.loadtest import run as run_locust
from maas.slo import SLO, Thresholds

log = logging.getLogger(__name__)
MODEL = "bench-llm"
PEER = "bench-llm-peer"
PEER_LABEL = "peer: transformers generate (stock handler, fp32)"
LEVER_INT4_BLOCKS = (128, 32)  # the int4 block-size lever: maas's CPU default is 256, the builder's own 32
PARITY_PROMPTS = ("Machine M-1042 (type L):", "The spindle bearing", "Write a maintenance note for pump 7.")


@dataclass(frozen=True)
class LlmPlan:
    source: Path
    precisions: tuple[str, ...] = ("fp32", "int4")
    users: tuple[int, ...] = (1, 4, 8, 16)
    run_time_s: int = 20
    warmup_s: int = 5
    levers: bool = True
    peer: bool = True  # transformers generate in a stock TorchServe handler (maas/peer_handlers)
    llama_cpp: Path | None = None  # a cache folder: llama.cpp's server built there is the second peer
    max_kl: float | None = None  # accept a quantized build over its budget (random weights)
    rounds: int = 1  # every configuration served this many times, in turn; each row is its fastest round


@dataclass
class LlmResult:
    machine: dict[str, Any]
    plan: dict[str, Any]
    bandwidth_gbs: float = 0.0
    gemm_peak_gmacs: dict[str, float] = field(default_factory=dict)  # ONNX Runtime's own GEMMs: int8, fp32
    int4_kernel_gmacs: dict[int, float] = field(default_factory=dict)  # its int4 kernel, by rows (1, 8)
    int4_vnni_gmacs: dict[int, float] = field(default_factory=dict)  # handlers/int4_vnni.c's, where it runs
    builds: dict[str, Any] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    invariance: dict[str, Any] = field(default_factory=dict)
    step_costs: dict[str, Any] = field(default_factory=dict)
    peer_parity: dict[str, Any] = field(default_factory=dict)
    llama_cpp_parity: dict[str, Any] = field(default_factory=dict)


def memory_bandwidth_gbs(megabytes: int = 1024, rounds: int = 7) -> float:
    """Read bandwidth of this machine's memory, the best of `rounds` of two readers of an array far
    larger than the caches: every core summing its share (NumPy releases the GIL), and a
    matrix-vector product (BLAS, the access pattern of a decode step)."""
    data = np.ones(megabytes * 2**20 // 4, np.float32)
    parts = np.array_split(data, cores())
    matrix, vector = data.reshape(4096, -1), np.ones(4096, np.float32)

    def summed() -> None:
        threads = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    best = 0.0
    for _ in range(rounds):
        for read in (summed, lambda: vector @ matrix):
            started = time.perf_counter()
            read()
            best = max(best, data.nbytes / (time.perf_counter() - started) / 1e9)
    return round(best, 1)


def weight_bytes(folder: Path) -> int:
    """What one decode step reads at least: the decoder's ONNX graph and its external weights (the
    graph the engine runs: model.onnx or its one-position copy, not both)."""
    from maas.handlers.llm_engine import BATCH_DECODER

    graph = BATCH_DECODER if (folder / BATCH_DECODER).is_file() else "model.onnx"
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(".onnx.data") or p.name == graph)


def stale(folder: Path, quantizations: list[dict[str, int]]) -> bool:
    """Whether a kept archive was packaged with other handler files, settings or a quantization not among these."""
    from maas.export.archive import HANDLERS_DIR
    from maas.handlers.llm_settings import DEFAULT_SETTINGS

    config = yaml.safe_load((folder / "model-config.yaml").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    return config.get("handler") != DEFAULT_SETTINGS or manifest.get("quantization", {}) not in quantizations or any(
        (HANDLERS_DIR / p.name).read_bytes() != p.read_bytes() for p in folder.glob("*.py") if (HANDLERS_DIR / p.name).is_file())


def build_specs(plan: LlmPlan) -> list[tuple[str, str, int | None]]:
    """(key, precision, int4 block size) of every build: the precisions asked, and with the levers
    int4 at smaller blocks than maas's CPU default (export/llm_build.py INT4_BLOCK_ORDER)."""
    specs: list[tuple[str, str, int | None]] = [(p, p, None) for p in plan.precisions]
    if plan.levers and "int4" in plan.precisions:
        specs += [(f"int4, blocks of {block}", "int4", block) for block in LEVER_INT4_BLOCKS]
    return specs


def build(plan: LlmPlan, store: Path, work: Path) -> dict[str, Any]:
    from maas.export.llm_build import LlmOptions, package_llm, quantization_choices

    builds = {}
    for key, precision, block in build_specs(plan):
        version = f"1.0-{precision}" + (f"-b{block}" if block else "")
        folder = store / f"{MODEL}-{version}"
        if not (folder / "manifest.json").is_file() or stale(folder, quantization_choices(precision, "cpu", block)):
            log.info("bench: packaging %s at %s ...", plan.source, key)
            package_llm(LlmOptions(plan.source, MODEL, version, precision, "cpu", max_kl=plan.max_kl,
                                   int4_block_size=block), work, store)
        manifest = json.loads((folder / "manifest.json").read_text())
        builds[key] = {"version": version, "folder": str(folder), "weight_bytes": weight_bytes(folder),
                       "macs_per_token": macs_per_token(folder),
                       "quantization": manifest.get("quantization"), "parity": manifest.get("parity"),
                       "cost": manifest.get("cost"), "context_length": manifest["context_length"]}
    return builds


def build_peer(plan: LlmPlan, store: Path, work: Path) -> dict[str, Any]:
    """The peer's archive: the source folder's weights and tokenizer as they are, its handler, no
    zip (`no-archive`, as maas's own), registered as PEER at our fp32 version so the same load
    test bodies serve both."""
    import subprocess

    from maas.bench_peers import PEER_DIR

    version = "1.0-fp32"
    folder = store / f"{PEER}-{version}"
    if not (folder / "MAR-INF").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        config = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 5, "responseTimeout": 600,
                  "startupTimeout": 600}
        (work / "peer-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        files = [p for p in sorted(plan.source.iterdir()) if p.is_file()]
        staging = store / f".{PEER}-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", PEER, "--version", version,
                        "--handler", str(PEER_DIR / "transformers_llm_peer.py"),
                        "--extra-files", ",".join(map(str, files)), "--config-file", str(work / "peer-config.yaml"),
                        "--archive-format", "no-archive", "--export-path", str(staging), "--force"],
                       check=True, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        (staging / PEER).rename(folder)
        shutil.rmtree(staging, ignore_errors=True)
    return {"label": PEER_LABEL, "precision": "fp32", "version": version, "model": PEER, "handler": {}}


def streamed(url: str, key: str, body: dict[str, Any]) -> tuple[str, list[int] | None]:
    """A streamed completion's text and (asked with return_token_ids) its token ids."""
    import requests

    text, ids = [], None
    with requests.post(url, json={**body, "stream": True}, headers={"Authorization": f"Bearer {key}"}, stream=True,
                       timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith(b"data: {"):
                for choice in json.loads(line[6:]).get("choices") or ():
                    text.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
                    ids = choice.get("token_ids", ids)
    return "".join(text), ids


def peer_parity(ts: Any, version: str) -> dict[str, Any]:
    """Greedy completions of ours (fp32) and the peer's, compared by token id before anything is
    timed (both answer `return_token_ids`). Their text is compared too: random weights emit lone bytes
    of characters that each decoder renders its own way (U+FFFD, or nothing)."""
    key = ts.client.fresh_key("inference")
    equal = same_text = 0
    for prompt in PARITY_PROMPTS:
        body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "return_token_ids": True}
        ours = streamed(f"{ts.endpoints.inference}/predictions/{MODEL}/{version}/v1/completions", key, body)
        theirs = streamed(f"{ts.endpoints.inference}/predictions/{PEER}/{version}/v1/completions", key, body)
        equal += ours[1] is not None and ours[1] == theirs[1]
        same_text += ours[0] == theirs[0]
    return {"prompts": len(PARITY_PROMPTS), "equal": equal, "same_text": same_text, "max_tokens": 24}


def engine_greedy(folder: Path, prompt: str, tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy answer ids) of ours, in process: the tokenizer and engine the handler runs
    (tests/integration/test_llm_engine.py checks them equal to what it serves)."""
    import onnxruntime_genai as og

    from maas.handlers.llm_engine import BatchEngine  # no flat imports: importable from the package

    eos = set(json.loads((folder / "manifest.json").read_text()).get("eos_token_ids") or [])
    ids = [int(t) for t in og.Tokenizer(str(folder)).encode(prompt)]
    engine = BatchEngine(folder, 1, 256, cores(), 2**31)
    out = [int(np.argmax(engine.prefill("p", ids, alone=True)))]
    while len(out) < tokens and out[-1] not in eos:
        out.append(int(np.argmax(engine.prefill("p", [out[-1]], alone=True))))
    return ids, out


def llama_cpp_parity(server: Any, ours: Path | None, source: Path) -> dict[str, Any]:
    """llama.cpp's greedy token ids (GGUF f32) against maas's fp32 build, or where this run built none,
    against `transformers` on the source folder (which an fp32 build equals: maas package checks it)."""
    reference = None
    if ours is None:
        from maas.export.llm_verify import Reference

        reference = Reference.load(source)
    equal = same_prompt = 0
    for prompt in PARITY_PROMPTS:
        if reference is None:
            mine = engine_greedy(ours, prompt, 24)
        else:
            ids = reference.prompt_ids(prompt)
            mine = (ids, reference.greedy(ids, 24))
        theirs = server.greedy_ids(prompt, 24)
        same_prompt += mine[0] == theirs[0]
        equal += mine[1] == theirs[1][: len(mine[1])]
    return {"prompts": len(PARITY_PROMPTS), "equal": equal, "same_prompt_ids": same_prompt, "max_tokens": 24,
            "against": "maas fp32" if reference is None else "transformers at fp32 (no maas fp32 build in this run)"}


def llama_cpp_servers(plan: LlmPlan, result: LlmResult, work: Path, stack: ExitStack) -> list[tuple[dict, Any]]:
    """llama.cpp's server on the same weights, f32 and Q4_0, each started and kept up in `stack` beside
    TorchServe, so that their rounds take turns with ours; f32's greedy tokens checked against ours
    before anything is timed."""
    from maas import llama_cpp_peer
    from maas.properties import free_loopback_ports

    cache = plan.llama_cpp
    assert cache is not None
    files = llama_cpp_peer.convert(plan.source, cache, work / "gguf")
    binaries = llama_cpp_peer.build(cache)
    ours = Path(result.builds["fp32"]["folder"]) if "fp32" in result.builds else None
    servers = []
    for quantization, gguf in files.items():  # started one by one: each holds its port before the next asks
        server = llama_cpp_peer.LlamaServer(binaries, gguf, free_loopback_ports(1)[0], cores(), 8, 1024,
                                            work / f"llama-server-{quantization}.log")
        config: dict[str, Any] = {"label": f"peer: llama.cpp server ({quantization})", "precision": quantization,
                                  "gguf_bytes": gguf.stat().st_size, "command": " ".join(server.command[1:])}
        started = time.perf_counter()
        stack.enter_context(server)
        config["register_to_ready_s"] = round(time.perf_counter() - started, 1)
        if quantization == "f32":
            result.llama_cpp_parity = {**llama_cpp_parity(server, ours, plan.source), "when": "before timing"}
            log.info("bench: llama.cpp f32 greedy vs ours: %s", result.llama_cpp_parity)
        servers.append((config, server))
    return servers


def llama_cpp_round(plan: LlmPlan, result: LlmResult, servers: list[tuple[dict, Any]], store: Path,
                    reports: Path) -> list[dict[str, Any]]:
    """One round of every concurrency on each llama.cpp server."""
    rows = []
    for config, server in servers:
        for users in plan.users:
            slo = SLO(users=users, spawn_rate=float(users), run_time_s=plan.run_time_s, warmup_s=plan.warmup_s,
                      thresholds=Thresholds(max_p95_ms=1e9, max_p99_ms=1e9, max_error_ratio=1.0, min_rps=0.0))
            test = LoadTest(MODEL, slo, version=result.builds[next(iter(result.builds))]["version"],
                            model_store=store, generative=True, payload=MODEL, openai_path="/v1/chat/completions",
                            label=f"llama-cpp-{config['precision'].lower()}-{users}u")
            summary, folder = run_locust(test, server.url, None, reports)  # no key: loopback only
            rows.append(row(config["label"], users, summary, folder))
    return rows


def batch_invariance(folder: Path, prompts: int = 7, tokens: int = 32, invariant: bool = True) -> dict[str, Any]:
    """Greedy tokens of `prompts` prompts decoded together vs each alone in the batch, and vs each
    outside it (the row gRPC's generations run in), with the serving engine (`invariant`: its
    batch_invariant setting). An odd count by default: int4 computes rows in pairs and an odd one
    out apart, which 8 prompts never showed."""
    from maas.handlers.llm_engine import BatchEngine  # no flat imports: importable from the package

    ids = [[(7 * i + j) % 200 + 3 for j in range(4 + 3 * i)] for i in range(prompts)]
    engine = BatchEngine(folder, prompts, 256, cores(), 2**31, batch_invariant=invariant)

    def decode(keys: list[str]) -> dict[str, list[np.ndarray]]:
        logits = {}
        for key in keys:
            logits[key] = [engine.prefill(key, ids[int(key)])]
            engine.activate(key)
        for _ in range(tokens - 1):
            step = engine.decode({k: int(np.argmax(v[-1])) for k, v in logits.items()})
            for k, v in step.items():
                logits[k].append(v)
        for key in keys:
            engine.drop(key)
        return logits

    def outside(key: str) -> list[np.ndarray]:
        steps = [engine.prefill(key, ids[int(key)], alone=True)]
        while len(steps) < tokens:
            steps.append(engine.prefill(key, [int(np.argmax(steps[-1]))], alone=True))
        engine.drop(key)
        return steps

    together = decode([str(i) for i in range(prompts)])
    alone = {}
    for i in range(prompts):
        alone.update(decode([str(i)]))
    flips, worst = 0, 0.0
    for key, steps in together.items():
        b = [int(np.argmax(x)) for x in steps]
        differs = False
        for other in (alone[key], outside(key)):
            a = [int(np.argmax(x)) for x in other]
            differs |= a != b
            # compare logits only while both saw the same tokens
            same = next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            worst = max([worst] + [float(np.abs(x - y).max()) for x, y in zip(other[: same + 1], steps[: same + 1])])
        flips += differs
    return {"prompts": prompts, "tokens": tokens, "sequences_that_differ": flips, "max_abs_logit_diff": worst}


def step_costs(folder: Path, rows: tuple[int, ...] = (1, 2, 4, 8), chunk: int = 16, reps: int = 20) -> dict[str, Any]:
    """What one step of the serving engine costs in process (median ms): a decode step of 1..8 rows
    of 40-token sequences, and one prefill chunk beside them; the floor under served latencies."""
    from maas.handlers.llm_engine import BatchEngine

    engine = BatchEngine(folder, max(rows), 256, cores(), 2**31)
    rng = np.random.default_rng(0)

    def median_ms(step: Any) -> float:
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return round(float(np.median(times)) * 1e3, 1)

    decode = {}
    for n in rows:
        for key in list(engine.key_at):
            engine.drop(key)
        for i in range(n):
            engine.prefill(str(i), rng.integers(3, 200, 40).tolist())
            engine.activate(str(i))
        engine.decode({k: 7 for k in engine.key_at})  # warm
        decode[n] = median_ms(lambda: engine.decode({k: 7 for k in engine.key_at}))

    def prefill_chunk() -> None:
        engine.prefill("chunk", rng.integers(3, 200, chunk).tolist())
        engine.drop("chunk")

    return {"decode_ms": decode, "prefill_chunk_tokens": chunk, "prefill_chunk_ms": median_ms(prefill_chunk)}


def set_engine(folder: Path, top: dict[str, Any] | None = None, **handler: Any) -> str:
    """Change the archive folder's model-config.yaml in place (`top`-level keys, `handler:` settings);
    returns its old text."""
    path = folder / "model-config.yaml"
    old = path.read_text()
    config = yaml.safe_load(old)
    config.update(top or {})
    config["handler"] = {**(config.get("handler") or {}), **handler}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return old


def served_rows(ts: Any, store: Path, config: dict[str, Any], plan: LlmPlan, reports: Path,
                check_parity: bool = True) -> list[dict[str, Any]]:
    from maas.deploy import deploy, undeploy

    model, version, rows = config.get("model", MODEL), config["version"], []
    started = time.perf_counter()
    deploy(ts.client, store, model, version, timeout=900, log_dir=ts.layout.log_dir)
    config["register_to_ready_s"] = round(time.perf_counter() - started, 1)
    try:
        if model == PEER and check_parity:  # ours at fp32 beside it, for the check only
            deploy(ts.client, store, MODEL, version, timeout=900, log_dir=ts.layout.log_dir)
            try:
                config["parity"] = peer_parity(ts, version)
            finally:
                undeploy(ts.client, MODEL, version)
            log.info("bench: peer greedy vs ours at fp32: %s", config["parity"])
        for users in plan.users:
            slo = SLO(users=users, spawn_rate=float(users), run_time_s=plan.run_time_s, warmup_s=plan.warmup_s,
                      thresholds=Thresholds(max_p95_ms=1e9, max_p99_ms=1e9, max_error_ratio=1.0, min_rps=0.0))
            test = LoadTest(model, slo, version=version, model_store=store, generative=True,
                            payload=config.get("payload", MODEL),
                            label=f"{re.sub(r'[^a-z0-9]+', '-', config['label'].lower())[:40]}-{users}u")
            summary, folder = run_locust(test, ts.endpoints.inference, ts.layout.key_file, reports)
            drain(ts, model, version)
            rows.append(row(config["label"], users, summary, folder))
        config["worker_rss_mb"] = [round(m) for m in worker_rss_mb(ts, model, version)]
    finally:
        undeploy(ts.client, model, version)
    if model == MODEL:
        log_text = (ts.layout.log_dir / "model_log.log").read_text(errors="replace")
        loaded = [line.split("MODEL_LOG - ", 1)[-1] for line in log_text.splitlines() if "loaded on" in line]
        config["worker_log"] = loaded[-1] if loaded else ""
    return rows


def fastest_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each (configuration, users) row from the round that served the most tokens/s, in the first
    round's order, with every round's tokens/s beside it (`rounds_tokens_per_s`)."""
    rows = []
    for first in rounds[0]:
        same = [r for rnd in rounds for r in rnd if (r["label"], r["users"]) == (first["label"], first["users"])]
        best = max(same, key=lambda r: r["output_tokens_per_s"])
        rows.append({**best, "rounds_tokens_per_s": [r["output_tokens_per_s"] for r in same]})
    return rows


def row(label: str, users: int, summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    gen = summary.get("generation") or {}
    out = {"label": label, "users": users, "output_tokens_per_s": gen.get("output_tokens_per_s", 0.0),
           "stream_tokens_per_s_p50": gen.get("stream_tokens_per_s_p50"), "ttft_ms": gen.get("ttft_ms"),
           "itl_ms": gen.get("itl_ms"), "tpot_ms": gen.get("tpot_ms"), "generations": gen.get("generations", 0),
           "requests": gen.get("requests", summary["requests"]), "failures": gen.get("failed", summary["failures"]),
           "report": str(folder)}
    log.info("%s, %d users: %.1f output tokens/s, TTFT p95 %s ms, ITL p95 %s ms, %d failures", label, users,
             out["output_tokens_per_s"], (out["ttft_ms"] or {}).get("p95"), (out["itl_ms"] or {}).get("p95"),
             out["failures"])
    return out


def drain(ts: Any, model: str, version: str) -> None:
    """Wait out the requests Locust left behind when it stopped (a server that cannot drop a request
    whose client left finishes it first): a one-token request answered means the queue is empty."""
    started = time.perf_counter()
    streamed(f"{ts.endpoints.inference}/predictions/{model}/{version}/v1/completions",
                  ts.client.fresh_key("inference"), {"prompt": "drain", "max_tokens": 1, "temperature": 0})
    log.info("bench: %s drained in %.1f s", model, time.perf_counter() - started)


def configurations(plan: LlmPlan, builds: dict[str, Any]) -> list[dict[str, Any]]:
    configs = [{"label": f"maas {key}", "precision": b["version"].split("-")[1], "version": b["version"],
                "folder": b["folder"], "handler": {}} for key, b in builds.items()]
    main = [c for c in configs if c["label"].removeprefix("maas ") in plan.precisions]
    last = main[-1]
    int4 = [c for c in main if c["precision"] == "int4"]
    if int4:  # the int4 products on ONNX Runtime's own kernel: what int4_vnni.c changes, in every run
        main.insert(main.index(int4[0]) + 1, {**int4[0], "label": f"{int4[0]['label']}, MatMulNBits",
                                              "handler": {"int4_vnni": False}})
    if plan.levers:  # one lever changed at a time, on the last precision (int4 by default)
        main.append({**last, "label": f"{last['label']}, no batching", "handler": {"engine": "generator"}})
        main.append({**last, "label": f"{last['label']}, whole prompts in one step",
                     "handler": {"prefill_chunk_tokens": 4096}})
        main.append({**last, "label": f"{last['label']}, prompts in chunks of 8",  # shorter steps beside streams
                     "handler": {"prefill_chunk_tokens": 8}})
        main.append({**last, "label": f"{last['label']}, 1 thread", "handler": {"intra_op_threads": 1}})
        main.append({**last, "label": f"{last['label']}, not batch-invariant", "handler": {"batch_invariant": False}})
        main.append({**last, "label": f"{last['label']}, requests without a seed", "handler": {},  # no spare row alone
                     "payload": f"{MODEL}-unseeded"})
        main.append({**last, "label": f"{last['label']}, threads sleep between ops", "handler": {"allow_spinning": False}})
        main.append({**last, "label": f"{last['label']}, decode not overlapped", "handler": {"overlap_decode": False}})
        main.append({**last, "label": f"{last['label']}, prompt prefix not reused",
                     "handler": {"reuse_prompt_prefix": False}})
        main.append({**last, "label": f"{last['label']}, asynchronous worker", "handler": {},
                     "serving": ASYNC_SERVING})
        main.append({**last, "label": f"{last['label']}, int8 KV cache", "handler": {"kv_cache_int8": True}})  # opt-in
    return main + [c for c in configs if c not in main]  # builds that are themselves a lever come last


def served_rounds(plan: LlmPlan, result: LlmResult, ts: Any, store: Path, reports: Path, peer: dict | None,
                  llama: list[tuple[dict, Any]]) -> list[list[dict[str, Any]]]:
    """Every configuration, ours then the peers', served in turn `plan.rounds` times, so that a drift of
    this shared machine reaches every one of them."""
    rounds: list[list[dict[str, Any]]] = []
    served = configurations(plan, result.builds) + ([peer] if peer else [])
    for n in range(max(1, plan.rounds)):
        rounds.append([])
        for cfg in served:
            changed = cfg.get("handler") or cfg.get("serving")
            old = set_engine(Path(cfg["folder"]), cfg.get("serving"), **cfg.get("handler", {})) if changed else None
            try:
                rounds[-1] += served_rows(ts, store, cfg, plan, reports, check_parity=n == 0)
            finally:
                if old is not None:
                    (Path(cfg["folder"]) / "model-config.yaml").write_text(old)
            if n == 0:
                result.configs.append({k: v for k, v in cfg.items() if k != "folder"})
            if cfg.get("parity"):
                result.peer_parity = cfg["parity"]
        rounds[-1] += llama_cpp_round(plan, result, llama, store, reports)
    return rounds


def run_llm_bench(plan: LlmPlan, out_dir: Path, config: Path, store: Path | None = None) -> LlmResult:
    """Everything the report shows, in one run; `store`: archives kept from an earlier run are reused
    where their handler files, settings and quantization are still what this run builds."""
    from maas.export.llm_build import read_source

    read_source(plan.source)  # a folder maas cannot build is refused before anything is measured
    out_dir = out_dir.resolve()
    store, work, reports = (store or out_dir / "store").resolve(), out_dir / "work", out_dir / "locust"
    for d in (store, work, reports):
        d.mkdir(parents=True, exist_ok=True)
    result = LlmResult(machine=machine_info(), plan={**asdict(plan), "source": str(plan.source),
                                                     "llama_cpp": str(plan.llama_cpp or "")})
    measure_machine(result)
    log.info("bench: memory read bandwidth %.1f GB/s, GEMM GMAC/s %s, int4 kernel GMAC/s by rows: MatMulNBits %s, "
             "int4_vnni.c %s (measured again at the end; the higher is the bound)", result.bandwidth_gbs,
             result.gemm_peak_gmacs, result.int4_kernel_gmacs, result.int4_vnni_gmacs)
    result.builds = build(plan, store, work)
    peer = build_peer(plan, store, work) if plan.peer and "fp32" in result.builds else None
    for precision, b in result.builds.items():
        result.invariance[precision] = batch_invariance(Path(b["folder"]))
        log.info("bench: %s batched vs alone and outside the batch: %s", precision, result.invariance[precision])
        if plan.levers and precision == plan.precisions[-1]:  # what batch_invariant: false changes
            result.invariance[f"{precision}, not batch-invariant"] = batch_invariance(Path(b["folder"]), invariant=False)
        result.step_costs[precision] = step_costs(Path(b["folder"]))
        log.info("bench: %s step costs in process: %s", precision, result.step_costs[precision])
    with ExitStack() as stack:  # llama.cpp's servers (if asked for) and TorchServe, up together
        llama = llama_cpp_servers(plan, result, work, stack) if plan.llama_cpp is not None else []
        ts = bench_server(store, out_dir / "run", config)
        ts.start(timeout=300)
        stack.callback(ts.stop)
        result.rows = fastest_rounds(served_rounds(plan, result, ts, store, reports, peer, llama))
        import psutil

        for c, server in llama:
            c["worker_rss_mb"] = [round(psutil.Process(server.process.pid).memory_info().rss / 2**20)]
            result.configs.append(c)
    measure_machine(result)
    write_outputs(result, out_dir)
    return result


def measure_machine(result: LlmResult) -> None:
    """The machine's bounds (memory bandwidth, ONNX Runtime's GEMMs, both int4 kernels by rows), kept
    at the higher of this reading and the one before: a run measures them at its start and its end."""
    result.bandwidth_gbs = max(result.bandwidth_gbs, memory_bandwidth_gbs())
    result.gemm_peak_gmacs = {kind: max(result.gemm_peak_gmacs.get(kind, 0.0), gemm_peak_gmacs(kind, cores()))
                              for kind in ("int8", "fp32")}
    for name, vnni in (("int4_kernel_gmacs", False), ("int4_vnni_gmacs", True)):
        before = getattr(result, name)
        setattr(result, name, {rows: max(rate, before.get(rows, 0.0))
                               for rows, rate in int4_kernel_gmacs(cores(), vnni=vnni).items()})


# ---- report -------------------------------------------------------------------------------
def bound_tokens_per_s(result: LlmResult, precision: str) -> float:
    return result.bandwidth_gbs * 1e9 / result.builds[precision]["weight_bytes"]


def arithmetic_bound_tokens_per_s(result: LlmResult, key: str) -> float | None:
    """Tokens/s all streams together could reach if the weight products ran at the GEMM's best:
    int4 and int8 builds compute in int8, fp32 in fp32. An int4 build's products run on the int4
    kernel, whose rate at 8 rows (8 streams) is the bound where it was measured."""
    kind = "fp32" if key.startswith("fp32") else "int8"
    peak, macs = result.gemm_peak_gmacs.get(kind), result.builds[key].get("macs_per_token")
    if key.startswith("int4"):
        # measured at compute_bound's blocks of 256: no bound for builds of other blocks, whose kernel differs
        block = (result.builds[key].get("quantization") or {}).get("block_size", INT4_KERNEL_BLOCK)
        peak = (int4_rate(result, 8) or peak) if block == INT4_KERNEL_BLOCK else None
    return peak * 1e9 / macs if peak and macs else None


def int4_rate(result: LlmResult, rows: int, kernel: str = "served") -> float | None:
    """An int4 kernel's GMAC/s at `rows` (results.json keeps the rows as text): "served", the one an
    int4 archive runs by default (int4_vnni.c where it ran in this run), or "matmulnbits"."""
    ours = result.int4_vnni_gmacs if kernel == "served" else {}
    rates = {int(r): rate for r, rate in (ours or result.int4_kernel_gmacs or {}).items()}
    return rates.get(rows)


def write_outputs(result: LlmResult, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    plot(result, out_dir / "llm.png")
    (out_dir / "report.md").write_text(report(result))


def _p(figures: dict[str, Any] | None, key: str) -> str:
    value = (figures or {}).get(key)
    return "" if value is None else f"{value:.0f}"


def _bounds_lines(result: LlmResult) -> list[str]:
    """A row a build: single stream against the bandwidth bound, the most served against the arithmetic one."""
    lines = []
    for precision, b in result.builds.items():
        single = next((r for r in result.rows if r["label"] == f"maas {precision}" and r["users"] == 1), None)
        rate = (single or {}).get("stream_tokens_per_s_p50") or 0.0
        bound = bound_tokens_per_s(result, precision)
        arithmetic = arithmetic_bound_tokens_per_s(result, precision)
        best = max((r for r in result.rows if r["label"] == f"maas {precision}"),
                   key=lambda r: r["output_tokens_per_s"], default=None)
        served = f"{best['output_tokens_per_s']:.1f} ({best['users']} streams)" if best else ""
        # the bound is 8 rows' rate: a run of fewer streams is not a share of it
        of_it = f"{best['output_tokens_per_s'] / arithmetic:.0%}" if best and arithmetic and best["users"] >= 8 else ""
        if (b.get("quantization") or {}).get("block_size") and "blocks of" not in precision:
            precision = f"{precision} (blocks of {b['quantization']['block_size']})"
        check = (f"greedy equal on {b['parity']['equal']}/{b['parity']['prompts']} prompts" if b.get("parity")
                 else f"KL {b['cost'].get('mean_kl'):.3g}" if b.get("cost") else "")
        lines.append(f"| {precision} | {b['weight_bytes'] / 1e6:.0f} MB | {bound:.1f} tokens/s | {rate:.1f} tokens/s | "
                     f"{rate / bound:.0%} | {f'{arithmetic:.0f} tokens/s' if arithmetic else ''} | {served} | {of_it} | "
                     f"{check} |")
    return lines


def _int4_kernel_sentence(result: LlmResult) -> str:
    one, eight = int4_rate(result, 1, "matmulnbits"), int4_rate(result, 8, "matmulnbits")
    if not (one and eight):
        return ""
    sentence = (f" Its int4 kernel (MatMulNBits, int8 arithmetic) on 75 MB of weights: {one:g} GMAC/s at 1 row, "
                f"{eight:g} at 8 rows")
    if result.int4_vnni_gmacs:
        sentence += (f"; maas's own (handlers/int4_vnni.c, AVX-512 VNNI), which int4 archives run here by default: "
                     f"{int4_rate(result, 1):g} and {int4_rate(result, 8):g}")
    return sentence + ("; 8 streams' products run at that rate, not at the GEMM's best, so the served kernel's is an "
                       "int4 build's arithmetic bound below.")


def report(result: LlmResult) -> str:
    m = result.machine
    lines = [f"# Language model serving: {Path(result.plan['source']).name}", "",
             f"{m['cores']} cores, {m['cpu']} ({m['isa']}); torch {m['torch']}, onnxruntime {m['onnxruntime-gpu']}, "
             f"torchserve {m['torchserve']}, locust {m['locust']}; {m['date']}.", "",
             "Memory read bandwidth measured in this run (the higher of its start and end): "
             f"**{result.bandwidth_gbs} GB/s**. Locust's streaming users "
             f"(sampled chat completions, up to 64 tokens) run on the same cores as TorchServe; "
             f"{result.plan['warmup_s']} s warm-up + {result.plan['run_time_s']} s measured per row" +
             (f", every configuration served in turn {rounds} times and each row its fastest round. " if
              (rounds := result.plan.get('rounds', 1)) > 1 else ". ") +
             f"ONNX Runtime's own GEMMs on these cores, the best of start and end: "
             f"int8 {result.gemm_peak_gmacs.get('int8', 0):g}, fp32 {result.gemm_peak_gmacs.get('fp32', 0):g} GMAC/s: "
             "the arithmetic bound of many streams (int4 computes in int8)." + _int4_kernel_sentence(result), "",
             "| precision | weights read per token | bandwidth bound | single stream | of the bound | arithmetic bound "
             "| most tokens/s served | of it | parity / cost |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += _bounds_lines(result)
    by_round = any(len(r.get("rounds_tokens_per_s", [])) > 1 for r in result.rows)  # --rounds: each round's figure
    lines += ["", "ITL: gaps between a stream's events that carried text (a token whose bytes complete no character "
              "yet sends none, so random weights' lone bytes make some gaps span several tokens); TPOT: per "
              "generation, the time per output token after the first.", "",
              "| configuration | users | output tokens/s | one stream p50 tokens/s | TTFT p50 / p95 / p99 ms | "
              "ITL p50 / p95 / p99 ms | TPOT p50 / p95 / p99 ms | requests | errors |" +
              (" output tokens/s by round |" if by_round else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if by_round else "")]
    for r in result.rows:
        t, i, o = r["ttft_ms"], r["itl_ms"], r.get("tpot_ms")
        lines.append(f"| {r['label']} | {r['users']} | {r['output_tokens_per_s']:.1f} | "
                     f"{r['stream_tokens_per_s_p50'] or 0:.1f} | {_p(t, 'p50')} / {_p(t, 'p95')} / {_p(t, 'p99')} | "
                     f"{_p(i, 'p50')} / {_p(i, 'p95')} / {_p(i, 'p99')} | {_p(o, 'p50')} / {_p(o, 'p95')} / "
                     f"{_p(o, 'p99')} | {r['requests']} | {r['failures']} |" +
                     (f" {' / '.join(f'{x:.1f}' for x in r.get('rounds_tokens_per_s', []))} |" if by_round else ""))
    lines += ["", "| configuration | worker RSS MB | register to READY s | worker start |", "|---|---|---|---|"]
    for c in result.configs:
        lines.append(f"| {c['label']} | {', '.join(map(str, c.get('worker_rss_mb', [])))} | "
                     f"{c.get('register_to_ready_s', '')} | {re.sub(r'^.*?: loaded', 'loaded', c.get('worker_log', ''))} |")
    if result.peer_parity:
        pp = result.peer_parity
        lines += ["", f"Checked before timing: the peer's greedy token ids equal ours at fp32 on {pp['equal']}/"
                  f"{pp['prompts']} prompts ({pp['max_tokens']} tokens), and the text on {pp['same_text']}."]
    if result.llama_cpp_parity:
        lp = result.llama_cpp_parity
        lines += ["", f"Checked {lp.get('when', 'before timing')}: llama.cpp's greedy token ids (GGUF f32) equal "
                  f"those of {lp.get('against', 'maas fp32')} on {lp['equal']}/{lp['prompts']} prompts "
                  f"({lp['max_tokens']} tokens; prompt ids equal on {lp['same_prompt_ids']})."]
    if result.step_costs:
        sizes = list(next(iter(result.step_costs.values()))["decode_ms"])
        lines += ["", "One step of the serving engine in process (median ms; 40-token sequences): what served latencies "
                  "sit on.", "", f"| build | decode, {' / '.join(map(str, sizes))} rows | {sizes[-1]} rows / 1 | "
                  "prefill chunk beside them |", "|---|---|---|---|"]
        for key, c in result.step_costs.items():
            d = list(c["decode_ms"].values())
            lines.append(f"| {key} | {' / '.join(f'{x:g}' for x in d)} | {d[-1] / d[0]:.2f} | "
                         f"{c['prefill_chunk_ms']:g} ({c['prefill_chunk_tokens']} tokens) |")
    lines += ["", "Batched vs each alone in the batch and outside it (gRPC's row; in process, greedy, the serving engine):", ""]
    for precision, inv in result.invariance.items():
        lines.append(f"- {precision}: {inv['sequences_that_differ']} of {inv['prompts']} sequences differ over "
                     f"{inv['tokens']} tokens; largest logit difference before any differs {inv['max_abs_logit_diff']:.2e}")
    return "\n".join(lines) + "\n\n![throughput and latencies against concurrency](llm.png)\n"


def plot(result: LlmResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
    labels = list(dict.fromkeys(r["label"] for r in result.rows))
    colors = plt.get_cmap("tab20").colors  # one colour a configuration: more than the default cycle's ten
    for n, label in enumerate(labels):
        rows = [r for r in result.rows if r["label"] == label]
        users = [r["users"] for r in rows]
        style = {"color": colors[n % len(colors)], "marker": "o", "label": label,
                 "linestyle": "--" if label.startswith("peer") else "-"}  # peers dashed
        axes[0].plot(users, [r["output_tokens_per_s"] for r in rows], **style)
        axes[1].plot(users, [(r["itl_ms"] or {}).get("p95", np.nan) for r in rows], **style)
        axes[2].plot(users, [(r["ttft_ms"] or {}).get("p95", np.nan) for r in rows], **style)
    for ax, title in zip(axes, ("output tokens/s (all streams)", "inter-token latency p95 (ms, log)",
                                "time to first token p95 (ms, log)")):
        ax.set_title(title)
        ax.set_xlabel("concurrent streams (Locust users)")
        ax.set_xticks(sorted({r["users"] for r in result.rows}))  # the concurrencies run, one alone included
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.set_yscale("log")  # the one-request-at-a-time peer is 10-100x the others
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(out_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "llm.png", "results.json"):
        shutil.copy(out_dir / name, dest / name)
