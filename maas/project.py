"""Where a maas project keeps things: config, model store, server run dir, builds, reports."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from maas.server import ServerLayout, TorchServe

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Project:
    root: Path
    config: Path
    model_store: Path
    run_dir: Path
    build_dir: Path
    reports_dir: Path

    @classmethod
    def locate(cls, config: str | None = None, model_store: str | None = None, run_dir: str | None = None,
               reports_dir: str | None = None) -> "Project":
        """Paths from arguments, then MAAS_* variables, then the project holding config.properties."""
        # The folder holding config.properties: here (a `maas init` folder, or this checkout), else
        # the checkout maas runs from (an editable install), else here (commands that need a config
        # then say to run `maas init`).
        here = Path.cwd()
        root = here if (here / "config.properties").exists() else (
            REPO_ROOT if (REPO_ROOT / "config.properties").exists() else here)

        def pick(arg: str | None, env: str, default: Path) -> Path:
            return Path(arg or os.environ.get(env) or default).resolve()

        config_path = pick(config, "MAAS_CONFIG", root / "config.properties")
        return cls(
            root=root,
            config=config_path,
            model_store=pick(model_store, "MAAS_MODEL_STORE", _configured(config_path, "model_store") or root / "model_store"),
            run_dir=pick(run_dir, "MAAS_RUN_DIR", root / "run"),
            build_dir=pick(None, "MAAS_BUILD_DIR", root / "build"),
            reports_dir=pick(reports_dir, "MAAS_REPORTS_DIR", root / "reports"),
        )

    @property
    def workflow_store(self) -> Path:
        """config.properties' workflow_store (relative to the config), else <root>/workflow_store."""
        return _configured(self.config, "workflow_store") or self.root / "workflow_store"

    def server(self) -> TorchServe:
        return TorchServe(ServerLayout(self.config, self.model_store, self.run_dir))


def _configured(config: Path, key: str) -> Path | None:
    """A path config.properties sets (relative ones from its folder), None when it sets none."""
    from maas.properties import read_properties, resolve_paths

    props = resolve_paths(read_properties(config), config.parent) if config.is_file() else {}
    return Path(props[key]) if props.get(key) else None
