"""Decision records (release, capacity) written beside the load-test reports they rest on."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maas.core.clock import stamp


def write_record(reports_dir: Path, model: str, kind: str, record: dict[str, Any]) -> Path:
    """reports/<UTC time>-<model>-<kind>/<kind>.json (release and capacity records)."""
    when = stamp()
    out = reports_dir / f"{when}-{model}-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
