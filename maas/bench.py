"""`maas bench`: our ONNX Runtime handlers against TorchServe's stock PyTorch path, side by side.

For each model family (minilm, digits), in one run on one machine:
  ceiling   ONNX Runtime in-process on the same requests and batch size (no server, no HTTP)
  ours      TorchServe + the maas handler: FP32 and, for minilm, the INT8 variant
  peer      TorchServe + a stock BaseHandler running the same weights as TorchScript
at several client concurrencies (Locust, closed loop), same workers and batching for all.
Then a sweep of workers x batchSize x maxBatchDelay for ours. The CPU seconds Locust and
TorchServe used are measured beside every run, so a saturated load generator shows.

Writes results.json, report.md and bench.png into the output folder.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from maas.loadtest import LoadTest, run as run_locust
from maas.slo import SLO, Thresholds
from maas.properties import on_free_loopback_ports, read_properties, write_properties
from maas.server import ServerLayout, TorchServe

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
PEER_HANDLER = ROOT / "benchmarks" / "peer" / "torch_peer.py"
PAYLOADS = {"minilm": "minilm", "digits": "digits-json"}


@dataclass(frozen=True)
class Served:
    """One served configuration: a model name (and version) on the bench server."""

    family: str
    label: str  # "ours FP32", "ours INT8", "peer TorchScript"
    model: str
    version: str = ""


@dataclass
class BenchPlan:
    families: tuple[str, ...] = ("minilm", "digits")
    users: tuple[int, ...] = (1, 8, 16)
    run_time_s: int = 15
    warmup_s: int = 3
    ceiling_s: float = 8.0
    sweep: bool = True
    sweep_grid: tuple[tuple[int, int, int], ...] = (
        (1, 1, 0), (1, 8, 5), (1, 8, 20), (1, 16, 10), (2, 4, 5), (2, 8, 10))
    sweep_users: int = 16


@dataclass
class BenchResult:
    machine: dict[str, Any]
    plan: dict[str, Any]
    ceilings: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    equivalence: dict[str, Any] = field(default_factory=dict)


# ---- building the store -----------------------------------------------------------------
def build_store(families: tuple[str, ...], store: Path, work: Path) -> None:
    """Ours (FP32; minilm also INT8) and the peer's archives; existing archives are reused."""
    from export.build import build

    for family in families:
        if not (store / f"{family}.mar").exists():
            build(family, work, store)
        if family == "minilm" and not (store / "minilm-1.0-int8.mar").exists():
            build(family, work, store, variant="int8")
        if not (store / f"{family}-torch.mar").exists():
            build_peer(family, work / f"{family}-torch", store)


def build_peer(family: str, work: Path, store: Path) -> Path:
    """The peer archive: the same trained weights traced to TorchScript, stock BaseHandler."""
    import torch

    from export import zoo

    model = zoo.get(family)
    trained = model.train()
    work.mkdir(parents=True, exist_ok=True)
    names = model.spec.input_names
    example = tuple(torch.from_numpy(trained.sample[n][:2]) for n in names)
    traced = torch.jit.trace(trained.module.eval(), example, check_trace=False)
    traced.save(str(work / "peer.pt"))
    (work / "peer.json").write_text(json.dumps({"kind": family}))
    (work / "model-config.yaml").write_text(yaml.safe_dump(model.spec.model_config(), sort_keys=False))
    extra = [work / "peer.json"] + [Path(a) for a in trained.assets]
    cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", f"{family}-torch",
           "--version", "1.0", "--serialized-file", str(work / "peer.pt"), "--handler", str(PEER_HANDLER),
           "--extra-files", ",".join(str(p) for p in extra), "--config-file", str(work / "model-config.yaml"),
           "--export-path", str(store), "--force"]
    subprocess.run(cmd, check=True, capture_output=True)
    log.info("peer archive %s-torch.mar built (TorchScript, %s)", family, work / "peer.pt")
    return store / f"{family}-torch.mar"


