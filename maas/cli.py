"""The `maas` command: build, serve, predict, load-test, demo."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from maas import deploy as deploy_ops
from maas.core.errors import MaasError
from maas.core.store import workflow_archive
from maas.export.variants import VARIANTS
from maas.project import Project

log = logging.getLogger("maas")


class FriendlyGroup(click.Group):
    """Every error a user can cause (maas.core.errors.MaasError) becomes one or two lines on stderr
    and exit 1, never a traceback; `maas -v` shows the traceback too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MaasError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("traceback of the error below", exc_info=True)
            raise click.ClickException(exc.user_message()) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "torchvision is not installed. Skipping torchvision::nms": nothing maas exports uses those ops.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", envvar="MAAS_CONFIG", help="TorchServe config.properties [./config.properties]")
@click.option("--model-store", envvar="MAAS_MODEL_STORE", help="folder of .mar archives [./model_store]")
@click.option("--run-dir", envvar="MAAS_RUN_DIR", help="server working dir: key_file.json, logs/ [./run]")
@click.option("--reports-dir", envvar="MAAS_REPORTS_DIR", help="where load-test reports go [./reports]")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.pass_context
def cli(ctx: click.Context, config: str | None, model_store: str | None, run_dir: str | None,
        reports_dir: str | None, verbose: bool) -> None:
    """maas: PyTorch models to a released, load-tested TorchServe endpoint on ONNX Runtime.

    \b
    Typical flow:
      maas build                       train/export/verify/package every model
      maas serve start                 TorchServe on 127.0.0.1, token auth on
      maas predict maintenance rec.json
      maas loadtest maintenance        Locust + release thresholds -> reports/
      maas serve stop
    \b
    Versions and scale (management API, each waits for its effect):
      maas build maintenance --version 2.0 --seed 1
      maas deploy maintenance --version 2.0 --workers 2
      maas set-default maintenance 2.0
      maas scale maintenance --min-workers 3
      maas status
      maas undeploy maintenance --version 1.0
    """
    _setup_logging(verbose)
    ctx.obj = Project.locate(config, model_store, run_dir, reports_dir)


@cli.command()
@click.argument("models", nargs=-1)
@click.option("--version", "version",
              help="version to stamp; writes <model>-<version>.mar beside the others [the spec's version]; "
                   "with --variant: the archive's version to make the variant from [the plain archive]")
@click.option("--seed", type=int, help="training seed, e.g. for a second training as a new version")
@click.option("--variant", type=click.Choice(list(VARIANTS)),
              help="make this optimized variant of the model's verified FP32 archive, as version <version>-<variant>: opt (ORT graph "
                   "optimizations), int8 (dynamic quantization, CPU), fp16 (GPU); refused over its accuracy budget")
@click.option("--ensemble", type=click.IntRange(2, 16),
              help="build N maintenance members (seeds 0..N-1) and the maintenance-ensemble workflow (.war); "
                   "refused unless the ensemble's held-out AUROC is at least its best member's")
def build(models: tuple[str, ...], version: str | None, seed: int | None, variant: str | None,
          ensemble: int | None) -> None:
    """Train (or load), export to ONNX, verify and package MODELS (default: all) into the model store."""
    from maas.export import zoo
    from maas.export.build import build as build_model

    project: Project = click.get_current_context().obj
    if ensemble:
        from maas.export.ensemble import build_ensemble

        result = build_ensemble(ensemble, project.build_dir, project.model_store, project.workflow_store)
        rec = result.record
        for name, m in [*rec["members"].items(), ("ensemble", rec["ensemble"])]:
            click.echo(f"  {name:9s} AUROC {m['roc_auc']:.4f}  F1 {m['f1']:.4f}  accuracy {m['accuracy']:.4f}")
        if not result.built:
            raise click.ClickException(f"the ensemble's AUROC is below its best member's; no workflow built; "
                                       f"keep {rec['member_archives'][rec['best_member']]}")
        click.echo(f"built {result.war}: `maas deploy maintenance-ensemble`, then POST /wfpredict/maintenance-ensemble")
        return
    zoo_models = zoo.models()
    for name in models or tuple(zoo_models):
        if name not in zoo_models:  # a model packaged with `maas package`: only its variants are built here
            if variant is None:
                raise click.UsageError(f"{name} is not a zoo model ({', '.join(zoo_models)}); package your own model "
                                       f"with `maas package`, or build a variant of it with --variant")
            from maas.export.package import package_variant

            made = package_variant(project.model_store, project.build_dir, name, variant, version)
            acc = made.manifest["variant"]["accuracy"]
            click.echo(f"built {made.mar} ({made.seconds:.1f} s)  {variant}: {acc['cost_metric']} {acc['cost']:.4f} "
                       f"(budget {acc['budget']:g})" + (f", top-1 agreement {acc['top1_agreement']}" if acc["top1_agreement"] else ""))
            continue
        result = build_model(name, project.build_dir, project.model_store, version=version, seed=seed,
                             variant=variant)
        manifest = json.loads((result.build_dir / "manifest.json").read_text())
        metrics = {k: float(f"{v:.8g}") for k, v in manifest["metrics"].items() if isinstance(v, float)}
        click.echo(f"built {result.mar} ({result.seconds:.1f} s)  metrics {metrics}  "
                   f"parity max abs error {manifest['parity']['max_abs_error']:.2g}")
        if "variant" in manifest:
            acc = manifest["variant"]["accuracy"]
            click.echo(f"  {variant}: {acc['cost_metric']} {acc['cost']:.4f} (budget {acc['budget']:g}), "
                       f"{manifest['size_bytes'] / 1e6:.1f} MB")


