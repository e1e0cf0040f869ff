"""export-triton, export-kserve and bench: the same archives elsewhere, and measured."""
from __future__ import annotations

from pathlib import Path

import click

from maas.core.clock import stamp
from maas.project import Project


@click.command("export-triton")
@click.argument("models", nargs=-1)
@click.option("--out", "out_dir", default="model_repository", show_default=True, help="Triton model repository")
@click.option("--gpu", is_flag=True, help="instance_group KIND_GPU instead of KIND_CPU")
@click.pass_obj
def export_triton(project: Project, models: tuple[str, ...], out_dir: str, gpu: bool) -> None:
    """Write MODELS' verified ONNX files (default: all in the store) as a Triton model repository."""
    from maas.core.store import maas_archives
    from maas.triton import export

    archives, skipped = maas_archives(project.model_store)
    for line in skipped:
        click.echo(line, err=True)
    names = models or tuple(sorted({a.model for a in archives}))
    for name in names:
        folder = export(project.model_store, name, Path(out_dir), gpu=gpu)
        click.echo(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx")


@click.command("export-kserve")
@click.argument("models", nargs=-1)
@click.option("--kserve-dir", default="deploy/kserve", show_default=True,
              help="InferenceServices, ServingRuntime and storage/<model>/ trees")
@click.option("--kubernetes-dir", default="deploy/kubernetes", show_default=True,
              help="plain Kubernetes Deployment + Service + NetworkPolicy per model")
@click.option("--storage-uri", default="pvc://maas-models", show_default=True,
              help="where storage/ is uploaded; each InferenceService reads <uri>/<model>")
@click.pass_obj
def export_kserve(project: Project, models: tuple[str, ...], kserve_dir: str, kubernetes_dir: str,
                  storage_uri: str) -> None:
    """Write KServe and Kubernetes manifests for MODELS (default: every model built into the store)
    and copy their archives into KServe's storage layout (config/config.properties + model-store/);
    a language model gets its storage tree only."""
    from maas.core.store import is_generative, store_archives
    from maas.export.clients import model_names, spec_for
    from maas.kube import export_all, write_llm_storage

    store = project.model_store
    # Language models (archive folders of `maas package --llm`): a storage tree each, for the same image.
    llms = {a.model: a for a in (store_archives(store) if store.is_dir() else []) if is_generative(a)
            and (not models or a.model in models)}
    # By default what is built: manifests of models without an archive would be services that never start
    built = {a.model for a in store_archives(store)} if store.is_dir() else set()
    names = [m for m in models or [n for n in model_names(store) if n in built] if m not in llms]
    if not names and not llms:
        raise click.UsageError(f"no archive in {store}: build models first (`maas build`), or name the models "
                               "to write manifests for")
    specs = [spec_for(m, store) for m in names]
    result = export_all(specs, project.config, store, Path(kserve_dir), Path(kubernetes_dir),
                        storage_uri, project.root)
    for path in result.manifests + result.archives:
        click.echo(f"wrote {path}")
    for name, archive in llms.items():
        folder = write_llm_storage(Path(kserve_dir) / "storage" / name, archive, project.config)
        click.echo(f"wrote {folder} (a language model: its tree serves the OpenAI API on the same image; "
                   "no InferenceService, as KServe's v2 protocol does not carry it)")
    if result.missing:
        click.echo(f"not built, so no archive in storage/ for: {', '.join(result.missing)} (run `maas build`)", err=True)


@click.command("bench")
@click.option("--models", "families", default="minilm", show_default=True, help="comma-separated: minilm, digits")
@click.option("--users", default=None, help="client concurrencies (Locust users) [8,16; --llm: 1,4,8,16]")
@click.option("--layouts", default="2:4:5,2:8:5", show_default=True,
              help="WORKERS:BATCH:DELAY_MS layouts every configuration runs in (threads = cores // workers)")
@click.option("--run-time", "run_time_s", type=int, default=10, show_default=True,
              help="measured seconds per run and round")
@click.option("--warmup", "warmup_s", type=int, default=3, show_default=True, help="warm-up seconds per run")
@click.option("--no-levers", is_flag=True, help="skip the runs that take one optimisation away at a time")
@click.option("--no-scaling", is_flag=True, help="skip the longer-text and batch-size runs (minilm)")
@click.option("--rounds", type=int,
              help="interleaved rounds of served runs (and in-process ceilings); each point is its fastest round "
                   "[2; --llm: 1]")
@click.option("--store", type=click.Path(path_type=Path), help="bench model store to reuse [<out>/store]")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="output folder [reports/bench-<UTC time>]")
@click.option("--publish", type=click.Path(path_type=Path),
              help="also copy report.md, the plots and results.json here (e.g. benchmarks/results/cpu-2core-avx512-vnni)")
