"""Where a decode step's time goes, by operator, as the context grows: ONNX Runtime's own profiler.

    .venv/bin/python benchmarks/step_profile.py --model OUT/store/bench-llm-1.0-int4 \
        [--contexts 8,100,400,900] [--rows 1,8] [--steps 40] [--out benchmarks/results/step-profile]

A decode step of the serving engine (handlers/llm_engine.py BatchEngine) reads every weight once
and, in GroupQueryAttention, every cached key and value of every running stream. This prefills
`rows` streams to each context length, runs `steps` decode steps under ONNX Runtime's profiler,
and adds the kernels' times by operator type (per step), beside the step's own time unprofiled and
the bytes it reads: the weights (once a step, whatever the rows) and the KV cache (rows x context
x bytes a token). Issue 30's question it answers: what besides the weight products a lone stream
pays, and when the KV cache, not the weights, is what a step reads most of. `--caches float,int8`
profiles every case with the float KV cache and with the int8 one (handlers/kv_int8.py, calibrated
as a worker calibrates it), one after the other in one run, and measures what int8 costs: the KL
of its next-token distributions from the float cache's over greedy answers, and how often the
greedy token differs.
Writes results.json, README.md and ops.png to --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from published import build_folder, publish  # noqa: E402 -- beside this script


def calibration(folder: Path) -> list[int]:
    """The tokens a worker calibrates an int8 KV cache on (handlers/llm.py)."""
    import onnxruntime_genai as og

    from maas.handlers.kv_int8 import CALIBRATION_TEXT

    return list(og.Tokenizer(str(folder)).encode(CALIBRATION_TEXT))


def int8_cost(folder: Path, threads: int, prompts: int = 3, tokens: int = 64) -> dict[str, Any]:
    """The int8 KV cache against the float one: each prompt's greedy answer under the float cache, and
    at every position the KL (nats) of the int8 cache's next-token distribution and whether its best token differs."""
    from maas.handlers import kv_int8
    from maas.handlers.llm_engine import BatchEngine

    ids = calibration(folder)
    exact, int8 = (BatchEngine(folder, 1, 1024, threads, 2**34, kv_int8_text=text) for text in (None, ids))
    rng, kls, flips = np.random.default_rng(0), [], 0
    for i in range(prompts):
        prompt = ids[i * 40:i * 40 + 20] if i % 2 else rng.integers(3, 200, 20).tolist()
        pair = [engine.prefill(str(i), prompt) for engine in (exact, int8)]
        for engine in (exact, int8):
            engine.activate(str(i))
        for _ in range(tokens):
            kls.append(kv_int8.kl(pair[0][None], pair[1][None]))
            flips += int(np.argmax(pair[0]) != np.argmax(pair[1]))
            token = int(np.argmax(pair[0]))
            pair = [engine.decode({str(i): token})[str(i)] for engine in (exact, int8)]
        for engine in (exact, int8):
            engine.drop(str(i))
    return {"positions": len(kls), "mean_kl": round(float(np.mean(kls)), 6), "max_kl": round(float(np.max(kls)), 5),
            "greedy_differs": flips, "load_check_kl": int8.kv_int8_kl,
            "bytes_per_token": {"float": exact.bytes_per_token, "int8": int8.bytes_per_token}}


def prefilled(folder: Path, rows: int, context: int, steps: int, threads: int, int8: bool) -> tuple[Any, Callable[[], float]]:
    """A serving engine with `rows` streams of `context` tokens, and a decode step of them that leaves
    them as they were (-> its seconds)."""
    from maas.handlers.llm_engine import BatchEngine

    engine = BatchEngine(folder, rows, context + 2 * steps + 8, threads, 2**34,
                         kv_int8_text=calibration(folder) if int8 else None)
    rng = np.random.default_rng(0)
    for i in range(rows):
        engine.prefill(str(i), rng.integers(3, 200, context).tolist())
        engine.activate(str(i))
    tokens = {key: 7 for key in engine.key_at}

    def step() -> float:
        started = time.perf_counter()
        engine.decode(tokens, exact=False)
        for key in engine.key_at:  # the same context every step: the new position is written again
            engine.length[key] -= 1
        return time.perf_counter() - started

    return engine, step


