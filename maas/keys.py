"""TorchServe token authorization keys (key_file.json), always read fresh.

TorchServe 0.12 writes key_file.json into its working directory at start:
  {"management": {"key", "expiration time"}, "inference": {...}, "API": {"key"}}
Management and inference keys expire after `token_expiration_min`; the API key does not
and renews them through POST /token?type=management|inference on the management port,
after which TorchServe rewrites the file. Nothing here caches a key across calls.

TorchServe rewrites the file in place (truncate, then write), so a reader can find it empty or
cut short while a key is renewed; read_keys reads again for a moment before it gives up.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from maas.core.errors import ServeError


class KeyFileError(ServeError):
    """key_file.json is missing or unreadable."""


@dataclass(frozen=True)
class Key:
    value: str
    expires: datetime | None

    def expires_within(self, seconds: float) -> bool:
        if self.expires is None:
            return False
        return self.expires <= datetime.now(timezone.utc) + timedelta(seconds=seconds)


def write_private(path: Path, text: str) -> None:
    """`text` in a file only its owner can read from its first byte (write_text then chmod leaves a
    moment at 0644 in which another user may open it and keep reading)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT
        f.write(text)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    # Java writes nanoseconds ("2026-11-23T17:17:16.605532240Z"); Python takes microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


REREAD_S = 0.5  # how long a file caught mid-rewrite is read again (a rewrite takes ~1 ms)


def _load(path: Path) -> dict:
    deadline = time.monotonic() + REREAD_S
    while True:
        try:
            return json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KeyFileError(f"no key file at {path}: is TorchServe running (maas serve start)?") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc}") from None
        except json.JSONDecodeError as exc:  # empty or cut short: caught while TorchServe rewrites it
            if time.monotonic() > deadline:
                raise KeyFileError(f"cannot read key file {path}: {exc}") from None
            time.sleep(0.005)


def read_keys(path: Path) -> dict[str, Key]:
    """{"management": Key, "inference": Key, "API": Key} from TorchServe's key file."""
    raw = _load(path)
    if not isinstance(raw, dict):
        raise KeyFileError(f"key file {path} is not a JSON object")
    keys = {}
    for kind, entry in raw.items():
        if isinstance(entry, dict) and "key" in entry:
            keys[kind] = Key(str(entry["key"]), _parse_time(entry.get("expiration time")))
    for kind in ("management", "inference", "API"):
        if kind not in keys:
            raise KeyFileError(f"key file {path} has no {kind!r} key")
    return keys