@click.option("--llm", "llm_source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="instead: a Hugging Face language-model folder, packaged and served at each --precisions")
@click.option("--precisions", default="fp32,int4", show_default=True, help="--llm: the builds to serve")
@click.option("--max-kl", type=float, help="--llm: accept quantized builds up to this KL (random weights quantize worst)")
@click.option("--llama-cpp", "llama_cpp", type=click.Path(file_okay=False, path_type=Path),
              help="--llm: also llama.cpp's server, built in this cache folder from PyPI's llama-cpp-python sources")
@click.pass_obj
def bench(project: Project, families: str, users: str | None, layouts: str, run_time_s: int, warmup_s: int,
          no_levers: bool, no_scaling: bool, rounds: int | None, store: Path | None, out_dir: Path | None, publish: Path | None,
          llm_source: Path | None, precisions: str, max_kl: float | None, llama_cpp: Path | None) -> None:
    """Benchmark our ONNX Runtime handlers (FP32, fused FP32, INT8) against what a TorchServe user
    would serve instead (eager PyTorch, TorchScript, OpenVINO) and against each configuration's
    in-process ceiling, side by side in one run; writes JSON, markdown and plots (including how throughput and p95 scale
    with input length and batch size)."""

    if llm_source is not None:
        _bench_llm(project, llm_source, users or "1,4,8,16", precisions, run_time_s, warmup_s, not no_levers, max_kl,
                   llama_cpp, out_dir, publish, store, rounds or 1)
        return
    from maas import bench as bench_mod

    users = users or "8,16"
    chosen = tuple(f.strip() for f in families.split(",") if f.strip())
    unknown = [f for f in chosen if f not in bench_mod.PAYLOADS]
    if unknown:
        raise click.UsageError(f"--models: unknown {unknown}; benchmarked models are {list(bench_mod.PAYLOADS)}")
    try:
        grid = tuple(tuple(int(v) for v in layout.split(":")) for layout in layouts.split(","))
    except ValueError:
        grid = ()
    if not grid or any(len(layout) != 3 or min(layout) < 0 or layout[0] < 1 for layout in grid):
        raise click.UsageError(f"--layouts {layouts!r}: expected WORKERS:BATCH:DELAY_MS[,...], e.g. 2:4:5,2:8:5")
    plan = bench_mod.BenchPlan(families=chosen, users=tuple(int(u) for u in users.split(",")),
                               layouts=grid, run_time_s=run_time_s,
                               warmup_s=warmup_s, levers=not no_levers, scaling=not no_scaling,
                               rounds=max(1, rounds or 2))
    when = stamp()
    out = out_dir or project.reports_dir / f"bench-{when}"
    bench_mod.run_bench(plan, out, store, project.config)
    if publish:
        bench_mod.publish(out, publish)
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.md'}  plot: {out / 'bench.png'}  data: {out / 'results.json'}")


def _bench_llm(project: Project, source: Path, users: str, precisions: str, run_time_s: int, warmup_s: int,
               levers: bool, max_kl: float | None, llama_cpp: Path | None, out_dir: Path | None,
               publish: Path | None, store: Path | None = None, rounds: int = 1) -> None:
    from maas import llm_bench

    if llama_cpp is not None:  # before the maas rows, not after them
        from maas.core.extras import require

        require("bench", "maas bench --llama-cpp (llama.cpp's converter)")
    plan = llm_bench.LlmPlan(source.resolve(), tuple(p.strip() for p in precisions.split(",") if p.strip()),
                             tuple(int(u) for u in users.split(",")), max(run_time_s, 1), max(warmup_s, 0), levers,
                             llama_cpp=llama_cpp.resolve() if llama_cpp else None, max_kl=max_kl,
                             rounds=max(1, rounds))
    out = out_dir or project.reports_dir / f"bench-llm-{stamp()}"
    llm_bench.run_llm_bench(plan, out, project.config, store)
    if publish:
        llm_bench.publish(out, publish)
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.md'}  plot: {out / 'llm.png'}  data: {out / 'results.json'}")