@cli.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="overwrite files maas init wrote before")
def init(directory: Path, force: bool) -> None:
    """Make DIRECTORY a maas project: config.properties with the secure defaults, metrics.yaml,
    an empty model_store/, a commented model spec template (maas.yaml) and a .gitignore."""
    from maas.init import init_project

    for line in init_project(directory, force):
        click.echo(line)
    click.echo(f"next: cd {directory} && maas package --onnx model.onnx (or --torch MODULE:FUNCTION), "
               "then maas serve start")


@cli.command("package")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), help="an existing ONNX file (external weights beside it travel too)")
@click.option("--torch", "factory", metavar="MODULE:FUNCTION",
              help="a function returning a torch.nn.Module, e.g. my_pkg.models:make_model (importable from here)")
@click.option("--exported-program", type=click.Path(path_type=Path), help="a torch.export.save()d program (.pt2)")
@click.option("--name", help="model name: letters, digits, '.', '_', '-' [the spec's, else the file's or function's]")
@click.option("--version", "version", help="version; writes <name>-<version>.mar beside the others [the spec's, else 1.0]")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="model spec YAML kept beside the model (inputs, outputs, serving, labels, handler, ...)")
@click.option("--example", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="example inputs: a .npz with one array per input name")
@click.option("--input", "inputs", multiple=True, metavar="NAME:DTYPE:[DIMS]",
              help="declare an input, e.g. pixels:float32:[batch,3,224,224] (names mark dynamic axes); repeatable")
@click.option("--handler", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="your handler file (subclass tensor.TensorHandler) [the generic tensor handler]")
@click.option("--extra-file", "extra_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a file the handler reads from its model directory (labels.txt, tokenizer.json); repeatable")
@click.option("--samples", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="sample inputs (.npz) for load tests and variant costs [the example]")
@click.option("--write-spec", type=click.Path(dir_okay=False, path_type=Path),
              help="only write a starting spec read off the graph to this file, then stop")
@click.pass_obj
def package_cmd(project: Project, onnx_file: Path | None, factory: str | None, exported_program: Path | None,
                name: str | None, version: str | None, spec_file: Path | None, example: Path | None,
                inputs: tuple[str, ...], handler: Path | None, extra_files: tuple[Path, ...], samples: Path | None,
                write_spec: Path | None) -> None:
    """Package your own model: export where needed, verify, and archive it into the model store.

    \b
    Examples:
      maas package --onnx model.onnx --name detector
      maas package --torch my_pkg.models:make_model --input pixels:float32:[batch,3,224,224]
      maas package --exported-program model.pt2 --spec maas.yaml
      maas package --onnx model.onnx --write-spec maas.yaml    # then edit it and package with --spec
    \b
    Then: maas deploy NAME, maas predict NAME body.json ({"inputs": {"<input>": [...]}}), maas loadtest NAME.
    """
    from maas.export.package import PackageOptions, package_model

    opts = PackageOptions(onnx=onnx_file, torch=factory, exported_program=exported_program, name=name,
                          version=version, spec_file=spec_file, example=example, inputs=inputs, handler=handler,
                          extra_files=extra_files, samples=samples)
    result = package_model(opts, project.build_dir, project.model_store, write_spec)
    if write_spec is not None:
        click.echo(f"wrote {write_spec}: check it, then `maas package ... --spec {write_spec}`")
        return
    parity = result.manifest.get("parity", {})
    figure = (f"parity max abs error {parity['max_abs_error']:.2g} on {', '.join(parity['cases'])}"
              if "max_abs_error" in parity else "no PyTorch source: ONNX Runtime ran the example")
    click.echo(f"packaged {result.mar} ({result.seconds:.1f} s): {result.name} {result.version}, "
               f"inputs {', '.join(f'{t.name} {t.dtype}{list(t.shape)}' for t in result.spec.inputs)}; {figure}")
    click.echo(f"next: maas deploy {result.name}" + (f" --version {result.version}" if opts.version else ""))


