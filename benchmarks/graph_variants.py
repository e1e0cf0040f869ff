"""A language-model build's decode step with its graph changed one way at a time: what each costs.

    .venv/bin/python benchmarks/graph_variants.py --model OUT/store/bench-llm-1.0-int4 \
        [--cases 1x8,1x900,8x8,8x400,8x900] [--rounds 6] [--out benchmarks/results/graph-variants]

Issue 30 asks how each lever, the KV layout among them, changes the figures. The step profile
(`step_profile.py`) shows GroupQueryAttention reading every cached key and value in fp32, 98 KB a
token for the 568M Llama: at 8 streams x 900 tokens more bytes a step than the weights. ONNX
Runtime's CPU GroupQueryAttention also takes fp16, so the same build can keep a cache of half the
bytes: `kv-fp16` casts the packed query/key/value to fp16 before each attention, its output back to
fp32 after, and makes the cache (past and present) and the rotary tables fp16. `products-fp32`
sets the int4 products' accuracy level to 1 (fp32 arithmetic) instead of the build's 4 (int8).

Each variant runs the serving engine (handlers/llm_engine.py BatchEngine) beside the build, the
steps interleaved in `--rounds` rounds (the machine drifts); its cost to the answers: the build's
greedy tokens fed to both (teacher forcing), the share of positions whose top token is the same,
and the mean KL divergence of the variant's next-token distribution from the build's.
Writes results.json, README.md and steps.png to --out.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from published import build_folder, grouped_bars, publish  # noqa: E402 -- beside this script


def fp32_products(model: Any, build: Path) -> None:
    """The int4 products computing in fp32 (accuracy level 1) instead of int8 (4)."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = 1


def half_kv(model: Any, build: Path) -> None:
    from maas.export.kv_cache import half_kv as halve  # what `maas package --llm --kv-cache fp16` does

    halve(model, build)


VARIANTS: dict[str, Callable[[Any, Path], None]] = {"kv-fp16": half_kv, "products-fp32": fp32_products}


def variant_folder(build: Path, name: str, into: Path) -> Path:
    """A copy of `build` whose model.onnx has `name`'s change; the weights (external data, which the
    change leaves alone; kv-fp16 keeps its fp16 rotary tables in model.onnx) are linked, not copied."""
    import onnx

    folder = into / name
    folder.mkdir(parents=True)
    for path in build.iterdir():
        if path.is_file() and path.name != "model.onnx":
            try:
                os.link(path, folder / path.name)  # ONNX Runtime refuses symbolic links out of the folder
            except OSError:
                shutil.copy2(path, folder / path.name)
    model = onnx.load(str(build / "model.onnx"), load_external_data=False)
    VARIANTS[name](model, build)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def engine(folder: Path, rows: int, context: int, threads: int, extra: int = 64) -> Any:
    """The serving engine with `rows` streams prefilled to `context` tokens (the same prompts for every folder)."""
    from maas.handlers.llm_engine import BatchEngine

    served = BatchEngine(folder, rows, context + extra, threads, 2**36)
    rng = np.random.default_rng(0)
    for row in range(rows):
        served.prefill(str(row), rng.integers(3, 200, context).tolist())
        served.activate(str(row))
    return served


def step_ms(served: Any, steps: int) -> list[float]:
    """`steps` decode steps at the same context (each rewrites the position the last one wrote)."""
    tokens = {key: 7 for key in served.key_at}
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        served.decode(tokens, exact=False)
        times.append((time.perf_counter() - started) * 1e3)
        for key in served.key_at:
            served.length[key] -= 1
    return times


