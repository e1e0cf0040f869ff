"""serve start/stop/status/audit and status: the local TorchServe."""
from __future__ import annotations

import json
import sys

import click

from maas.project import Project
from maas.status_table import format_rows, server_summary, status_rows


@click.group()
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
    click.echo(server_summary(server))


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
        info["models"] = status_rows(server.client, restarts=server.worker_restarts())
    click.echo(json.dumps(info, indent=2)) if as_json else click.echo(server_summary(server, info))
    if not info["running"]:
        sys.exit(1)


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def status(project: Project, model: str | None, as_json: bool) -> None:
    """Registered models: version, default, workers (id, status, pid), batching, device, worker restarts."""
    server = project.server()
    rows = status_rows(server.client, model, restarts=server.worker_restarts())
    click.echo(json.dumps(rows, indent=2) if as_json else format_rows(rows))
