"""`maas bench`'s outputs: ratios against the primary peer, report.md, bench.png, results.json."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from maas import bench_peers

log = logging.getLogger(__name__)

WHY_PEERS = {
    "peer eager PyTorch": "the primary peer: what TorchServe's own Hugging Face example serves (AutoModel, eval, "
                          "inference_mode, torch threads = cores // workers); every headline ratio is against it",
    "peer TorchScript": "torch.jit.trace of the same trained module in a stock BaseHandler (digits' peer; for minilm "
                        "a second row for the record: TorchScript is deprecated and re-specialises on each new "
                        "sequence length)",
    "peer OpenVINO": "what an engineer picks to go faster on x86 without maas: the PyTorch model converted to "
                     "OpenVINO IR (as its docs advise), LATENCY hint, threads = cores // workers; on a CPU with "
                     "bfloat16 instructions OpenVINO computes in bfloat16 by default, and the peer keeps that default",
    "peer OpenVINO INT8 (NNCF)": "OpenVINO's own INT8 path, for a user after the fastest CPU serving: NNCF post-training "
                                 "quantization (transformer model type, mixed preset) of that IR, calibrated on the same "
                                 "256 texts as maas's ov-int8 variant, served by the same handler as the OpenVINO peer",
}


def _key(row: dict[str, Any]) -> tuple:
    return row["family"], row["label"], row["lever"], row["workers"], row["batch_size"], row["max_batch_delay_ms"]


def best_layout(result: Any, family: str, label: str, users: int) -> dict[str, Any] | None:
    """The configuration's run at `users` in its fastest worker layout (no lever taken away)."""
    runs = [r for r in result.runs if r["family"] == family and r["label"] == label and not r["lever"] and r["users"] == users]
    return max(runs, key=lambda r: r["rps"], default=None)


def ratios(result: Any) -> list[dict[str, Any]]:
    """Per family and concurrency: each configuration (best layout) against the primary peer (best layout)."""
    ceilings = {_key(c): c["ceiling_rps"] for c in result.configs}
    rows = []
    for family in dict.fromkeys(r["family"] for r in result.runs):
        peer_label = bench_peers.primary_peer(family)
        labels = dict.fromkeys(r["label"] for r in result.runs if r["family"] == family and not r["lever"])
        for users in dict.fromkeys(r["users"] for r in result.runs if r["family"] == family):
            peer = best_layout(result, family, peer_label, users)
            for label in labels:
                run = best_layout(result, family, label, users)
                if not run or not peer or not peer["rps"]:
                    continue
                rows.append({"family": family, "users": users, "label": label, "layout": layout(run),
                             "rps": run["rps"], "vs_peer_rps": run["rps"] / peer["rps"], "p95_ms": run["p95_ms"],
                             "vs_peer_p95": run["p95_ms"] / peer["p95_ms"] if peer["p95_ms"] else None,
                             "peer": peer_label, "peer_layout": layout(peer), "peer_rps": peer["rps"],
                             "peer_p95_ms": peer["p95_ms"], "vs_ceiling": run["rps"] / ceilings[_key(run)],
                             **cores_split(run, ceilings[_key(run)], result.machine["cores"])})
    return rows


def cores_split(run: dict[str, Any], ceiling_rps: float, cores: int) -> dict[str, Any]:
    """Where a served run's cores went, and how fast its workers ran per core they got against
    the in-process ceiling per core (1.0: serving cost the workers nothing; what is left of
    the gap to the ceiling is the cores the frontend and Locust took, or that sat idle)."""
    if "worker_cores" not in run:  # results from before the frontend/worker split
        return {}
    ceiling_cores = min(cores, run["workers"] * run["threads"])
    idle = max(0.0, cores - run["locust_cores"] - run["server_cores"])
    per_core = run["rps"] / run["worker_cores"] if run["worker_cores"] else 0.0
    return {"locust_cores": run["locust_cores"], "frontend_cores": run["frontend_cores"],
            "worker_cores": run["worker_cores"], "idle_cores": idle,
            "worker_efficiency": per_core / (ceiling_rps / ceiling_cores) if ceiling_rps else None,
            "bound": served_bound(run, ceiling_rps, ceiling_cores, cores)}


