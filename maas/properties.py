"""Read and write TorchServe's config.properties (Java properties, key=value lines)."""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


def read_properties(path: Path) -> dict[str, str]:
    """config.properties as TorchServe's Java reads it (java.util.Properties.load): `key=value`,
    `key: value` or `key value`, backslash escapes (`disable\\_token_authorization` is
    disable_token_authorization), lines continued by a trailing backslash, # and ! comments. A
    simpler reading would audit one file while TorchServe runs another."""
    props: dict[str, str] = {}
    for line in _logical_lines(Path(path).read_text()):
        end = 0
        while end < len(line) and line[end] not in "=: \t\f":
            end += 2 if line[end] == "\\" else 1
        rest = line[end:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        props[_unescape(line[:end])] = _unescape(rest).rstrip()
    return props


def _logical_lines(text: str) -> list[str]:
    lines, pending = [], None
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if pending is None and (not line or line[0] in "#!"):
            continue
        if (len(line) - len(line.rstrip("\\"))) % 2:  # an odd number of trailing backslashes: continued
            pending = (pending or "") + line[:-1]
            continue
        lines.append((pending or "") + line)
        pending = None
    return lines + ([pending] if pending else [])


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _escape(text: str, key: bool) -> str:
    """`text` written so that Java reads it back as it is."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if key:
        return re.sub(r"([=: #!])", r"\\\1", text)
    return "\\" + text if text.startswith(" ") else text


# Keys whose values are file paths: relative ones are taken relative to config.properties.
PATH_KEYS = ("metrics_config", "certificate_file", "private_key_file", "keystore", "model_store", "workflow_store")


def resolve_paths(props: dict[str, str], base_dir: Path) -> dict[str, str]:
    """props with relative PATH_KEYS made absolute against base_dir (TorchServe runs elsewhere)."""
    out = dict(props)
    for key in PATH_KEYS:
        if out.get(key) and not Path(out[key]).is_absolute():
            out[key] = str((Path(base_dir) / out[key]).resolve())
    return out


def write_properties(path: Path, props: dict[str, str], header: str = "", private: bool = False) -> None:
    """`private`: readable by its owner only, from the first byte (a keystore_pass may be in it)."""
    lines = [f"# {header}"] if header else []
    lines += [f"{_escape(k, True)}={_escape(v, False)}" for k, v in props.items()]
    if private:
        from maas.keys import write_private

        write_private(Path(path), "\n".join(lines) + "\n")
    else:
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
