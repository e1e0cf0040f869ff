"""monitor: Prometheus with maas's alert rules."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from maas.project import Project


@click.group()
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