@cli.group()
def serve() -> None:
    """Start, stop and inspect TorchServe."""


@serve.command("start")
@click.option("--models", multiple=True, help="archive(s) to load, e.g. maintenance.mar [config's load_models]")
@click.option("--timeout", default=240.0, show_default=True, help="seconds to wait for READY workers")
@click.option("--insecure", is_flag=True, help="start even when the config fails `maas serve audit`")
@click.pass_obj
def serve_start(project: Project, models: tuple[str, ...], timeout: float, insecure: bool) -> None:
    """Start TorchServe with the project's config.properties and wait until models are READY."""
    server = project.server()
    server.start(list(models) or None, timeout=timeout, insecure=insecure)
    _print_status(server)


@serve.command("audit")
@click.pass_obj
def serve_audit(project: Project) -> None:
    """Check config.properties against the security defaults (SECURITY.md); exit 1 on any finding."""
    from maas.config_audit import audit
    from maas.properties import read_properties

    problems = audit(read_properties(project.config))
    for problem in problems:
        click.echo(f"- {problem}")
    click.echo(f"{project.config}: " + (f"{len(problems)} finding(s)" if problems else "meets the security defaults"))
    sys.exit(1 if problems else 0)


@serve.command("stop")
@click.pass_obj
def serve_stop(project: Project) -> None:
    """Stop TorchServe (frontend and workers)."""
    click.echo("stopped" if project.server().stop() else "TorchServe was not running")


@serve.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def serve_status(project: Project, as_json: bool) -> None:
    """Health, endpoints and models with their workers; exit 1 when not running."""
    server = project.server()
    info = server.status()
    if info["running"]:
        info["models"] = deploy_ops.status_rows(server.client, restarts=server.worker_restarts())
    click.echo(json.dumps(info, indent=2)) if as_json else _print_status(server, info)
    if not info["running"]:
        sys.exit(1)


@cli.group()
def cluster() -> None:
    """Replicas behind HAProxy on one address (health checks, retries on another replica)."""


def _cluster(project: Project) -> Any:
    from maas.cluster import Cluster

    return Cluster(project.config, project.model_store, project.run_dir / "cluster")


@cluster.command("start")
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 16), help="TorchServes to start")
@click.option("--port", default=8090, show_default=True, help="HAProxy's inference port on 127.0.0.1")
@click.option("--timeout", default=240.0, show_default=True, help="seconds to wait for each replica's READY workers")
@click.pass_obj
def cluster_start(project: Project, replicas: int, port: int, timeout: float) -> None:
    """Start N TorchServes (own ports, run dirs, logs) and HAProxy in front; the key is in run/cluster/key_file.json."""
    c = _cluster(project)
    address = c.start(replicas, port, timeout=timeout)
    click.echo(f"{replicas} replicas behind {address} (key: {c.key_file}); replicas: "
               + ", ".join(s.endpoints.inference for s in c.replicas()))


@cluster.command("status")
@click.pass_obj
def cluster_status(project: Project) -> None:
    """Each replica as HAProxy sees it (UP, DOWN, DRAIN, MAINT); exit 1 when no cluster runs."""
    c = _cluster(project)
    if not c.pid():
        click.echo("no cluster running (`maas cluster start`)")
        sys.exit(1)
    click.echo(f"HAProxy {c.address()} (pid {c.pid()}), key {c.key_file}")
    for (name, state), replica in zip(c.server_states().items(), c.replicas()):
        click.echo(f"  {name:<10} {state:<6} {replica.endpoints.inference}  management {replica.endpoints.management}")


