"""What `maas status` and `maas serve status` print: one row per registered model version, and the server line."""
from __future__ import annotations

from typing import Any

from maas.client import ApiError, TorchServeClient


def status_rows(client: TorchServeClient, model: str | None = None,
                restarts: dict[tuple[str, str], int] | None = None) -> list[dict[str, Any]]:
    """One row per registered model version: default flag, workers (id, status, pid), batching, device,
    and worker restarts since the server started (when `restarts` is given: TorchServe.worker_restarts())."""
    names = [model] if model else [m["modelName"] for m in client.list_models()]
    rows = []
    for name in names:
        try:
            described = client.describe(name, "all")
            default = str(client.describe(name)[0]["modelVersion"])
        except ApiError as err:
            if model:
                raise
            # TorchServe registers names its own routes cannot reach (it decodes %2F: `a/../b`):
            # one row says so, the other models are listed as usual.
            rows.append({"model": name, "version": "?", "default": False, "workers": [], "batch_size": "?",
                         "max_batch_delay_ms": "?", "device": "?",
                         "error": f"TorchServe cannot describe it (HTTP {err.status}); names with '/' cannot be "
                                  "addressed through its API"})
            continue
        for desc in described:
            workers = desc.get("workers", [])
            rows.append({
                "model": name,
                "version": str(desc["modelVersion"]),
                "default": str(desc["modelVersion"]) == default,
                "workers": [{"id": w.get("id"), "status": w.get("status"), "pid": w.get("pid")} for w in workers],
                "min_workers": desc.get("minWorkers"),
                "max_workers": desc.get("maxWorkers"),
                "batch_size": desc.get("batchSize"),
                "max_batch_delay_ms": desc.get("maxBatchDelay"),
                "device": "gpu" if any(w.get("gpu") for w in workers) else "cpu",
            })
            if restarts is not None:
                rows[-1]["worker_restarts"] = restarts.get((name, str(desc["modelVersion"])), 0)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The status table, columns as wide as their longest value."""
    restarts = any("worker_restarts" in r for r in rows)
    table = [["MODEL", "VERSION", "DEFAULT", "BATCH", "DELAY", "DEVICE"] + (["RESTARTS"] if restarts else [])
             + ["WORKERS (id status pid)"]]
    for r in rows:
        workers = r.get("error") or ", ".join(f"{w['id']} {w['status']} {w['pid']}" for w in r["workers"]) or "none"
        table.append([r["model"], r["version"], "*" if r["default"] else "", str(r["batch_size"]),
                      str(r["max_batch_delay_ms"]), r["device"]]
                     + ([str(r.get("worker_restarts", 0))] if restarts else []) + [workers])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {3, 4}  # numbers
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table)


def server_summary(server: Any, info: dict[str, Any] | None = None) -> str:
    """The server's health and endpoints, then its models' table (or that it is not running)."""
    info = info or server.status()
    if not info["running"]:
        return f"TorchServe is not running (logs: {info['log_dir']})"
    ep = info["endpoints"]
    rows = info.get("models") or status_rows(server.client, restarts=server.worker_restarts())
    return (f"TorchServe {info.get('health', '?')}  inference {ep['inference']}  management {ep['management']}"
            f"  metrics {ep['metrics']}  logs {info['log_dir']}\n" + format_rows(rows))
