"""The two ways maas writes the time: one for file and folder names, one inside records."""
from __future__ import annotations

from datetime import datetime, timezone


def stamp() -> str:
    """UTC to the millisecond, sortable and safe in a file name: 20261202T083512.123Z."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def now_iso() -> str:
    """UTC to the second, ISO 8601, for the fields of JSON records: 2026-12-02T08:35:12+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