@cluster.command("set")
@click.argument("replica", type=int)
@click.argument("state", type=click.Choice(["drain", "maint", "ready"]))
@click.pass_obj
def cluster_set(project: Project, replica: int, state: str) -> None:
    """Drain a replica (no new requests), take it out (maint) or back in (ready), e.g. for a rolling release."""
    _cluster(project).set_replica(replica, state)
    click.echo(f"replica-{replica}: {state}")


@cluster.command("restart")
@click.argument("replica", type=int)
@click.pass_obj
def cluster_restart(project: Project, replica: int) -> None:
    """Start a replica again on its own ports (after it died); HAProxy takes it back when healthy."""
    _cluster(project).restart_replica(replica)
    click.echo(f"replica-{replica} restarted")


@cluster.command("stop")
@click.pass_obj
def cluster_stop(project: Project) -> None:
    """Stop HAProxy and every replica."""
    click.echo("stopped" if _cluster(project).stop() else "no cluster was running")


@cli.group()
def monitor() -> None:
    """Run a Prometheus that scrapes the local TorchServe, with maas's alert rules."""


def _monitor(project: Project, port: int | None) -> Any:
    from maas.monitor import Monitor, slo_models

    server = project.server()
    ca = server.client.verify if isinstance(server.client.verify, str) else None
    return Monitor(project.run_dir, server.endpoints.metrics, slo_models(project.root),
                   port or Monitor.last_port(project.run_dir), ca)


MONITOR_PORT = click.option("--port", type=int, envvar="MAAS_PROMETHEUS_PORT",
                            help="Prometheus' port on 127.0.0.1 [start: 9090; status, stop: the one start used]")


@monitor.command("start")
@MONITOR_PORT
@click.pass_obj
def monitor_start(project: Project, port: int | None) -> None:
    """Start Prometheus on 127.0.0.1 with a generated scrape config and rules (run/prometheus/)."""
    mon = _monitor(project, port or 9090)
    mon.start()
    click.echo(f"Prometheus {mon.url} scraping {project.server().endpoints.metrics}/metrics every 5 s; "
               f"rules and config in {mon.home}")


@monitor.command("stop")
@MONITOR_PORT
@click.pass_obj
def monitor_stop(project: Project, port: int | None) -> None:
    """Stop the Prometheus `maas monitor start` started."""
    click.echo("stopped" if _monitor(project, port).stop() else "Prometheus was not running")


@monitor.command("status")
@MONITOR_PORT
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def monitor_status(project: Project, port: int | None, as_json: bool) -> None:
    """Scrape targets and pending or firing alerts; exit 1 when Prometheus is not running."""
    from maas.monitor import format_status

    info = _monitor(project, port).status()
    click.echo(json.dumps(info, indent=2) if as_json else format_status(info))
    if not info["pid"]:
        sys.exit(1)


@monitor.command("rules")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="write the rules here (e.g. deploy/prometheus/maas-rules.yaml) [print them]")
@click.pass_obj
def monitor_rules(project: Project, out: Path | None) -> None:
    """The alert and recording rules, made from the SLO files (the zoo's and ./slo/)."""
    from maas.monitor import rules_yaml, slo_models

    text = rules_yaml(slo_models(project.root))
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    click.echo(f"wrote {out}")


def _print_status(server: Any, info: dict[str, Any] | None = None) -> None:
    info = info or server.status()
    if not info["running"]:
        click.echo(f"TorchServe is not running (logs: {info['log_dir']})")
        return
    ep = info["endpoints"]
    click.echo(f"TorchServe {info.get('health', '?')}  inference {ep['inference']}  management {ep['management']}"
               f"  metrics {ep['metrics']}  logs {info['log_dir']}")
    click.echo(deploy_ops.format_rows(info.get("models")
                                      or deploy_ops.status_rows(server.client, restarts=server.worker_restarts())))


@cli.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def status(project: Project, model: str | None, as_json: bool) -> None:
    """Registered models: version, default, workers (id, status, pid), batching, device, worker restarts."""
    server = project.server()
    rows = deploy_ops.status_rows(server.client, model, restarts=server.worker_restarts())
    click.echo(json.dumps(rows, indent=2) if as_json else deploy_ops.format_rows(rows))


