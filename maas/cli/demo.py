"""demo: the whole road on the zoo and a third-party model."""
from __future__ import annotations

import click

from maas.cli.build import build
from maas.project import Project


@click.command()
@click.option("--run-time", default=20, show_default=True, help="seconds of the demo's load test")
@click.pass_obj
def demo(project: Project, run_time: int) -> None:
    """Build the zoo, package a third-party model, train a small language model, serve them, send real
    requests (streaming the language model's answer through the OpenAI client), load-test, stop."""
    from maas.demo import serve_and_show

    click.get_current_context().invoke(build, models=(), version=None, seed=None)
    serve_and_show(project, run_time, click.echo)