def served_bound(run: dict[str, Any], ceiling_rps: float, ceiling_cores: int, cores: int) -> float | None:
    """The most served / in-process this machine allows with Locust beside the server: each
    request costs Locust and the frontend the CPU seconds they were measured to take, the
    workers run at their in-process speed per core and no core sits idle. From
    rps x (locust + frontend s per request) + rps x ceiling_cores / ceiling_rps = cores:
    bound = cores / (ceiling_rps x (locust + frontend s per request) + ceiling_cores).
    A configuration faster in process has a lower bound: the load generator costs the same per request."""
    if not run["rps"] or not ceiling_rps:
        return None
    per_request = (run["locust_cores"] + run["frontend_cores"]) / run["rps"]
    return min(1.0, cores / (ceiling_rps * per_request + ceiling_cores))


def levers(result: Any) -> list[dict[str, Any]]:
    """Each lever: the shipped configuration against the same with one change (same layout)."""
    out = []
    for row in (r for r in result.runs if r["lever"]):
        base = next((r for r in result.runs if not r["lever"] and r["family"] == row["family"] and
                     _key(r)[1:] == (row["label"], "", *_key(row)[3:]) and r["users"] == row["users"]), None)
        if base:
            out.append({"family": row["family"], "label": row["label"], "lever": row["lever"], "layout": layout(row),
                        "users": row["users"], "shipped_rps": base["rps"], "changed_rps": row["rps"],
                        "shipped_over_changed": base["rps"] / row["rps"] if row["rps"] else None,
                        "shipped_p95_ms": base["p95_ms"], "changed_p95_ms": row["p95_ms"]})
    return out


def layout(row: dict[str, Any]) -> str:
    """workers x threads, batchSize / maxBatchDelay: "2x1 b4/5ms"."""
    return f"{row['workers']}x{row['threads']} b{row['batch_size']}/{row['max_batch_delay_ms']}ms"


def markdown(result: Any) -> str:
    """The report: how it was measured, the peers, the headline, where the cores went, every run,
    the levers, memory and cold start, the plots and scaling."""
    lines = _method(result)
    for section in (_peers, _headline, _cores, _every_run, _levers_and_padding, _memory):
        lines += section(result)
    lines += ["", "![throughput and p95 per configuration](bench.png)", ""]
    lines += scaling_markdown(result)
    return "\n".join(lines)


def _method(result: Any) -> list[str]:
    """The title, versions and the measuring protocol."""
    m, plan = result.machine, result.plan
    lines = [
        f"# maas bench: {m['cores']} cores ({m['cpu']}, {m.get('isa', 'instruction set not recorded')}), {m['date']}",
        "",
        f"torch {m['torch']}, onnxruntime {m['onnxruntime-gpu']} (CPU provider), TorchServe {m['torchserve']}, "
        f"Locust {m['locust']}, transformers {m['transformers']}, OpenVINO {m['openvino']}, Python {m['python']}. "
        f"One run, one machine, side by side; each configuration alone on the server. Closed loop, "
        f"{plan['run_time_s']} s measured after {plan['warmup_s']} s warm-up, one request = one item. Locust runs on "
        f"the same cores as TorchServe (its CPU share, over the measured window, is in the table). Layout = "
        f"workers x intra-op threads (every handler, peers included, uses cores // workers), batchSize / "
        f"maxBatchDelay; every configuration runs in every layout (a record-only peer in the first) and is "
        f"compared in its fastest. Before the first measurement, {plan.get('frontend_warmup_s', 0)} s of "
        f"unmeasured load warm the frontend's JIT, so no configuration pays for its compilation. Served runs are "
        f"repeated in {plan.get('rounds', 1)} interleaved rounds (the order reversed every other round); each "
        f"figure is its point's fastest round (noise on a shared machine only slows a run down), every round's "
        f"req/s is in the table of every run. Each configuration's in-process ceiling is measured in every round "
        f"too (from the second, just before its served runs) and its fastest is the one compared.",
        "",
    ]
    return lines


