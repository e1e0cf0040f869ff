"""Read and write TorchServe's config.properties (Java properties, key=value lines)."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


def read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


# Keys whose values are file paths: relative ones are taken relative to config.properties.
PATH_KEYS = ("metrics_config", "certificate_file", "private_key_file", "keystore", "model_store", "workflow_store")


def resolve_paths(props: dict[str, str], base_dir: Path) -> dict[str, str]:
    """props with relative PATH_KEYS made absolute against base_dir (TorchServe runs elsewhere)."""
    out = dict(props)
    for key in PATH_KEYS:
        if out.get(key) and not Path(out[key]).is_absolute():
            out[key] = str((Path(base_dir) / out[key]).resolve())
    return out


def write_properties(path: Path, props: dict[str, str], header: str = "") -> None:
    lines = [f"# {header}"] if header else []
    lines += [f"{k}={v}" for k, v in props.items()]
    Path(path).write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Endpoints:
    """Where a TorchServe configured by `props` listens (TorchServe's defaults when unset)."""

    inference: str
    management: str
    metrics: str

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> "Endpoints":
        return cls(
            inference=props.get("inference_address", "http://127.0.0.1:8080").rstrip("/"),
            management=props.get("management_address", "http://127.0.0.1:8081").rstrip("/"),
            metrics=props.get("metrics_address", "http://127.0.0.1:8082").rstrip("/"),
        )

    def ports(self) -> list[int]:
        return [urlsplit(u).port or 80 for u in (self.inference, self.management, self.metrics)]


def free_loopback_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (all held open until all are picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def on_free_loopback_ports(props: dict[str, str]) -> dict[str, str]:
    """props with the three HTTP APIs and both gRPC ports moved to free loopback ports."""
    inf, mgmt, met, g1, g2 = free_loopback_ports(5)
    return {**props, "inference_address": f"http://127.0.0.1:{inf}", "management_address": f"http://127.0.0.1:{mgmt}",
            "metrics_address": f"http://127.0.0.1:{met}", "grpc_inference_port": str(g1), "grpc_management_port": str(g2)}