@cli.command()
@click.argument("model")
@click.option("--version", "version", help="archive version in the model store [the model's only/plain archive]")
@click.option("--workers", default=1, show_default=True, help="initial workers")
@click.option("--batch-size", type=int, help="TorchServe batch size [the archive's model-config.yaml]")
@click.option("--max-batch-delay", type=int, help="ms to wait for a batch to fill [model-config.yaml]")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for READY workers")
@click.pass_obj
def deploy(project: Project, model: str, version: str | None, workers: int, batch_size: int | None,
           max_batch_delay: int | None, timeout: float) -> None:
    """Register MODEL's archive from the model store and wait until its workers are READY."""
    started = time.monotonic()
    if version is None and workflow_archive(project.workflow_store, model) is not None:
        described = deploy_ops.deploy_workflow(project.server().client, project.workflow_store, model, timeout)
        click.echo(f"deployed workflow {model} in {time.monotonic() - started:.1f} s: "
                   f"POST /wfpredict/{model}\n{json.dumps(described, indent=2)}")
        return
    desc = deploy_ops.deploy(project.server().client, project.model_store, model, version, workers,
                             batch_size, max_batch_delay, timeout)
    click.echo(f"deployed {desc['modelName']} {desc['modelVersion']} in {time.monotonic() - started:.1f} s")
    click.echo(deploy_ops.format_rows(deploy_ops.status_rows(project.server().client, model)))


@cli.command()
@click.argument("model")
@click.option("--version", "version", help="version to scale [the default version]")
@click.option("--min-workers", type=int, required=True, help="workers to run")
@click.option("--max-workers", type=int, help="upper bound [= --min-workers]")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for the worker count")
@click.pass_obj
def scale(project: Project, model: str, version: str | None, min_workers: int, max_workers: int | None,
          timeout: float) -> None:
    """Set MODEL's worker count and wait until exactly that many are READY."""
    started = time.monotonic()
    desc = deploy_ops.scale(project.server().client, model, min_workers, max_workers, version, timeout)
    click.echo(f"{model} {desc['modelVersion']}: {len(desc['workers'])} READY workers "
               f"({time.monotonic() - started:.1f} s)")
    click.echo(deploy_ops.format_rows(deploy_ops.status_rows(project.server().client, model)))


@cli.command("set-default")
@click.argument("model")
@click.argument("version")
@click.pass_obj
def set_default(project: Project, model: str, version: str) -> None:
    """Make VERSION the one /predictions/MODEL answers with."""
    deploy_ops.set_default(project.server().client, model, version)
    click.echo(f"{model}: default version is now {version}")


@cli.command()
@click.argument("model")
@click.option("--version", "version", help="version to remove [the default version]")
@click.pass_obj
def undeploy(project: Project, model: str, version: str | None) -> None:
    """Unregister one version of MODEL (retries while its workers finish requests), or a workflow."""
    client = project.server().client
    if version is None and model in deploy_ops.registered_workflows(client):
        deploy_ops.undeploy_workflow(client, model)
        click.echo(f"undeployed workflow {model}")
        return
    removed = deploy_ops.undeploy(client, model, version)
    click.echo(f"undeployed {model} {removed}")


@cli.command()
@click.argument("model")
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--version", "version", help="model version [the default version]")
@click.option("--content-type", default="application/json", show_default=True)
@click.option("--grpc", "use_grpc", is_flag=True,
              help="call TorchServe's gRPC inference API (Predictions) instead of HTTP; the same answer")
@click.pass_obj
def predict(project: Project, model: str, file: Any, version: str | None, content_type: str, use_grpc: bool) -> None:
    """Send FILE (or stdin, '-') to /predictions/MODEL and print the answer."""
    if use_grpc:
        from maas.grpc_client import GrpcInference, refused

        with GrpcInference.for_server(project.server()) as client:
            answer = client.predict_raw(model, file.read(), version)
        click.echo(answer.decode(errors="replace"))
        refusal = refused(answer)
        if refusal is not None:
            raise click.ClickException(str(refusal))
        return
    resp = project.server().client.predict(model, file.read(), content_type, version)
    click.echo(resp.text)
    if resp.status_code != 200:
        raise click.ClickException(f"HTTP {resp.status_code} from /predictions/{model}")


