"""The names maas gives models and versions: letters, digits, '.', '_', '-'.

They end up in URLs, file names (<name>-<version>.mar) and Kubernetes objects. TorchServe itself
accepts far more (`a/../b`, `été`, a NUL); maas quotes whatever it finds registered
(maas.client.api_path) but only ever creates names that need no quoting.
"""
from __future__ import annotations

import re

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def name_problem(name: object, what: str = "model name") -> str | None:
    """Why `name` cannot be used, or None."""
    if isinstance(name, str) and NAME.match(name):
        return None
    return f"{what} {name!r}: use letters, digits, '.', '_' and '-' only (starting with a letter or digit, at most 128)"
