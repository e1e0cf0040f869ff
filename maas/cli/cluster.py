"""cluster: replicas behind HAProxy on one address."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from maas.project import Project


@click.group()
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


@click.group()
def swarm() -> None:
    """Replicas of the serving image under Docker Swarm, behind HAProxy on one address: Swarm replaces
    a dead container, scales, and rolls a new model version out one container at a time."""


def _swarm(project: Project) -> Any:
    from maas.swarm import Swarm

    return Swarm(project.run_dir / "swarm")


@swarm.command("start")
@click.argument("tree", type=click.Path(file_okay=False, path_type=Path))
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 16), help="containers to run")
@click.option("--max-replicas", default=8, show_default=True, type=click.IntRange(1, 16),
              help="slots HAProxy knows (the most `maas swarm scale` can run)")
@click.option("--port", default=8090, show_default=True, help="HAProxy's inference port on 127.0.0.1")
@click.pass_obj
def swarm_start(project: Project, tree: Path, replicas: int, max_replicas: int, port: int) -> None:
    """Serve TREE (a storage tree of `maas export-kserve`, e.g. deploy/kserve/storage/minilm) from
    REPLICAS containers of the image (`maas image build`); the key is in run/swarm/key_file.json."""
    s = _swarm(project)
    address = s.start(tree, replicas, port, max_replicas)
    click.echo(f"{replicas} containers of {s.image} behind {address} (key: {s.key_file})")


@swarm.command("status")
@click.pass_obj
def swarm_status(project: Project) -> None:
    """Each slot as HAProxy sees it, and Swarm's last update."""
    s = _swarm(project)
    state = s.state()
    click.echo(f"HAProxy {state['address']}, service {state['service']} on {state['tree']}: "
               f"{s.replicas()} replicas, last update {s.update_status()}")
    for name, status in s.server_states().items():
        click.echo(f"  {name:<10} {status}")


@swarm.command("scale")
@click.argument("replicas", type=click.IntRange(1, 16))
@click.pass_obj
def swarm_scale(project: Project, replicas: int) -> None:
    """Run REPLICAS containers; returns once HAProxy sees them all UP."""
    _swarm(project).scale(replicas)
    click.echo(f"{replicas} replicas UP")


@swarm.command("update")
@click.argument("tree", type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def swarm_update(project: Project, tree: Path) -> None:
    """Roll the containers onto TREE (e.g. a new model version's storage tree), one at a time."""
    _swarm(project).update(tree)
    click.echo(f"updated to {tree}")


@swarm.command("stop")
@click.pass_obj
def swarm_stop(project: Project) -> None:
    """Remove the service and stop HAProxy."""
    click.echo("stopped" if _swarm(project).stop() else "no swarm service was running")