def _slo(model: str, slo_file: str | None, project_dir: Path | None = None, **overrides: Any) -> Any:
    """defaults < slo/<model>.yaml of the project or the zoo's (or --slo FILE) < flags."""
    from maas.slo import SLO

    slo = SLO.for_model(model, Path(slo_file) if slo_file else None, project_dir)
    for key in ("users", "spawn_rate", "run_time_s", "warmup_s"):
        if overrides.get(key) is not None:
            setattr(slo, key, overrides[key])
    for key in ("max_p95_ms", "max_p99_ms", "max_error_ratio", "min_rps"):
        if overrides.get(key) is not None:
            setattr(slo.thresholds, key, overrides[key])
    return slo


def slo_options(command: Any) -> Any:
    """The load and threshold flags shared by loadtest and release (each overrides the SLO file)."""
    options = [
        click.option("--slo", "slo_file", type=click.Path(exists=True, dir_okay=False),
                     help="SLO YAML [slo/MODEL.yaml here, else the zoo's loadtests/slo/MODEL.yaml]"),
        click.option("--users", type=int, help="concurrent Locust users [SLO file]"),
        click.option("--spawn-rate", type=float, help="users started per second [SLO file]"),
        click.option("--run-time", "run_time_s", type=int, help="measured seconds of load [SLO file]"),
        click.option("--warmup", "warmup_s", type=int, help="seconds of load excluded from the figures [SLO file]"),
        click.option("--max-p95-ms", type=float, help="gate: p95 latency budget [SLO file]"),
        click.option("--max-p99-ms", type=float, help="gate: p99 latency budget [SLO file]"),
        click.option("--max-error-ratio", type=float, help="gate: failed / all requests [SLO file]"),
        click.option("--min-rps", type=float, help="gate: minimum throughput, req/s [SLO file]"),
        click.option("--workers", "locust_workers", default=0, show_default=True,
                     help="Locust distributed mode: a master and N worker processes"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("model")
@slo_options
@click.option("--version", "version", default="", help="model version to target [default version]")
@click.option("--explanations", is_flag=True, help="load /explanations/MODEL instead of /predictions/MODEL")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True,
              help="HTTP /predictions/MODEL, or TorchServe's gRPC Predictions call (same bodies, checks and gate)")
@click.option("--find-capacity", is_flag=True, help="step users 1, 2, 4, ... until an SLO breaks")
@click.option("--max-users", default=64, show_default=True, help="capacity search: the last step")
@click.option("--step-time", default=10, show_default=True, help="capacity search: measured seconds per step")
@click.pass_obj
def loadtest(project: Project, model: str, slo_file: str | None, version: str, locust_workers: int,
             explanations: bool, protocol: str, find_capacity: bool, max_users: int, step_time: int,
             **overrides: Any) -> None:
    """Load-test MODEL with Locust against its SLO; exit 0 only when every SLO holds."""
    from maas.loadtest import LoadTest

    slo = _slo(model, slo_file, project.root, **overrides)
    if protocol == "grpc" and (explanations or find_capacity):
        raise click.UsageError("--protocol grpc loads predictions at the SLO's users (no --explanations, --find-capacity)")
    if find_capacity:
        from maas.capacity import find_capacity as search

        server = _ready_for_load(project, slo.run_time_s * 8)
        result = search(server.endpoints.inference, server.client.key_file, project.reports_dir, model, slo,
                        version, max_users, step_time, locust_workers, worker_restarts=server.worker_restarts,
                        model_store=project.model_store)
        best = result["capacity"]
        click.echo(f"capacity of {model}: " + (f"{best['users']} users, {best['rps']:.1f} req/s, p95 {best['p95_ms']:.1f} ms"
                                               if best else "no step held the SLO"))
        click.echo(f"report: {result['path']}")
        sys.exit(0 if best else 1)
    endpoint = "explanations" if explanations else "predictions"
    summary = _loadtest(project, LoadTest(model, slo, version, locust_workers,
                                          label="explanations" if explanations else ("grpc" if protocol == "grpc" else ""),
                                          endpoint=endpoint, model_store=project.model_store, protocol=protocol))
    if not summary["passed"]:
        sys.exit(1)


def _ready_for_load(project: Project, seconds: float) -> Any:
    """The server, checked up, with keys renewed if they would expire during `seconds` of load."""
    server = project.server()
    server.client.ping()  # fails fast, with a clear message, when the server is down
    # Locust re-reads key_file.json when it changes; renew now what would expire during the run.
    server.client.fresh_key("inference", margin_s=seconds + 120)
    return server


def _loadtest(project: Project, test: Any) -> dict[str, Any]:
    from maas import loadtest as lt
    from maas.gate import format_summary

    server = _ready_for_load(project, test.slo.warmup_s + test.slo.run_time_s)
    if test.protocol == "grpc":
        from maas.grpc_client import grpc_target, tls_ca_file

        test.grpc_target = grpc_target(server.props)
        test.grpc_ca = tls_ca_file(server.props, server.layout.config.resolve().parent)
    described = server.client.describe(test.model, test.version or None)
    info = {"served_version": described[0].get("modelVersion") if described else None}
    renew = (lambda: server.client.fresh_key("inference")) if server.client.key_file else None
    summary, out = lt.run(test, server.endpoints.inference, server.client.key_file, project.reports_dir, info, renew,
                          worker_restarts=server.worker_restarts)
    click.echo(format_summary(summary))
    click.echo(f"report: {out}/ (summary.json, report.html, throughput_latency.png, locust_*.csv)")
    return summary


@cli.command()
@click.argument("model")
@click.option("--candidate", required=True, help="version to release (an archive in the model store)")
@click.option("--fresh-baseline", is_flag=True, help="re-measure the current default instead of its last summary")
@slo_options
@click.pass_obj
def release(project: Project, model: str, candidate: str, fresh_baseline: bool, slo_file: str | None,
            locust_workers: int, **overrides: Any) -> None:
    """Promote CANDIDATE to MODEL's default only if it answers correctly, meets its SLO and does not regress."""
    from maas.release import release as gate

    slo = _slo(model, slo_file, project.root, **overrides)
    server = _ready_for_load(project, 3 * (slo.warmup_s + slo.run_time_s) + 120)
    record = gate(server.client, server.endpoints.inference, server.client.key_file, project.model_store,
                  project.reports_dir, model, candidate, slo, locust_workers, fresh_baseline,
                  worker_restarts=server.worker_restarts)
    if record["promoted"]:
        click.echo(f"released {model} {candidate}: now the default (was {record['previous_default']}); "
                   f"{record['wall_time_s']} s")
    else:
        click.echo(f"NOT released {model} {candidate}; default stays {record['default_now']}:")
        for reason in record["reasons"]:
            click.echo(f"  - {reason}")
    click.echo(f"record: {record['path']}")
    sys.exit(0 if record["promoted"] else 1)


@cli.command()
@click.option("--run-time", default=20, show_default=True, help="seconds of the demo's load test")
@click.pass_obj
def demo(project: Project, run_time: int) -> None:
    """Build the zoo, package a third-party model, serve them, send real requests, load-test, stop."""
    from maas import demo as d
    from maas import loadtest as lt
    from maas.export import zoo
    from maas.export.package import PackageOptions, package_model
    from maas.loadtest import LoadTest

    ctx = click.get_current_context()
    ctx.invoke(build, models=(), version=None, seed=None)
    click.echo("packaging a model no one here wrote: Magika (its .onnx from the magika wheel on PyPI)")
    model_file, spec = d.magika_files(project.build_dir / "third-party")
    made = package_model(PackageOptions(onnx=model_file, spec_file=spec), project.build_dir, project.model_store)
    click.echo(f"packaged {made.mar}")
    models = [*zoo.models(), made.name]
    server = project.server()
    if server.is_running():
        click.echo("stopping the TorchServe already running from this project")
        server.stop()
    server.start()
    try:
        _print_status(server)
        here = Path(__file__)
        extra = {"magika": [(f"{p.name} ({p.stat().st_size // 1024} kB)", json.dumps(d.magika_request(p.read_bytes())).encode(),
                             "application/json") for p in (here, here.parent / "templates" / "config.properties")]}
        click.echo(f"\nrequests ({server.endpoints.inference}/predictions/MODEL, token from {server.client.key_file}):")
        for line in d.request_rows(server, project.model_store, models, extra):
            click.echo(line)
        from maas.grpc_client import grpc_target

        click.echo(f"\nthe same over gRPC ({grpc_target(server.props)}, the same key; `maas predict --grpc`):")
        for line in d.grpc_rows(server, project.model_store, models):
            click.echo(line)
        slos = {model: _slo(model, None, project.root, run_time_s=run_time) for model in models}
        _ready_for_load(project, sum(s.warmup_s + s.run_time_s + 10 for s in slos.values()))
        renew = (lambda: server.client.fresh_key("inference")) if server.client.key_file else None
        summaries = [lt.run(LoadTest(model, slo, model_store=project.model_store), server.endpoints.inference,
                            server.client.key_file, project.reports_dir, {}, renew, worker_restarts=server.worker_restarts)
                     for model, slo in slos.items()]
        click.echo(f"\nload tests ({run_time} s each after warm-up, closed loop):")
        click.echo(d.load_table(summaries))
        click.echo(f"reports: {project.reports_dir}/ (per run: summary.json, report.html, throughput_latency.png)")
    finally:
        server.stop()
        click.echo("TorchServe stopped")


@cli.command("export-triton")
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


@cli.command("bench")
@click.option("--models", "families", default="minilm", show_default=True, help="comma-separated: minilm, digits")
@click.option("--users", default="8,16", show_default=True, help="client concurrencies (Locust users)")
@click.option("--layouts", default="2:4:5,2:8:5", show_default=True,
              help="WORKERS:BATCH:DELAY_MS layouts every configuration runs in (threads = cores // workers)")
@click.option("--run-time", "run_time_s", type=int, default=10, show_default=True,
              help="measured seconds per run and round")
@click.option("--warmup", "warmup_s", type=int, default=3, show_default=True, help="warm-up seconds per run")
@click.option("--no-levers", is_flag=True, help="skip the runs that take one optimisation away at a time")
@click.option("--no-scaling", is_flag=True, help="skip the longer-text and batch-size runs (minilm)")
@click.option("--rounds", type=int, default=2, show_default=True,
              help="interleaved rounds of served runs and in-process ceilings; each point is its fastest round")
@click.option("--store", type=click.Path(path_type=Path), help="bench model store to reuse [<out>/store]")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="output folder [reports/bench-<UTC time>]")
@click.option("--publish", type=click.Path(path_type=Path),
              help="also copy report.md, the plots and results.json here (e.g. benchmarks/results/cpu-2core-avx512-vnni)")