def time_case(folders: dict[str, Path], rows: int, context: int, rounds: int, threads: int) -> dict[str, Any]:
    """Median step ms of every folder at (rows, context), interleaved round by round."""
    engines = {name: engine(folder, rows, context, threads) for name, folder in folders.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for name, served in engines.items():
        step_ms(served, 3)  # warm
    for _ in range(rounds):
        for name, served in engines.items():
            times[name] += step_ms(served, 8)
    return {"rows": rows, "context": context,
            "step_ms": {name: round(statistics.median(t), 2) for name, t in times.items()},
            "kv_bytes_per_token": {name: served.bytes_per_token for name, served in engines.items()}}


def forced_logits(folder: Path, prompts: list[list[int]], tokens: list[list[int]] | None, steps: int,
                  threads: int) -> tuple[list[list[int]], np.ndarray]:
    """Greedy decoding of `prompts` together (or, given `tokens`, those fed instead) -> the tokens
    fed and the logits of every step, [steps, rows, vocab]."""
    from maas.handlers.llm_engine import BatchEngine

    served = BatchEngine(folder, len(prompts), max(map(len, prompts)) + steps + 8, threads, 2**34)
    fed: list[list[int]] = [[] for _ in prompts]
    last = {}
    for row, prompt in enumerate(prompts):
        logits = served.prefill(str(row), prompt)
        served.activate(str(row))
        last[str(row)] = tokens[row][0] if tokens else int(logits.argmax())
    out = []
    for step in range(steps):
        for row in range(len(prompts)):
            fed[row].append(last[str(row)])
        logits = served.decode(last, exact=True)
        out.append(np.stack([logits[str(row)] for row in range(len(prompts))]))
        last = {key: (tokens[int(key)][step + 1] if tokens and step + 1 < len(tokens[int(key)])
                      else int(values.argmax())) for key, values in logits.items()}
    return fed, np.stack(out)


def answer_cost(build: Path, folder: Path, rows: int, steps: int, threads: int) -> dict[str, Any]:
    """The build's greedy tokens fed to the variant: how often its top token is the build's, and
    the mean KL divergence (nats) of its next-token distribution from the build's."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 200, int(n)).tolist() for n in rng.integers(20, 60, rows)]
    tokens, reference = forced_logits(build, prompts, None, steps, threads)
    _, variant = forced_logits(folder, prompts, tokens, steps, threads)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(variant)
    kl = (np.exp(p) * (p - q)).sum(-1)
    return {"positions": int(kl.size), "same_top_token": float((reference.argmax(-1) == variant.argmax(-1)).mean()),
            "mean_kl": float(kl.mean()), "max_logit_difference": float(np.abs(reference - variant).max())}


def plot(result: dict[str, Any], path: Path) -> None:
    cases, names = result["cases"], ["build", *result["variants"]]
    grouped_bars(path, [f"{c['rows']} x {c['context']}" for c in cases],
                 {name: [c["step_ms"][name] for c in cases] for name in names}, "ms a decode step (median)",
                 f"{result['model']}: the build's graph and its variants, {result['threads']} threads",
                 xlabel="streams x tokens of context", size=(9, 4.5))

def readme(result: dict[str, Any]) -> str:
    variants = result["variants"]
    lines = [f"# A decode step with the build's graph changed one way at a time ({result['when']})", "",
             f"`{result['model']}`, {result['threads']} threads, onnxruntime {result['onnxruntime']}: the serving "
             f"engine's decode step, the build and each variant interleaved in {result['rounds']} rounds of 8 steps "
             "(median ms). `kv-fp16`: the KV cache, attention and rotary tables in fp16 (casts around each "
             "GroupQueryAttention); `products-fp32`: the int4 products at accuracy level 1 (fp32 arithmetic) "
             "instead of 4 (int8). Made by `benchmarks/graph_variants.py`.", "",
             "| streams | context | build ms | " + " | ".join(f"{v} ms | against the build" for v in variants)
             + " | KV bytes a token, build / " + " / ".join(variants) + " |",
             "|---" * (4 + 2 * len(variants)) + "|"]
    for c in result["cases"]:
        base = c["step_ms"]["build"]
        lines.append(f"| {c['rows']} | {c['context']} | {base} | "
                     + " | ".join(f"{c['step_ms'][v]} | {c['step_ms'][v] / base:.2f}x" for v in variants)
                     + " | " + " / ".join(str(c["kv_bytes_per_token"][n]) for n in ["build", *variants]) + " |")
    lines += ["", "What each costs the answers: the build's greedy tokens fed to the variant "
              f"({result['parity_rows']} prompts decoded together, {result['parity_steps']} steps):", "",
              "| variant | top token the build's | mean KL from the build, nats | largest logit difference |",
              "|---|---|---|---|"]
    for v in variants:
        a = result["answers"][v]
        lines.append(f"| {v} | {a['same_top_token']:.1%} of {a['positions']} | {a['mean_kl']:.4f} | "
                     f"{a['max_logit_difference']:.3f} |")
    lines += ["", "![steps of the build and its variants](steps.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=build_folder, required=True, help="a language model build's folder (genai_config.json)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--cases", default="1x8,1x900,8x8,8x400,8x900", help="STREAMSxCONTEXT, comma-separated")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds of 8 steps per case")
    parser.add_argument("--parity-steps", type=int, default=32, help="greedy steps compared with the build")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the cores, as a worker)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "graph-variants")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from maas.core.machine import cores

    threads, variants = args.threads or cores(), [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    try:
        shapes = [tuple(int(x) for x in case.split("x")) for case in args.cases.split(",")]
    except ValueError:
        parser.error(f"--cases {args.cases}: STREAMSxCONTEXT pairs, e.g. 1x8,8x900")
    with tempfile.TemporaryDirectory(dir=args.model.parent) as scratch:  # beside the build: hard links
        folders = {"build": args.model, **{v: variant_folder(args.model, v, Path(scratch)) for v in variants}}
        answers = {v: answer_cost(args.model, folders[v], 4, args.parity_steps, threads) for v in variants}
        print(f"answers: {answers}", file=sys.stderr, flush=True)
        cases = []
        for rows, context in shapes:
            cases.append(time_case(folders, rows, context, args.rounds, threads))
            print(f"{rows}x{context}: {cases[-1]['step_ms']}", file=sys.stderr, flush=True)
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model.name,
              "threads": threads, "rounds": args.rounds, "onnxruntime": onnxruntime.__version__,
              "variants": variants, "parity_rows": 4, "parity_steps": args.parity_steps,
              "answers": answers, "cases": cases}
    publish(args.out, result, readme, plot, "steps.png")


if __name__ == "__main__":
    main()
