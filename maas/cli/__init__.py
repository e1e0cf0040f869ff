"""The `maas` command: a click group whose subcommands live one group of jobs per module
(build, serve, models, load, cluster, monitor, exports, demo), each thin over the library.

Every error a user can cause is a maas.core.errors.MaasError, caught once here."""
from __future__ import annotations

import logging
import sys
from typing import Any

import click

from maas.cli import build, cluster, demo, exports, image, load, models, monitor, serve
from maas.core.errors import MaasError, UnknownModel
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
            if isinstance(exc, UnknownModel):  # a wrong argument: exit 2, as click's own usage errors
                raise click.UsageError(exc.user_message()) from None
            raise click.ClickException(exc.user_message()) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "urllib3", "matplotlib", "httpx", "httpx2"):
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


def main() -> None:
    cli(prog_name="maas")


for command in (build.build, build.init, build.package_cmd, serve.serve, serve.status, models.deploy, models.scale,
                models.set_default, models.undeploy, models.predict, load.loadtest, load.release, cluster.cluster, cluster.swarm,
                monitor.monitor, demo.demo, exports.export_triton, exports.export_kserve, exports.bench,
                image.image):
    cli.add_command(command)
