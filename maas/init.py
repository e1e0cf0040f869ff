"""`maas init`: a folder becomes a maas project (config, metrics, model store, spec template).

The templates ship inside the package (maas/templates/); this checkout's own config.properties
and metrics.yaml are the same files (a test keeps them equal).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

TEMPLATES = ("config.properties", "metrics.yaml", "maas.yaml")
GITIGNORE = """\
# maas: never commit keys, server state, build outputs or archives
key_file.json
run/
logs/
build/
reports/
model_store/*.mar
workflow_store/*.war
"""


def template(name: str) -> str:
    return resources.files("maas").joinpath("templates", name).read_text()


def init_project(directory: Path, force: bool = False) -> list[str]:
    """Write the project files into `directory`; returns what was done, a line each. Existing
    files are kept unless `force` (a .gitignore is only ever added to)."""
    directory.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TEMPLATES:
        target = directory / name
        if target.exists() and not force:
            done.append(f"kept {target} (exists; --force overwrites)")
            continue
        target.write_text(template(name))
        done.append(f"wrote {target}")
    for folder in ("model_store", "workflow_store"):
        (directory / folder).mkdir(exist_ok=True)
        done.append(f"made {directory / folder}/")
    ignore = directory / ".gitignore"
    existing = ignore.read_text() if ignore.exists() else ""
    missing = [line for line in GITIGNORE.splitlines() if line and not line.startswith("#") and line not in existing]
    if missing:
        with open(ignore, "a") as f:
            f.write(("\n" if existing and not existing.endswith("\n") else "") + "\n".join(
                ["# added by maas init", *missing]) + "\n")
        done.append(f"{'updated' if existing else 'wrote'} {ignore}")
    return done
