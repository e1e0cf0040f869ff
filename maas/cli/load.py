"""loadtest and release: Locust against an SLO, and the release gate."""
from __future__ import annotations

import sys
from typing import Any

import click

from maas.project import Project
from maas.slo import slo_for


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


@click.command()
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
    from maas.gate import format_summary
    from maas.loadtest import LoadTest, run_on_server

    slo = slo_for(model, slo_file, project.root, **overrides)
    if protocol == "grpc" and (explanations or find_capacity):
        raise click.UsageError("--protocol grpc loads predictions at the SLO's users (no --explanations, --find-capacity)")
    if find_capacity:
        from maas.capacity import find_capacity as search

        server = _server(project, slo.run_time_s * 8)
        result = search(server.endpoints.inference, server.client.key_file, project.reports_dir, model, slo,
                        version, max_users, step_time, locust_workers, worker_restarts=server.worker_restarts,
                        model_store=project.model_store,  # keys renewed while it runs, however many steps
                        keep_keys_fresh=(lambda: server.client.fresh_key("inference")) if server.client.key_file else None)
        best = result["capacity"]
        click.echo(f"capacity of {model}: " + (f"{best['users']} users, {best['rps']:.1f} req/s, p95 {best['p95_ms']:.1f} ms"
                                               if best else "no step held the SLO"))
        click.echo(f"report: {result['path']}")
        sys.exit(0 if best else 1)
    endpoint = "explanations" if explanations else "predictions"
    test = LoadTest(model, slo, version, locust_workers,
                    label="explanations" if explanations else ("grpc" if protocol == "grpc" else ""),
                    endpoint=endpoint, model_store=project.model_store, protocol=protocol)
    summary, out = run_on_server(project.server(), test, project.reports_dir)
    click.echo(format_summary(summary))
    click.echo(f"report: {out}/ (summary.json, report.html, throughput_latency.png, locust_*.csv)")
    if not summary["passed"]:
        sys.exit(1)


def _server(project: Project, seconds: float) -> Any:
    from maas.loadtest import ready_for_load

    return ready_for_load(project.server(), seconds)


@click.command()
@click.argument("model")
@click.option("--candidate", required=True, help="version to release (an archive in the model store)")
@click.option("--fresh-baseline", is_flag=True, help="re-measure the current default instead of its last summary")
@slo_options
@click.pass_obj
def release(project: Project, model: str, candidate: str, fresh_baseline: bool, slo_file: str | None,
            locust_workers: int, **overrides: Any) -> None:
    """Promote CANDIDATE to MODEL's default only if it answers correctly, meets its SLO and does not regress."""
    from maas.release import release as gate

    slo = slo_for(model, slo_file, project.root, **overrides)
    server = _server(project, 3 * (slo.warmup_s + slo.run_time_s) + 120)
    record = gate(server.client, server.endpoints.inference, server.client.key_file, project.model_store,
                  project.reports_dir, model, candidate, slo, locust_workers, fresh_baseline,
                  worker_restarts=server.worker_restarts, log_dir=server.layout.log_dir)
    if record["promoted"]:
        click.echo(f"released {model} {candidate}: now the default (was {record['previous_default']}); "
                   f"{record['wall_time_s']} s")
    else:
        click.echo(f"NOT released {model} {candidate}; default stays {record['default_now']}:")
        for reason in record["reasons"]:
            click.echo(f"  - {reason}")
    click.echo(f"record: {record['path']}")
    sys.exit(0 if record["promoted"] else 1)