def profile_case(folder: Path, rows: int, context: int, steps: int, threads: int, caches: list[str]) -> list[dict[str, Any]]:
    """One (rows, context) with each of `caches`: the step's median ms, unprofiled (the caches' steps
    interleaved in blocks of 10, a block's first 3 steps dropped: the other session's threads may
    still spin), and ms per step by operator type, profiled."""
    import onnxruntime as ort

    engines = [prefilled(folder, rows, context, steps, threads, cache == "int8") for cache in caches]
    plain: list[list[float]] = [[] for _ in engines]
    for _ in range(-(-steps // 5)):
        for times, (_, step) in zip(plain, engines):
            times += [step() for _ in range(10)][3:]
    cases = []
    for times, (engine, step) in zip(plain, engines):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "step")
        if engine.custom_ops:  # the int4 products on int4_vnni.c's kernel
            options.register_custom_ops_library(str(engine.custom_ops))
        engine.session = ort.InferenceSession(str(engine.decoder_path), options, providers=["CPUExecutionProvider"])
        for _ in range(steps):
            step()
        events = json.loads(Path(engine.session.end_profiling()).read_text())
        by_op: dict[str, float] = defaultdict(float)
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"] / 1e3 / steps
        cases.append({"rows": rows, "context": context, "cache": str(engine.cache[0].dtype),
                      "step_ms": round(statistics.median(times) * 1e3, 2),
                      "ops_ms": {op: round(ms, 3) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])},
                      "kv_bytes_read": rows * context * engine.bytes_per_token})
    return cases


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    ops = sorted({op for c in cases for op in c["ops_ms"]}, key=lambda op: -max(c["ops_ms"].get(op, 0) for c in cases))
    shown, labels = ops[:5], [f"{c['rows']} x {c['context']}" + (f"\n{c['cache']}" if c.get("cache") else "") for c in cases]
    fig, ax = plt.subplots(figsize=(max(9, 0.8 * len(cases)), 4.5))
    bottom = np.zeros(len(cases))
    for op in [*shown, "other"]:
        values = np.array([sum(v for o, v in c["ops_ms"].items() if o not in shown) if op == "other"
                           else c["ops_ms"].get(op, 0.0) for c in cases])
        ax.bar(labels, values, bottom=bottom, label=op)
        bottom += values
    ax.set_xlabel("streams x tokens of context")
    ax.set_ylabel("ms a decode step (profiled kernels)")
    ax.set_title(f"{result['model']}: a decode step by operator, {result['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(result: dict[str, Any]) -> str:
    products = [op for op in ("Int4VnniMatMul", "MatMulNBits") if any(op in c["ops_ms"] for c in result["cases"])]
    ops = [*products, "GroupQueryAttention", "SkipSimplifiedLayerNormalization"]  # int4 products: either kernel
    lines = [f"# A decode step by operator, against context ({result['when']})", "",
             f"`{result['model']}` ({result['weights_bytes'] / 1e6:.0f} MB of weights), {result['threads']} threads, "
             f"onnxruntime {result['onnxruntime']}: each case prefilled, then {result['steps']} decode steps under "
             "ONNX Runtime's profiler (kernel times by operator type, per step) and as many without it (the step's "
             "median; with both KV caches, their steps interleaved in blocks of 10, each block's first 3 dropped). "
             "Made by `benchmarks/step_profile.py`.", "",
             "| streams | context | KV cache | step ms (median) | " + " | ".join(f"{op} ms" for op in ops)
             + " | other ops ms | KV read MB | weights read MB |", "|---" * (7 + len(ops)) + "|"]
    for c in result["cases"]:
        other = sum(v for op, v in c["ops_ms"].items() if op not in ops)
        lines.append(f"| {c['rows']} | {c['context']} | {c.get('cache', 'float32')} | {c['step_ms']} | "
                     + " | ".join(f"{c['ops_ms'].get(op, 0.0):.2f}" for op in ops)
                     + f" | {other:.2f} | {c['kv_bytes_read'] / 1e6:.0f} | {result['weights_bytes'] / 1e6:.0f} |")
    lines += ["", "Profiled kernel times run a little above the unprofiled step (the profiler's own cost)."]
    if cost := result.get("int8_cost"):
        lines += ["", f"What the int8 KV cache costs (`kv_cache_int8: true`, calibrated as a worker calibrates it; its "
                  f"check at load: KL {cost['load_check_kl']:.4f} nats): over {cost['positions']} positions of greedy "
                  f"answers to 3 prompts under the float cache, its next-token distribution is {cost['mean_kl']:.5f} "
                  f"nats from the float cache's on average (at most {cost['max_kl']}), its best token differs at "
                  f"{cost['greedy_differs']} (random weights: flat distributions, near ties); a token takes "
                  f"{cost['bytes_per_token']['int8']} bytes of cache instead of {cost['bytes_per_token']['float']}."]
    lines += ["", "![a step by operator](ops.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=build_folder, required=True, help="a language model build's folder (genai_config.json)")
    parser.add_argument("--contexts", default="8,100,400,900", help="tokens of context, comma-separated")
    parser.add_argument("--rows", default="1,8", help="counts of streams, comma-separated")
    parser.add_argument("--steps", type=int, default=40, help="decode steps per case, profiled and not")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the cores, as a worker)")
    parser.add_argument("--caches", default="float", help="KV caches to profile each case with: float, int8 or both")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "step-profile")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from maas.core.machine import cores

    threads = args.threads or cores()
    cases, caches = [], [c.strip() for c in args.caches.split(",")]
    for rows in sorted({int(r) for r in args.rows.split(",")}):
        for context in sorted({int(c) for c in args.contexts.split(",")}):
            for case in profile_case(args.model, rows, context, args.steps, threads, caches):
                cases.append(case)
                print(f"{rows} x {context} ({case['cache']}): step {case['step_ms']} ms, {case['ops_ms']}",
                      file=sys.stderr, flush=True)
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model.name,
              "weights_bytes": weights_bytes(args.model), "threads": threads, "steps": args.steps,
              "onnxruntime": onnxruntime.__version__, "cases": cases}
    if "int8" in caches:
        result["int8_cost"] = int8_cost(args.model, threads)
    publish(args.out, result, readme, plot, "ops.png")


if __name__ == "__main__":
    main()