def sweep_archive(store: Path, src: str, version: str, workers: int, batch: int, delay: int) -> None:
    """A copy of `src` registering as `version` with other batching/worker settings."""
    with zipfile.ZipFile(store / src) as zin, zipfile.ZipFile(store / f"sweep-{version}.mar", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest).encode()
            elif item.filename == "model-config.yaml":
                config = yaml.safe_load(data)
                config.update(minWorkers=workers, maxWorkers=workers, batchSize=batch, maxBatchDelay=delay)
                data = yaml.safe_dump(config, sort_keys=False).encode()
            zout.writestr(item, data)


# ---- in-process ceiling -----------------------------------------------------------------
def _payloads():
    """loadtests/payloads.py, the module Locust's users draw their requests from."""
    from maas.loadtests import payloads

    return payloads


def _requests(family: str, n: int = 512) -> list[Any]:
    """The same request contents Locust sends: sentences, or load_digits pixel grids."""
    payloads = _payloads()

    pool = payloads.for_model(PAYLOADS[family], seed=0)
    return [json.loads(b)[("text" if family == "minilm" else "pixels")] for b in pool.bodies[:n]]


def _batch_inputs(family: str, items: list[Any]) -> dict[str, np.ndarray]:
    if family == "minilm":
        from export.zoo.minilm import encode

        return encode(items)
    return {"pixels": np.asarray(items, dtype=np.float32)[:, None, :, :]}


def measure_ceiling(family: str, label: str, run_batch: Callable[[dict[str, np.ndarray]], Any], batch: int,
                    seconds: float) -> dict[str, Any]:
    """Items/s running `batch`-sized batches back to back, inputs prepared per batch as a server would."""
    items = _requests(family)
    run_batch(_batch_inputs(family, items[:batch]))  # warm-up
    latencies, done, i = [], 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [items[(i + k) % len(items)] for k in range(batch)]
        i += batch
        t = time.perf_counter()
        run_batch(_batch_inputs(family, chunk))
        latencies.append((time.perf_counter() - t) * 1000)
        done += batch
    elapsed = time.perf_counter() - start
    result = {"family": family, "label": label, "batch": batch, "items_per_s": done / elapsed,
              "batch_p50_ms": float(np.percentile(latencies, 50)), "batch_p95_ms": float(np.percentile(latencies, 95))}
    log.info("ceiling %s %s: %.0f items/s (batch %d)", family, label, result["items_per_s"], batch)
    return result