def _peers(result: Any) -> list[str]:
    """Each peer and why it is the one a user would run."""
    plan = result.plan
    lines: list[str] = ["## Peers, and why", ""]
    for family in plan["families"]:
        for peer in bench_peers.peers_for(family):
            label = bench_peers.LABELS[peer]
            lines.append(f"- **{family}, {label}**: {WHY_PEERS.get(label, '')}")
    if result.equivalence:
        lines += ["", "Same weights, same answers (measured through the servers, 32 requests): " +
                  "; ".join(f"{k} {v:.6f}" for k, v in result.equivalence.items()) + "."]
    return lines


def _headline(result: Any) -> list[str]:
    """Each configuration against the primary peer, each in its fastest layout."""
    lines: list[str] = []
    lines += ["", "## Headline: against the primary peer, each in its fastest layout", "",
              "| model | users | configuration | its fastest layout | req/s | x peer req/s | p95 ms | peer p95 ms "
              "| served / in-process |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in ratios(result):
        lines.append(f"| {r['family']} | {r['users']} | {r['label']} | {r['layout']} | {r['rps']:.0f} | "
                     f"{r['vs_peer_rps']:.2f}x | {r['p95_ms']:.0f} | {r['peer_p95_ms']:.0f} | {r['vs_ceiling']:.2f} |")
    return lines


def _cores(result: Any) -> list[str]:
    """Where the cores went: Locust, the frontend, the workers, idle."""
    lines: list[str] = []
    split = [r for r in ratios(result) if r.get("worker_efficiency") is not None]
    if split:
        lines += ["", f"Where the {result.machine['cores']} cores went in those runs: served / in-process is what is "
                  "left after Locust and TorchServe's frontend take their share (and cores sit idle between a "
                  "worker's batches); per worker core is the workers' req/s per core they got over the "
                  "in-process ceiling's per core (1.00: serving cost the workers nothing). Bound is the most served / "
                  "in-process could be on this machine with Locust on the same cores: Locust and the frontend cost "
                  "what they were measured to cost per request, the workers run at their in-process speed and no "
                  "core idles (cores / (in-process req/s x (Locust + frontend) CPU s per request + worker cores)). "
                  "The faster a configuration runs in process, the lower its bound.", "",
                  "| model | users | configuration | served / in-process | bound | Locust cores | frontend cores | "
                  "worker cores | idle cores | per worker core vs in-process |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['family']} | {r['users']} | {r['label']} | {r['vs_ceiling']:.2f} | "
                  f"{'' if r['bound'] is None else format(r['bound'], '.2f')} | "
                  f"{r['locust_cores']:.2f} | {r['frontend_cores']:.2f} | {r['worker_cores']:.2f} | "
                  f"{r['idle_cores']:.2f} | {r['worker_efficiency']:.2f} |" for r in split]
    return lines


def _every_run(result: Any) -> list[str]:
    """Every served run with its rounds, latencies and CPU shares."""
    ceilings = {_key(c): c for c in result.configs}
    lines: list[str] = []
    lines += ["", "## Every served run", "",
              "| model | configuration | layout | users | req/s | each round | p50 ms | p95 ms | p99 ms | errors | "
              "in-process req/s | "
              "served / in-process | Locust cores | frontend cores | worker cores |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.runs:
        c = ceilings[_key(r)]
        name = r["label"] + (f" ({r['lever']})" if r["lever"] else "")
        rounds = " / ".join(f"{x:.0f}" for x in r.get("rounds_rps", [r["rps"]]))
        lines.append(f"| {r['family']} | {name} | {layout(r)} | {r['users']} | {r['rps']:.0f} | {rounds} | "
                     f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} | {c['ceiling_rps']:.0f} | "
                     f"{r['rps'] / c['ceiling_rps']:.2f} | {r['locust_cores']:.2f} | {r.get('frontend_cores', 0):.2f} | "
                     f"{r.get('worker_cores', r['server_cores']):.2f} |")
    return lines


def _levers_and_padding(result: Any) -> list[str]:
    """The levers, one change at a time, and how much of a padded batch is padding."""
    lines: list[str] = []
    lever_rows = levers(result)
    if lever_rows:
        lines += ["", "## Levers, one change at a time (ours INT8 as shipped vs the same with one change)", "",
                  "| change | layout | users | req/s shipped | req/s changed | shipped / changed | p95 ms shipped / changed |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['lever']} | {r['layout']} | {r['users']} | {r['shipped_rps']:.0f} | {r['changed_rps']:.0f} | "
                  f"{r['shipped_over_changed']:.2f}x | {r['shipped_p95_ms']:.0f} / {r['changed_p95_ms']:.0f} |"
                  for r in lever_rows]
    if result.padding:
        p = result.padding
        lines += ["", f"Padding (minilm, the load test's sentences, batches of {p['batch']}, {p['mean_tokens']:.1f} "
                  f"tokens on average): {100 * p['waste_padded_to_longest']:.0f} % of the tokens computed are padding "
                  f"when a batch is padded to its longest; {100 * p['waste_length_buckets']:.0f} % with length buckets "
                  f"({p['runs_per_batch']:.1f} runs per batch)."]
    return lines


def _memory(result: Any) -> list[str]:
    """Memory and cold start per configuration, with every round's in-process ceiling."""
    lines: list[str] = []
    lines += ["", "## Memory and cold start", "",
              "| model | configuration | layout | register to READY s | RSS per worker MB | in-process req/s | "
              "each round |",
              "|---|---|---|---|---|---|---|"]
    for c in result.configs:
        rss = "" if c["worker_rss_mb"] is None else f"{c['worker_rss_mb']:.0f}"
        name = c["label"] + (f" ({c['lever']})" if c["lever"] else "")
        rounds = " / ".join(f"{r:.0f}" for r in c.get("ceiling_rounds_rps", [c["ceiling_rps"]]))
        lines.append(f"| {c['family']} | {name} | {layout(c)} | "
                     f"{c['register_to_ready_s']:.1f} | {rss} | {c['ceiling_rps']:.0f} | {rounds} |")
    return lines


def sequence_table(result: Any) -> list[dict[str, Any]]:
    """Served req/s and p95 per (configuration, input): the load test's sentences (the main runs,
    same layout and users) and each longer-text payload."""
    rows = []
    for run in result.sequence_runs:
        short = next((r for r in result.runs if not r["lever"] and r["family"] == run["family"] and
                      r["label"] == run["label"] and r["users"] == run["users"] and layout(r) == layout(run)), None)
        if short and not any(r["label"] == run["label"] and r["payload"] == short["payload"] for r in rows):
            rows.append(short)
        rows.append(run)
    return rows


def scaling_markdown(result: Any) -> list[str]:
    if not result.sequence_runs and not result.batch_runs:
        return []
    lines = ["## Scaling with the work", ""]
    seq = sequence_table(result)
    if seq:
        mean = result.padding.get("mean_tokens")
        lines += [f"Served, {seq[0]['users']} users, {layout(seq[0])}: the load test's sentences"
                  f"{f' ({mean:.0f} tokens on average)' if mean else ''} and texts of exactly 128 and 256 tokens "
                  f"(256 is minilm's limit).", "",
                  "| configuration | input | req/s | p50 ms | p95 ms | p99 ms | errors | x peer req/s |",
                  "|---|---|---|---|---|---|---|---|"]
        peer = {r["payload"]: r for r in seq if r["label"] == bench_peers.primary_peer(r["family"])}
        for r in seq:
            base = peer.get(r["payload"])
            ratio = f"{r['rps'] / base['rps']:.2f}x" if base and base["rps"] else ""
            lines.append(f"| {r['label']} | {_input_name(r['payload'])} | {r['rps']:.0f} | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} | {ratio} |")
    if result.batch_runs:
        first = result.batch_runs[0]
        lines += ["", f"In-process (no server), {first['workers']} workers together, the load test's sentences: "
                  f"items/s and the time one `handle()` of a whole batch takes.", "",
                  "| configuration | batch | items/s | batch p50 ms | batch p95 ms |", "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['batch']} | {r['items_per_s']:.0f} | {r['batch_p50_ms']:.1f} | "
                  f"{r['batch_p95_ms']:.1f} |" for r in result.batch_runs]
    lines += ["", "![throughput and p95 as inputs and batches grow](scaling.png)", ""]
    return lines


def _tokens(payload: str) -> int | None:
    """Tokens per text of a fixed-length payload ("minilm-128"), None for the load test's own."""
    suffix = payload.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def _input_name(payload: str) -> str:
    tokens = _tokens(payload)
    return f"{tokens} tokens" if tokens else "sentences"


def plot(result: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in result.runs))
    fig, axes = plt.subplots(len(families), 2, figsize=(13, 4.2 * len(families)), squeeze=False)
    for i, family in enumerate(families):
        rows = [r for r in ratios(result) if r["family"] == family]
        labels = list(dict.fromkeys(r["label"] for r in rows))
        users = list(dict.fromkeys(r["users"] for r in rows))
        width = 0.8 / max(1, len(users))
        for j, u in enumerate(users):
            at = {r["label"]: r for r in rows if r["users"] == u}
            xs = [k + j * width for k in range(len(labels))]
            axes[i][0].bar(xs, [at[name]["rps"] if name in at else 0 for name in labels], width, label=f"{u} users")
            axes[i][1].bar(xs, [at[name]["p95_ms"] if name in at else 0 for name in labels], width, label=f"{u} users")
        for ax, what, unit in ((axes[i][0], "throughput (fastest layout)", "req/s"), (axes[i][1], "p95 latency", "ms")):
            ax.set_xticks([k + width * (len(users) - 1) / 2 for k in range(len(labels))])
            ax.set_xticklabels(labels, fontsize=8, rotation=35, ha="right")  # long names, many bars: slanted, none overlap
            ax.set(title=f"{family}: {what}", ylabel=unit)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(result: Any, path: Path) -> Path:
    """Throughput and p95 against input length (served) and batch size (in-process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.4))
    seq = sequence_table(result)
    tokens = {r["payload"]: _tokens(r["payload"]) or result.padding.get("mean_tokens", 0.0) for r in seq}
    for label in dict.fromkeys(r["label"] for r in seq):
        rows = sorted((r for r in seq if r["label"] == label), key=lambda r: tokens[r["payload"]])
        xs = [tokens[r["payload"]] for r in rows]
        axes[0][0].plot(xs, [r["rps"] for r in rows], marker="o", label=label)
        axes[0][1].plot(xs, [r["p95_ms"] for r in rows], marker="o", label=label)
    for label in dict.fromkeys(r["label"] for r in result.batch_runs):
        rows = [r for r in result.batch_runs if r["label"] == label]
        axes[1][0].plot([r["batch"] for r in rows], [r["items_per_s"] for r in rows], marker="o", label=label)
        axes[1][1].plot([r["batch"] for r in rows], [r["batch_p95_ms"] for r in rows], marker="o", label=label)
    users = f", {seq[0]['users']} users" if seq else ""
    titles = ((f"served throughput vs tokens per text{users}", "tokens per text", "req/s"),
              (f"served p95 vs tokens per text{users}", "tokens per text", "ms"),
              ("in-process throughput vs batch size", "batch size", "items/s"),
              ("in-process p95 of one batch vs batch size", "batch size", "ms"))
    for ax, (title, xlabel, ylabel) in zip(axes.flat, titles):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if "batch" in xlabel:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: Any, out_dir: Path) -> None:
    payload = {**asdict(result), "ratios": ratios(result), "levers": levers(result)}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(result))
    plot(result, out_dir / "bench.png")
    if result.sequence_runs or result.batch_runs:
        plot_scaling(result, out_dir / "scaling.png")
    log.info("bench: wrote %s, %s and %s", out_dir / "results.json", out_dir / "report.md", out_dir / "bench.png")
