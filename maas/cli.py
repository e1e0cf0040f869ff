"""The `maas` command: build, serve, predict, load-test, demo."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from maas import deploy as deploy_ops
from maas.client import ServeError
from maas.keys import KeyFileError
from maas.project import Project

log = logging.getLogger("maas")


class FriendlyGroup(click.Group):
    """Known failures become one line on stderr and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from export.archive import ArchiveError
        from export.onnx_export import ExportError

        try:
            return super().invoke(ctx)
        except (ServeError, KeyFileError, ExportError, ArchiveError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except KeyError as exc:
            raise click.ClickException(str(exc.args[0]) if exc.args else str(exc)) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
              help="version to stamp; writes <model>-<version>.mar beside the others [the spec's version]")
@click.option("--seed", type=int, help="training seed, e.g. for a second training as a new version")
def build(models: tuple[str, ...], version: str | None, seed: int | None) -> None:
    """Train (or load), export to ONNX, verify and package MODELS (default: all) into the model store."""
    from export.build import MODELS, build as build_model

    project: Project = click.get_current_context().obj
    for name in models or tuple(MODELS):
        result = build_model(name, project.build_dir, project.model_store, version=version, seed=seed)
        manifest = json.loads((result.build_dir / "manifest.json").read_text())
        metrics = {k: float(f"{v:.8g}") for k, v in manifest["metrics"].items() if isinstance(v, float)}
        click.echo(f"built {result.mar} ({result.seconds:.1f} s)  metrics {metrics}  "
                   f"parity max abs error {manifest['parity']['max_abs_error']:.2g}")


@cli.group()
def serve() -> None:
    """Start, stop and inspect TorchServe."""


@serve.command("start")
@click.option("--models", multiple=True, help="archive(s) to load, e.g. maintenance.mar [config's load_models]")
@click.option("--timeout", default=240.0, show_default=True, help="seconds to wait for READY workers")
@click.pass_obj
def serve_start(project: Project, models: tuple[str, ...], timeout: float) -> None:
    """Start TorchServe with the project's config.properties and wait until models are READY."""
    server = project.server()
    server.start(list(models) or None, timeout=timeout)
    _print_status(server)


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
        info["models"] = deploy_ops.status_rows(server.client)
    click.echo(json.dumps(info, indent=2)) if as_json else _print_status(server, info)
    if not info["running"]:
        sys.exit(1)


def _print_status(server: Any, info: dict[str, Any] | None = None) -> None:
    info = info or server.status()
    if not info["running"]:
        click.echo(f"TorchServe is not running (logs: {info['log_dir']})")
        return
    ep = info["endpoints"]
    click.echo(f"TorchServe {info.get('health', '?')}  inference {ep['inference']}  management {ep['management']}"
               f"  metrics {ep['metrics']}  logs {info['log_dir']}")
    click.echo(deploy_ops.format_rows(info.get("models") or deploy_ops.status_rows(server.client)))


@cli.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def status(project: Project, model: str | None, as_json: bool) -> None:
    """Registered models: version, default, workers (id, status, pid), batching, device."""
    rows = deploy_ops.status_rows(project.server().client, model)
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
    """Unregister one version of MODEL (retries while its workers finish requests)."""
    removed = deploy_ops.undeploy(project.server().client, model, version)
    click.echo(f"undeployed {model} {removed}")


@cli.command()
@click.argument("model")
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--version", "version", help="model version [the default version]")
@click.option("--content-type", default="application/json", show_default=True)
@click.pass_obj
def predict(project: Project, model: str, file: Any, version: str | None, content_type: str) -> None:
    """Send FILE (or stdin, '-') to /predictions/MODEL and print the answer."""
    resp = project.server().client.predict(model, file.read(), content_type, version)
    click.echo(resp.text)
    if resp.status_code != 200:
        raise click.ClickException(f"HTTP {resp.status_code} from /predictions/{model}")


@cli.command()
@click.argument("model")
@click.option("--users", default=8, show_default=True, help="concurrent Locust users")
@click.option("--spawn-rate", default=4.0, show_default=True, help="users started per second")
@click.option("--run-time", default=20, show_default=True, help="seconds of load")
@click.option("--version", "version", default="", help="model version to target [default version]")
@click.option("--max-p95-ms", default=500.0, show_default=True, help="gate: p95 latency budget")
@click.option("--max-p99-ms", default=1000.0, show_default=True, help="gate: p99 latency budget")
@click.option("--max-error-ratio", default=0.01, show_default=True, help="gate: failed / all requests")
@click.option("--min-rps", default=5.0, show_default=True, help="gate: minimum throughput (req/s)")
@click.pass_obj
def loadtest(project: Project, model: str, users: int, spawn_rate: float, run_time: int, version: str,
             max_p95_ms: float, max_p99_ms: float, max_error_ratio: float, min_rps: float) -> None:
    """Load-test MODEL with Locust; exit 0 only when every threshold holds."""
    from maas.loadtest import LoadTest, Thresholds

    test = LoadTest(model, users, spawn_rate, run_time, version,
                    Thresholds(max_p95_ms, max_p99_ms, max_error_ratio, min_rps))
    summary = _loadtest(project, test)
    if not summary["passed"]:
        sys.exit(1)


def _loadtest(project: Project, test: Any) -> dict[str, Any]:
    from maas import loadtest as lt

    server = project.server()
    server.client.ping()  # fails fast, with a clear message, when the server is down
    if server.client.key_file is not None:
        # Renew now if the key would expire during the run; Locust re-reads the file on change.
        server.client.renew_margin_s = test.run_time_s + 120
        server.client.ping()
    described = server.client.describe(test.model, test.version or None)
    info = {"served_version": described[0].get("modelVersion") if described else None}
    summary, out = lt.run(test, server.endpoints.inference, server.client.key_file, project.reports_dir, info)
    click.echo(lt.format_summary(summary))
    click.echo(f"report: {out}/ (summary.json, report.html, throughput_latency.png, locust_*.csv)")
    return summary


@cli.command()
@click.option("--run-time", default=20, show_default=True, help="seconds of the demo's load test")
@click.pass_obj
def demo(project: Project, run_time: int) -> None:
    """Build every model, serve it, send real requests, load-test, stop. The whole path in one go."""
    from export.build import MODELS
    from maas.demo_requests import DEMO_REQUESTS
    from maas.loadtest import LoadTest

    ctx = click.get_current_context()
    ctx.invoke(build, models=(), version=None, seed=None)
    server = project.server()
    if server.is_running():
        click.echo("stopping the TorchServe already running from this project")
        server.stop()
    server.start()
    try:
        _print_status(server)
        for model in MODELS:
            for title, body in DEMO_REQUESTS.get(model, []):
                resp = server.client.predict(model, body)
                click.echo(f"\n# {title}\n$ curl -H 'Authorization: Bearer $KEY' -H 'Content-Type: application/json' "
                           f"-d '{body.decode()}' {server.endpoints.inference}/predictions/{model}\n"
                           f"HTTP {resp.status_code}  X-Model-Version: {resp.headers.get('X-Model-Version')}\n{resp.text}")
        for model in MODELS:
            click.echo("")
            _loadtest(project, LoadTest(model, users=8, spawn_rate=4, run_time_s=run_time))
    finally:
        server.stop()
        click.echo("TorchServe stopped")


def main() -> None:
    cli(prog_name="maas")


if __name__ == "__main__":
    main()
