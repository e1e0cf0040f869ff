"""What ONNX Runtime's int4 kernel lets a decode step reach: the model's own weight products, alone.

    .venv/bin/python benchmarks/int4_kernel_rows.py --model OUT/store/bench-llm-1.0-int4 \
        [--rows 1,2,3,4,5,6,7,8,16] [--rounds 20] [--out benchmarks/results/int4-kernel-rows]

Issue 30's two unmet goals are a stream alone at >= 70 % of the bandwidth bound and, at 8 streams,
p95 inter-token latency under 2x a lone stream's. A decode step of r streams multiplies r rows by
every weight of the model; in an int4 build that is ONNX Runtime's MatMulNBits (int8 arithmetic,
accuracy level 4), 61 products of the 568M Llama, ~80 % of a step. This runs exactly those
products, with the build's own weights, blocks and scales (read from its graph), in one graph and
nothing else, at each count of rows, in random order round after round, with the worker's threads,
and measures the machine's memory read bandwidth before and after. Two figures follow:
- one row: the weights' bytes over its time is the fastest a lone stream can read them through
  this kernel; over the bandwidth it is the largest share of the bandwidth bound any server on
  ONNX Runtime's int4 reaches here (the rest of a step, attention and norms, only lowers it);
- r rows over one row: the least a step of r streams costs against a lone stream's, so the least
  its inter-token latency can be against a lone stream's.
Writes results.json, README.md and kernel.png to --out.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from published import build_folder, publish  # noqa: E402 -- beside this script


def products_graph(folder: Path) -> tuple[Any, dict[int, int], int]:
    """One graph of every MatMulNBits of `folder`'s decoder with its own initializers, an input per
    inner size K (x<K>: [rows, K]) and one output: the sum of every product's row sums (cheap; it
    keeps each product live). -> (model, {K: products}, bytes of the products' initializers)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(folder / "model.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    nodes, used, ks = [], {}, {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        k = next(a.i for a in node.attribute if a.name == "K")
        ks[k] = ks.get(k, 0) + 1
        inputs = [f"x{k}", *node.input[1:]]
        used.update({name: initializers[name] for name in node.input[1:] if name in initializers})
        out = f"y{len(nodes)}"
        nodes += [helper.make_node("MatMulNBits", inputs, [out], domain="com.microsoft",
                                   **{a.name: helper.get_attribute_value(a) for a in node.attribute}),
                  helper.make_node("ReduceSum", [out, "last"], [f"{out}s"], keepdims=1)]
    sums = [n.output[0] for n in nodes if n.op_type == "ReduceSum"]
    nodes.append(helper.make_node("Sum", sums, ["y"]))
    axis = helper.make_tensor("last", TensorProto.INT64, [1], [-1])
    graph = helper.make_graph(nodes, "int4-products",
                              [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["rows", k]) for k in ks],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1])],
                              [*used.values(), axis])
    products = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return products, ks, sum(len(i.raw_data) for i in used.values())


def products_runs(model: Any, ks: dict[int, int], rows: list[int], threads: int) -> dict[str, Callable[[], Any]]:
    """One run of every product at each count of rows ("products N")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {r: {f"x{k}": rng.standard_normal((r, k), dtype=np.float32) for k in ks} for r in rows}
    return {f"products {r}": (lambda f=feeds[r]: session.run(None, f)) for r in rows}


def step_runs(folder: Path, threads: int, steps: tuple[int, ...] = (1, 8)) -> dict[str, Callable[[], Any]]:
    """A whole decode step of the serving engine (handlers/llm_engine.py) at each count in `steps`,
    over 100-token sequences: the products plus attention, norms and the rest of the graph. One row
    runs as one row (a request without a seed: no spare row)."""
    from maas.handlers.llm_engine import BatchEngine

    rng, runs = np.random.default_rng(1), {}
    for n in steps:
        engine = BatchEngine(folder, n, 256, threads, 2**31)
        for i in range(n):
            engine.prefill(str(i), rng.integers(3, 200, 100).tolist())
            engine.activate(str(i))
        runs[f"step {n}"] = (lambda e=engine: e.decode({k: 7 for k in e.key_at}, exact=False))
    return runs


def time_rounds(runs: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds of each run, `rounds` times in a random order each round, and a memory bandwidth
    reading (GB/s) in every round: figures of the same minutes."""
    from maas.llm_bench import memory_bandwidth_gbs

    for run in runs.values():
        run()  # warm: the first run of a shape prepares its buffers
    times: dict[str, list[float]] = {label: [] for label in runs}
    bandwidth: list[float] = []
    order = random.Random(0)
    for n in range(rounds):
        for label in order.sample(list(runs), len(runs)):
            time.sleep(0.05)  # the last run's session's threads stop spinning: two sessions never share the cores
            started = time.perf_counter()
            runs[label]()
            times[label].append(time.perf_counter() - started)
        bandwidth.append(memory_bandwidth_gbs(megabytes=512, rounds=1))
        print(f"round {n + 1}/{rounds}: {bandwidth[-1]} GB/s, " +
              ", ".join(f"{label} {min(t) * 1e3:.1f} ms" for label, t in times.items()), file=sys.stderr, flush=True)
    return times, bandwidth


