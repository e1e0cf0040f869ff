"""What a stream alone gains when its request has no seed: interleaved pairs on one server.

    .venv/bin/python benchmarks/seedless_single_stream.py --store OUT/store [--rounds 40] \
        [--out benchmarks/results/llm-seedless-single-stream]

A greedy or seeded request gets the same tokens alone as among others: alone, it decodes with a
spare row beside it (int4's one-row kernel computes other numbers than the several-row one). A
request sampled without a seed cannot tell, so alone it decodes as one row (handlers/llm_engine.py).
Served rows of `maas bench --llm` are minutes apart, and this machine's speed drifts more than
that 10 % between them; here each round sends the bench's chat prompt once with a seed and once
without, in random order, one stream at a time, to one TorchServe, so both arms see the same
machine. TPOT per generation, as the bench computes it: (last event - first event) / (tokens - 1).
The archive is the int4 build a `maas bench --llm` run kept (OUT/store/bench-llm-1.0-int4); the
memory bandwidth measured before and after gives each arm's share of the bandwidth bound.
Writes results.json and README.md to --out.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, VERSION = "bench-llm", "1.0-int4"


def tpot_ms(url: str, key: str, body: dict) -> tuple[float, int]:
    """One streamed generation: ms per output token after the first, and its output tokens."""
    import requests

    events, tokens = [], 0
    with requests.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}},
                       headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
                events.append(time.perf_counter())
    return (events[-1] - events[0]) / max(tokens - 1, 1) * 1e3, tokens


def measure(store: Path, rounds: int, run_dir: Path) -> dict[str, list[float]]:
    from maas.bench import bench_server
    from maas.deploy import deploy
    from maas.export.clients import LlmClient

    ts = bench_server(store, run_dir, ROOT / "config.properties")
    ts.start(timeout=300)
    arms: dict[str, list[float]] = {"with a seed": [], "without a seed": []}
    try:
        deploy(ts.client, store, MODEL, VERSION, timeout=900, log_dir=ts.layout.log_dir)
        url = f"{ts.endpoints.inference}/predictions/{MODEL}/{VERSION}/v1/chat/completions"
        key = ts.client.fresh_key("inference")
        prompts = [p.format(i=i) for i, p in enumerate(LlmClient.PROMPTS)]
        rng = random.Random(0)
        for n in range(rounds):
            base = {"messages": [{"role": "user", "content": prompts[n % len(prompts)]}], "max_tokens": 64,
                    "temperature": 0.7}
            pair = [("with a seed", {**base, "seed": n}), ("without a seed", base)]
            rng.shuffle(pair)
            for arm, body in pair:
                ms, tokens = tpot_ms(url, key, body)
                if tokens >= 16:  # a generation cut short by its end token says little about the step
                    arms[arm].append(ms)
            print(f"round {n + 1}/{rounds}: " + ", ".join(f"{a} {statistics.median(v):.1f} ms" for a, v in arms.items() if v),
                  file=sys.stderr, flush=True)
    finally:
        ts.stop()
    return arms


def quartiles(values: list[float]) -> dict[str, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return {"p25": round(q1, 2), "p50": round(q2, 2), "p75": round(q3, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="a `maas bench --llm` run's store folder")
    parser.add_argument("--rounds", type=int, default=40, help="pairs of generations (one of each arm)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "seedless-single-stream")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from maas.llm_bench import memory_bandwidth_gbs, weight_bytes

    bandwidth = memory_bandwidth_gbs()
    arms = measure(args.store.resolve(), args.rounds, args.out.resolve() / "run")
    bandwidth = max(bandwidth, memory_bandwidth_gbs())
    bound = bandwidth * 1e9 / weight_bytes(args.store / f"{MODEL}-{VERSION}")
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rounds": args.rounds,
              "bandwidth_gbs": bandwidth, "bound_tokens_per_s": round(bound, 1),
              "arms": {arm: {"generations": len(v), "tpot_ms": quartiles(v),
                             "tokens_per_s_p50": round(1e3 / statistics.median(v), 1),
                             "of_bound": round(1e3 / statistics.median(v) / bound, 3)} for arm, v in arms.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# A stream alone, sampled with and without a seed ({result['when']})", "",
             f"{args.rounds} interleaved pairs on one TorchServe, the bench's int4 568M Llama, 2 cores; memory "
             f"bandwidth {bandwidth:.1f} GB/s, so the bandwidth bound is {bound:.1f} tokens/s. Made by "
             "`benchmarks/seedless_single_stream.py`.", "",
             "| request | generations | TPOT p25 / p50 / p75 ms | tokens/s (p50) | of the bound |", "|---|---|---|---|---|"]
    for arm, figures in result["arms"].items():
        t = figures["tpot_ms"]
        lines.append(f"| sampled {arm} | {figures['generations']} | {t['p25']} / {t['p50']} / {t['p75']} | "
                     f"{figures['tokens_per_s_p50']} | {figures['of_bound']:.0%} |")
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
