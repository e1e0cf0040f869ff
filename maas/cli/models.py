"""deploy, scale, set-default, undeploy, predict: models on a running TorchServe."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from maas import deploy as deploy_ops
from maas.core.store import workflow_archive
from maas.project import Project
from maas.status_table import format_rows, status_rows


@click.command()
@click.argument("model")
@click.option("--version", "version", help="archive version in the model store [the model's only/plain archive]")
@click.option("--workers", type=click.IntRange(1), default=None, help="workers [the archive's minWorkers]")
@click.option("--batch-size", type=int, help="TorchServe batch size [the archive's model-config.yaml]")
@click.option("--max-batch-delay", type=int, help="ms to wait for a batch to fill [model-config.yaml]")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for READY workers")
@click.pass_obj
def deploy(project: Project, model: str, version: str | None, workers: int | None, batch_size: int | None,
           max_batch_delay: int | None, timeout: float) -> None:
    """Register MODEL's archive from the model store and wait until its workers are READY."""
    started = time.monotonic()
    if version is None and workflow_archive(project.workflow_store, model) is not None:
        described = deploy_ops.deploy_workflow(project.server().client, project.workflow_store, model, timeout)
        click.echo(f"deployed workflow {model} in {time.monotonic() - started:.1f} s: "
                   f"POST /wfpredict/{model}\n{json.dumps(described, indent=2)}")
        return
    server = project.server()
    desc = deploy_ops.deploy(server.client, project.model_store, model, version, workers,
                             batch_size, max_batch_delay, timeout, log_dir=server.layout.log_dir)
    click.echo(f"deployed {desc['modelName']} {desc['modelVersion']} in {time.monotonic() - started:.1f} s")
    click.echo(format_rows(status_rows(server.client, model)))


@click.command()
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
    click.echo(format_rows(status_rows(project.server().client, model)))


@click.command("set-default")
@click.argument("model")
@click.argument("version")
@click.pass_obj
def set_default(project: Project, model: str, version: str) -> None:
    """Make VERSION the one /predictions/MODEL answers with."""
    deploy_ops.set_default(project.server().client, model, version)
    click.echo(f"{model}: default version is now {version}")


@click.command()
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


SUFFIX_TYPES = {".npy": "application/octet-stream", ".npz": "application/octet-stream", ".png": "image/png",
                ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def content_type_of(filename: str) -> str:
    return SUFFIX_TYPES.get(Path(str(filename)).suffix.lower(), "application/json")


def _generative(body: bytes) -> bool:
    """An OpenAI-style request for a language model (a JSON object with a prompt or messages)."""
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return isinstance(value, dict) and ("prompt" in value or "messages" in value)


@click.command()
@click.argument("model")
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--version", "version", help="model version [the default version]")
@click.option("--content-type", default=None,
              help="[by FILE's suffix: .npy/.npz application/octet-stream, .png/.jpg images, else application/json]")
@click.option("--grpc", "use_grpc", is_flag=True,
              help="call TorchServe's gRPC inference API instead of HTTP; the same answer (Predictions; StreamPredictions "
                   "for a language model's prompt or messages)")
@click.pass_obj
def predict(project: Project, model: str, file: Any, version: str | None, content_type: str | None, use_grpc: bool) -> None:
    """Send FILE (or stdin, '-') to /predictions/MODEL and print the answer: JSON, an image, or
    NumPy arrays (.npy for one input, .npz with one array per input name)."""
    content_type = content_type or content_type_of(getattr(file, "name", ""))
    body = file.read()
    if use_grpc and _generative(body):
        from maas.grpc_client import GrpcInference

        # A generation streams its answer: StreamPredictions, each server-sent event as it comes.
        with GrpcInference.for_server(project.server()) as client:
            for part in client.stream_predict(model, body, version):
                click.echo(part.decode(errors="replace"), nl=False)
        return
    if use_grpc:
        from maas.grpc_client import GrpcInference, refused

        with GrpcInference.for_server(project.server()) as client:
            answer = client.predict_raw(model, body, version)
        click.echo(answer.decode(errors="replace"))
        refusal = refused(answer)
        if refusal is not None:
            raise click.ClickException(str(refusal))
        return
    resp = project.server().client.predict(model, body, content_type, version)
    click.echo(resp.text)
    if resp.status_code != 200:
        raise click.ClickException(f"HTTP {resp.status_code} from /predictions/{model}")