def summarize(times: dict[str, list[float]], bandwidth: list[float], weights: int) -> dict[str, Any]:
    """Best and median ms of every run; for the products, the weights' read rate and the cost against
    one row; the share of the bandwidth bound a lone stream's products and whole step reach."""
    ms = {label: {"best_ms": round(min(t) * 1e3, 2), "median_ms": round(statistics.median(t) * 1e3, 2)}
          for label, t in times.items()}
    products = {int(label.split()[1]): figures for label, figures in ms.items() if label.startswith("products")}
    one = products[min(products)]
    for figures in products.values():
        figures["weights_gbs"] = round(weights / figures["median_ms"] / 1e6, 1)
        figures["vs_one_row"] = round(figures["median_ms"] / one["median_ms"], 2)
    median_bandwidth = statistics.median(bandwidth)
    bound_ms = weights / median_bandwidth / 1e6  # reading every weight once at the median bandwidth
    steps = {int(label.split()[1]): figures for label, figures in ms.items() if label.startswith("step")}
    return {"bandwidth_gbs": {"best": max(bandwidth), "median": median_bandwidth}, "bound_ms": round(bound_ms, 2),
            "products": {str(r): products[r] for r in sorted(products)},
            "steps": {str(n): steps[n] for n in sorted(steps)},
            "one_row_products_of_bound": round(bound_ms / one["median_ms"], 3),
            "one_row_step_of_bound": round(bound_ms / steps[1]["median_ms"], 3) if 1 in steps else None}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [int(r) for r in result["products"]]
    median = [result["products"][str(r)]["median_ms"] for r in rows]
    steps = {int(n): f["median_ms"] for n, f in result["steps"].items()}
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rows, median, "o-", label="the model's 61 int4 products (MatMulNBits), median")
    ax.plot(list(steps), list(steps.values()), "s", color="black", label="a whole decode step in process, median")
    ax.plot(rows, [median[0] * r for r in rows], ":", color="grey", label="each row on its own (r x one row)")
    if 1 in steps:
        ax.axhline(2 * steps[1], color="red", ls="--", label="2x a lone stream's step: issue 30's latency goal")
    ax.axhline(result["bound_ms"], color="green", ls="--",
               label=f"reading the weights at {result['bandwidth_gbs']['median']} GB/s (the bound)")
    ax.set(xlabel="rows (streams decoded together)", ylabel="ms", xticks=rows, ylim=(0, max(median + list(steps.values())) * 1.35))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("ONNX Runtime int4: a decode step's cost against rows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(result: dict[str, Any]) -> str:
    bw, steps = result["bandwidth_gbs"], result["steps"]
    lines = [f"# ONNX Runtime's int4 kernel against rows ({result['when']})", "",
             f"The {result['n_products']} MatMulNBits products of `{result['model']}` "
             f"({result['weights_bytes'] / 1e6:.0f} MB of weights, its own blocks and scales) alone in one graph, and a "
             "whole decode step of the serving engine, in process, "
             f"{result['threads']} threads, onnxruntime {result['onnxruntime']}: {result['rounds']} rounds, the runs in "
             f"random order each round, a memory read bandwidth reading in each (median {bw['median']}, best "
             f"{bw['best']} GB/s). Made by `benchmarks/int4_kernel_rows.py`.", "",
             "| rows | products median ms | best ms | weights read GB/s | against one row |", "|---|---|---|---|---|"]
    lines += [f"| {r} | {f['median_ms']} | {f['best_ms']} | {f['weights_gbs']} | {f['vs_one_row']}x |"
              for r, f in result["products"].items()]
    lines += ["", "| whole decode step | median ms | best ms |", "|---|---|---|"]
    lines += [f"| {n} row{'s' if n != '1' else ''} | {f['median_ms']} | {f['best_ms']} |" for n, f in steps.items()]
    lines += ["", f"- Reading the weights once at the median bandwidth takes {result['bound_ms']} ms (the bandwidth "
              f"bound). One row's products take {result['one_row_products_of_bound']:.0%} of a token's time at "
              "that bound's pace, i.e. the kernel alone reaches that share of the bound."]
    if result["one_row_step_of_bound"]:
        rest = steps["1"]["median_ms"] - result["products"]["1"]["median_ms"]
        lines.append(f"- A whole one-row step reaches {result['one_row_step_of_bound']:.0%} of the bound in process: "
                     f"attention, norms and the rest of the graph add {rest:.1f} ms (medians) to the products. A served "
                     "stream adds TorchServe's round trip and the handler on top of that.")
    if "8" in steps and "1" in steps:
        lines.append(f"- Eight rows: the products cost {result['products'].get('8', {}).get('vs_one_row')}x one row's, "
                     f"a whole step {steps['8']['median_ms'] / steps['1']['median_ms']:.2f}x a lone stream's.")
    lines += ["", "![step cost against rows](kernel.png)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=build_folder, required=True,
                        help="an int4 build's folder (model.onnx with MatMulNBits), e.g. a bench store's bench-llm-1.0-int4")
    parser.add_argument("--rows", default="1,2,3,4,5,6,7,8,16", help="counts of rows, comma-separated")
    parser.add_argument("--rounds", type=int, default=20, help="runs of each, in turn")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the cores, as a worker)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "int4-kernel-rows")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from maas.core.machine import cores

    rows = sorted({int(r) for r in args.rows.split(",")})
    threads = args.threads or cores()
    model, ks, weights = products_graph(args.model)
    runs = {**products_runs(model, ks, rows, threads), **step_runs(args.model, threads)}
    times, bandwidth = time_rounds(runs, args.rounds)
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model.name,
              "n_products": sum(ks.values()), "weights_bytes": weights, "threads": threads, "rounds": args.rounds,
              "onnxruntime": onnxruntime.__version__, **summarize(times, bandwidth, weights)}
    publish(args.out, result, readme, plot, "kernel.png")


if __name__ == "__main__":
    main()