def ceilings(family: str, store: Path, work: Path, threads: int, batch: int, seconds: float) -> list[dict[str, Any]]:
    import onnxruntime as ort
    import torch

    out = []
    archives = [("ours FP32", f"{family}.mar")] + ([("ours INT8", "minilm-1.0-int8.mar")] if family == "minilm" else [])
    for label, name in archives:
        with zipfile.ZipFile(store / name) as z:
            path = work / f"ceiling-{name}.onnx"
            path.write_bytes(z.read("model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out.append(measure_ceiling(family, label, lambda x, s=session: s.run(None, x), batch, seconds))
    with zipfile.ZipFile(store / f"{family}-torch.mar") as z:
        (work / "peer.pt").write_bytes(z.read("peer.pt"))
    torch.set_num_threads(threads)
    traced = torch.jit.load(str(work / "peer.pt"))

    def torch_batch(x: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return traced(*(torch.from_numpy(v) for v in x.values()))
    out.append(measure_ceiling(family, "peer TorchScript", torch_batch, batch, seconds))
    return out


# ---- served runs ------------------------------------------------------------------------
def _process_cpu(pid: int | None) -> float:
    """CPU seconds of a process and all its children (TorchServe: Java frontend + workers)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def served_run(ts: TorchServe, served: Served, users: int, plan: BenchPlan, reports: Path) -> dict[str, Any]:
    slo = SLO(users=users, spawn_rate=float(users), run_time_s=plan.run_time_s, warmup_s=plan.warmup_s,
              thresholds=Thresholds(max_p95_ms=1e9, max_p99_ms=1e9, max_error_ratio=1.0, min_rps=0.0))
    test = LoadTest(served.model, slo, version=served.version, payload=PAYLOADS[served.family],
                    label=f"bench-{served.label.replace(' ', '-').lower()}-{users}u")
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, wall = _process_cpu(ts.pid()), time.perf_counter()
    summary, folder = run_locust(test, ts.endpoints.inference, ts.layout.key_file, reports)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    locust_cpu = (after.ru_utime - before_children.ru_utime) + (after.ru_stime - before_children.ru_stime)
    row = {"family": served.family, "label": served.label, "model": served.model, "version": served.version,
           "users": users, "rps": summary["rps"], "p50_ms": summary["p50_ms"], "p95_ms": summary["p95_ms"],
           "p99_ms": summary["p99_ms"], "requests": summary["requests"], "failures": summary["failures"],
           "locust_cores": locust_cpu / wall, "server_cores": (_process_cpu(ts.pid()) - server_before) / wall,
           "report": str(folder)}
    log.info("%s %s, %d users: %.0f req/s, p95 %.0f ms; Locust %.2f cores, TorchServe %.2f cores",
             served.family, served.label, users, row["rps"], row["p95_ms"], row["locust_cores"], row["server_cores"])
    return row


def check_equivalence(ts: TorchServe, families: tuple[str, ...]) -> dict[str, Any]:
    """Peer and ours answer the same (same weights): embeddings' cosine, digits' top-1 agreement."""
    payloads = _payloads()

    out: dict[str, Any] = {}
    if "digits" in families:
        bodies = payloads.for_model("digits-json", seed=1).bodies[:32]
        top = lambda m: [max(a, key=a.get) for a in (ts.client.predict_json(m, json.loads(b)) for b in bodies)]  # noqa: E731
        out["digits_top1_agreement_ours_vs_peer"] = float(np.mean(np.array(top("digits")) == np.array(top("digits-torch"))))
    if "minilm" not in families:
        return out
    bodies = payloads.for_model("minilm", seed=1).bodies[:16]
    ours = [ts.client.predict_json("minilm", json.loads(b))["embedding"] for b in bodies]
    peer = [ts.client.predict_json("minilm-torch", json.loads(b))["embedding"] for b in bodies]
    a, b = np.asarray(ours), np.asarray(peer)
    out["minilm_worst_cosine_ours_vs_peer"] = float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    return out


def bench_server(store: Path, run_dir: Path, config: Path) -> TorchServe:
    """The project's config on free loopback ports, on the bench store, loading nothing at start."""
    props = on_free_loopback_ports(read_properties(config))
    props.update(metrics_config=str((config.parent / props.get("metrics_config", "metrics.yaml")).resolve()))
    run_dir.mkdir(parents=True, exist_ok=True)
    props.pop("load_models", None)  # configurations are registered one at a time
    write_properties(run_dir / "config.properties", props, header="maas bench server")
    return TorchServe(ServerLayout(run_dir / "config.properties", store, run_dir))


def threads_for(family: str) -> int:
    from export.build import spec_of

    s = spec_of(family).serving
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return s.intra_op_threads or max(1, cores // s.max_workers)


def served_configs(family: str) -> list[Served]:
    configs = [Served(family, "peer TorchScript", f"{family}-torch", "1.0"), Served(family, "ours FP32", family, "1.0")]
    if family == "minilm":
        configs.append(Served(family, "ours INT8", family, "1.0-int8"))
    return configs


def run_bench(plan: BenchPlan, out_dir: Path, store: Path | None = None,
              config: Path = ROOT / "config.properties") -> BenchResult:
    """Everything in the module docstring; returns (and writes) the results."""
    from export.build import spec_of
    from maas.deploy import deploy, undeploy

    out_dir = out_dir.resolve()  # TorchServe runs in out_dir/run: every path it gets is absolute
    out_dir.mkdir(parents=True, exist_ok=True)
    work, reports = out_dir / "work", out_dir / "locust"
    store = (store or out_dir / "store").resolve()
    store.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    for stale in store.glob("sweep-*.mar"):
        stale.unlink()
    log.info("bench: building archives into %s (existing ones are reused)", store)
    build_store(plan.families, store, work)
    result = BenchResult(machine=machine_info(), plan=asdict(plan))

    for family in plan.families:
        batch = spec_of(family).serving.batch_size
        result.ceilings += ceilings(family, store, work, threads_for(family), batch, plan.ceiling_s)

    ts = bench_server(store, out_dir / "run", config)
    ts.start(timeout=300)
    try:
        for family in plan.families:
            configs = served_configs(family)
            for served in configs:
                deploy(ts.client, store, served.model, served.version)
            result.equivalence.update(check_equivalence(ts, (family,)))
            # One configuration registered at a time: idle workers of the others stay out of its run.
            for served in reversed(configs):  # TorchServe refuses to drop a default version first
                undeploy(ts.client, served.model, served.version)
            for served in configs:
                deploy(ts.client, store, served.model, served.version)
                for users in plan.users:
                    result.runs.append(served_run(ts, served, users, plan, reports))
                undeploy(ts.client, served.model, served.version)
        log.info("peer vs ours: %s", result.equivalence)
        if plan.sweep and "minilm" in plan.families:
            src = "minilm-1.0-int8.mar"
            for workers, batch, delay in plan.sweep_grid:
                version = f"w{workers}-b{batch}-d{delay}"
                sweep_archive(store, src, version, workers, batch, delay)
                deploy(ts.client, store, "minilm", version, workers=workers)
                row = served_run(ts, Served("minilm", f"ours INT8 {version}", "minilm", version),
                                 plan.sweep_users, plan, reports)
                row.update(workers=workers, batch_size=batch, max_batch_delay_ms=delay)
                result.sweep.append(row)
                undeploy(ts.client, "minilm", version)
    finally:
        ts.stop()
    write_outputs(result, out_dir)
    return result


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    import platform

    return {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": metadata.version("torch"), "onnxruntime": metadata.version("onnxruntime-gpu"),
            "torchserve": metadata.version("torchserve"), "locust": metadata.version("locust"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ---- outputs ----------------------------------------------------------------------------
def ratios(result: BenchResult) -> list[dict[str, Any]]:
    """Per family and concurrency: ours / peer throughput and p95, and served / in-process ceiling."""
    ceiling = {(c["family"], c["label"]): c["items_per_s"] for c in result.ceilings}
    rows = []
    for family in dict.fromkeys(r["family"] for r in result.runs):
        for users in dict.fromkeys(r["users"] for r in result.runs if r["family"] == family):
            at = {r["label"]: r for r in result.runs if r["family"] == family and r["users"] == users}
            peer = at.get("peer TorchScript")
            row: dict[str, Any] = {"family": family, "users": users}
            for label in ("ours FP32", "ours INT8"):
                if label in at and peer and peer["rps"]:
                    key = label.split()[1].lower()
                    row[f"{key}_vs_peer_rps"] = at[label]["rps"] / peer["rps"]
                    row[f"{key}_p95_ms"], row["peer_p95_ms"] = at[label]["p95_ms"], peer["p95_ms"]
                    row[f"{key}_vs_ceiling"] = at[label]["rps"] / ceiling[(family, label)]
            rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 0) -> str:
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def markdown(result: BenchResult) -> str:
    m, plan = result.machine, result.plan
    lines = [
        f"# maas bench: {m['cores']} cores, {m['date']}",
        "",
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, TorchServe {m['torchserve']}, Locust {m['locust']}, "
        f"Python {m['python']}. One run, one machine, side by side. Locust runs on the same cores as "
        f"TorchServe (its CPU share is in the table). Served runs: closed loop, {plan['run_time_s']} s measured "
        f"after {plan['warmup_s']} s warm-up; 1 worker and the archive's batching for every configuration.",
        "",
        "## In-process ceiling (no server)",
        "",
        "| model | engine | batch | items/s | batch p50 ms | batch p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {c['family']} | {c['label']} | {c['batch']} | {c['items_per_s']:.0f} | {c['batch_p50_ms']:.1f} | "
              f"{c['batch_p95_ms']:.1f} |" for c in result.ceilings]
    lines += ["", "## Served through TorchServe", "",
              "| model | configuration | users | req/s | p50 ms | p95 ms | p99 ms | errors | Locust cores | TorchServe cores |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['label']} | {r['users']} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['failures']} | {r['locust_cores']:.2f} | {r['server_cores']:.2f} |"
              for r in result.runs]
    lines += ["", "## Ratios", "",
              "| model | users | FP32 / peer req/s | INT8 / peer req/s | p95 ms peer / FP32 / INT8 | FP32 served / ceiling | INT8 served / ceiling |",
              "|---|---|---|---|---|---|---|"]
    for r in ratios(result):
        p95 = " / ".join(_fmt(r.get(k)) for k in ("peer_p95_ms", "fp32_p95_ms", "int8_p95_ms") if r.get(k) is not None)
        lines.append(f"| {r['family']} | {r['users']} | {_fmt(r.get('fp32_vs_peer_rps'), 2)}x | "
                     f"{_fmt(r.get('int8_vs_peer_rps'), 2)}{'x' if r.get('int8_vs_peer_rps') else ''} | {p95} | "
                     f"{_fmt(r.get('fp32_vs_ceiling'), 2)} | {_fmt(r.get('int8_vs_ceiling'), 2)} |")
    if result.sweep:
        lines += ["", f"## Sweep: minilm INT8, {plan['sweep_users']} users", "",
                  "| workers | batchSize | maxBatchDelay ms | req/s | p50 ms | p95 ms | p99 ms | errors |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['batch_size']} | {r['max_batch_delay_ms']} | {r['rps']:.0f} | {r['p50_ms']:.0f} | "
                  f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} |" for r in result.sweep]
    if result.equivalence:
        lines += ["", "Same weights, same answers: " + ", ".join(f"{k} {v:.6f}" for k, v in result.equivalence.items()) + "."]
    lines += ["", "![throughput and p95 per configuration](bench.png)", ""]
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in result.runs))
    rows = len(families) + (1 if result.sweep else 0)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.6 * rows), squeeze=False)
    for i, family in enumerate(families):
        for label in dict.fromkeys(r["label"] for r in result.runs if r["family"] == family):
            runs = [r for r in result.runs if r["family"] == family and r["label"] == label]
            line, = axes[i][0].plot([r["users"] for r in runs], [r["rps"] for r in runs], marker="o", label=label)
            axes[i][1].plot([r["users"] for r in runs], [r["p95_ms"] for r in runs], marker="o", label=label,
                            color=line.get_color())
            ceiling = next((c["items_per_s"] for c in result.ceilings if c["family"] == family and c["label"] == label), None)
            if ceiling:
                axes[i][0].axhline(ceiling, ls="--", lw=1, color=line.get_color(), label=f"{label} in-process ceiling")
        axes[i][0].set(title=f"{family}: throughput", xlabel="concurrent users", ylabel="req/s")
        axes[i][1].set(title=f"{family}: p95 latency", xlabel="concurrent users", ylabel="ms")
        axes[i][0].legend(fontsize=7)
        axes[i][1].legend(fontsize=7)
    if result.sweep:
        ax, ax2 = axes[-1]
        names = [f"w{r['workers']} b{r['batch_size']} d{r['max_batch_delay_ms']}" for r in result.sweep]
        ax.bar(names, [r["rps"] for r in result.sweep])
        ax.set(title=f"minilm INT8 sweep ({result.plan['sweep_users']} users): req/s", ylabel="req/s")
        ax2.bar(names, [r["p95_ms"] for r in result.sweep], color="tab:orange")
        ax2.set(title="sweep: p95 latency", ylabel="ms")
        for a in (ax, ax2):
            a.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: BenchResult, out_dir: Path) -> None:
    payload = {**asdict(result), "ratios": ratios(result)}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(result))
    plot(result, out_dir / "bench.png")
    log.info("bench: wrote %s, %s and %s", out_dir / "results.json", out_dir / "report.md", out_dir / "bench.png")


def publish(out_dir: Path, dest: Path) -> None:
    """Copy the report, plot and JSON (not the archives or Locust folders) to a committed place."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "bench.png", "results.json"):
        shutil.copy(out_dir / name, dest / name)
