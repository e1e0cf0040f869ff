"""Audit a TorchServe config.properties against maas's security defaults.

TorchServe 0.12 gets no more security fixes (ShellTorch: management API on all
interfaces, SSRF through a permissive allowed_urls, unsafe model dependencies), so
`maas serve start` refuses a config that reopens those doors unless told --insecure.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
GRPC_KEYS = ("grpc_inference_address", "grpc_management_address")
# URLs no allowed_urls pattern may match: remote archives, cloud metadata, local files, other schemes.
REMOTE_PROBES = (
    "http://example.com/model.mar",
    "https://example.com/model.mar",
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:8081/models",
    "file:///etc/passwd",
    "file:///root/model.mar",
    "s3://bucket/model.mar",
    "ftp://example.com/model.mar",
    "https://10.0.0.7/models/model.mar",  # a pattern that allows any host under a path
    "http://attacker.example.org/models/resnet.mar",
)
# Keys that let the environment override the audited file (TorchServe's TS_* variables, e.g.
# TS_DISABLE_TOKEN_AUTHORIZATION) or its allowed_urls (TS_ALLOWED_URLS).
ENVIRONMENT_KEYS = ("enable_envvars_config", "use_env_allowed_urls")
MAX_REQUEST_CAP = 64 * 1024 * 1024


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _flag(props: dict[str, str], key: str) -> bool:
    return props.get(key, "false").strip().lower() == "true"


def _tls_configured(props: dict[str, str]) -> bool:
    return bool(props.get("keystore") or (props.get("certificate_file") and props.get("private_key_file")))


def audit(props: dict[str, str]) -> list[str]:
    """Every way `props` is less safe than the defaults; empty when it is fine."""
    problems = []
    for key in ADDRESS_KEYS:
        url = props.get(key)
        if url is None:
            problems.append(f"{key} is unset: TorchServe's default may not be loopback; set it to http://127.0.0.1:PORT")
            continue
        parts = urlsplit(url)
        if key == "metrics_address":  # keyless whatever the scheme: below
            continue
        if not is_loopback(parts.hostname) and not (parts.scheme == "https" and _tls_configured(props)):
            problems.append(f"{key}={url} listens beyond loopback without TLS (https + certificate_file/private_key_file)")
    for key in GRPC_KEYS:
        host = props.get(key)
        if host is not None and not is_loopback(host) and not _flag(props, "enable_grpc_ssl"):
            problems.append(f"{key}={host} listens beyond loopback without enable_grpc_ssl")
    if _flag(props, "disable_token_authorization"):
        problems.append("disable_token_authorization=true: every API is open to anyone who can connect")
    allowed = props.get("allowed_urls")
    if allowed is None:
        problems.append("allowed_urls is unset: TorchServe's default allows any http(s) or file URL (SSRF)")
    else:
        for pattern in (p.strip() for p in allowed.split(",") if p.strip()):
            try:
                regex = re.compile(pattern, re.IGNORECASE)  # as TorchServe compiles it (Pattern.CASE_INSENSITIVE)
            except re.error as exc:
                problems.append(f"allowed_urls pattern {pattern!r} is not a valid regex: {exc}")
                continue
            hits = [u for u in REMOTE_PROBES if regex.fullmatch(u)]
            if hits:
                problems.append(f"allowed_urls pattern {pattern!r} lets TorchServe download {hits[0]} (and {len(hits) - 1} more)")
    for key in ENVIRONMENT_KEYS:
        if _flag(props, key):
            problems.append(f"{key}=true: TorchServe takes settings from TS_* environment variables, not only this file")
    metrics = urlsplit(props.get("metrics_address", "")).hostname
    if "metrics_address" in props and not is_loopback(metrics):
        problems.append(f"metrics_address={props['metrics_address']}: TorchServe's metrics API takes no key, so "
                        "anyone who can connect reads it (TLS does not change that); scrape it on loopback")
    if _flag(props, "install_py_dep_per_model"):
        problems.append("install_py_dep_per_model=true: registering an archive would pip-install its requirements")
    cap = props.get("max_request_size")
    if cap is None:
        problems.append("max_request_size is unset: no request size cap")
    elif not cap.isdigit() or int(cap) > MAX_REQUEST_CAP:
        problems.append(f"max_request_size={cap}: cap requests at {MAX_REQUEST_CAP} bytes or less")
    return problems