@click.pass_obj
def bench(project: Project, families: str, users: str, layouts: str, run_time_s: int, warmup_s: int,
          no_levers: bool, no_scaling: bool, rounds: int, store: Path | None, out_dir: Path | None, publish: Path | None) -> None:
    """Benchmark our ONNX Runtime handlers (FP32, fused FP32, INT8) against what a TorchServe user
    would serve instead (eager PyTorch, TorchScript, OpenVINO) and against each configuration's
    in-process ceiling, side by side in one run; writes JSON, markdown and plots (including how throughput and p95 scale
    with input length and batch size)."""
    from datetime import datetime, timezone

    from maas import bench as bench_mod

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
                               rounds=max(1, rounds))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir or project.reports_dir / f"bench-{stamp}"
    bench_mod.run_bench(plan, out, store, project.config)
    if publish:
        bench_mod.publish(out, publish)
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.md'}  plot: {out / 'bench.png'}  data: {out / 'results.json'}")


@cli.command("export-kserve")
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
    """Write KServe and Kubernetes manifests for MODELS (default: the whole zoo) and copy their
    archives into KServe's storage layout (config/config.properties + model-store/)."""
    from maas.core.spec import ModelSpec
    from maas.core.store import (
        archive_manifest,
        archive_member,
        find_archive,
        packaged_models,
    )
    from maas.export import zoo
    from maas.kube import export_all

    def spec(name: str) -> ModelSpec:
        if name in zoo.models():
            return zoo.get(name).spec
        if name not in packaged_models(project.model_store):
            raise click.UsageError(f"unknown model {name}: not in the zoo ({', '.join(zoo.models())}) and no archive "
                                   f"packaged by maas in {project.model_store}")
        archive = find_archive(project.model_store, name, None)
        return ModelSpec.from_archive(archive_manifest(archive), yaml.safe_load(archive_member(archive, "model-config.yaml")))

    specs = [spec(m) for m in (models or (*zoo.models(), *packaged_models(project.model_store)))]
    result = export_all(specs, project.config, project.model_store, Path(kserve_dir), Path(kubernetes_dir),
                        storage_uri, project.root)
    for path in result.manifests + result.archives:
        click.echo(f"wrote {path}")
    if result.missing:
        click.echo(f"not built, so no archive in storage/ for: {', '.join(result.missing)} (run `maas build`)", err=True)


def main() -> None:
    cli(prog_name="maas")


if __name__ == "__main__":
    main()
