"""What every benchmark script writes to its --out folder: results.json, README.md and its plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def publish(out: Path, result: dict[str, Any], readme: Callable[[dict[str, Any]], str],
            plot: Callable[[dict[str, Any], Path], None] | None = None, png: str = "") -> None:
    """results.json, `png` (drawn by `plot`) and README.md in `out`; the README printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if plot is not None:
        plot(result, out / png)
    text = readme(result)
    (out / "README.md").write_text(text)
    print(text)


def build_folder(text: str) -> Path:
    """argparse type of --model: a language model build's folder (what `maas bench --llm` leaves in its store)."""
    import argparse

    folder = Path(text)
    if not (folder / "genai_config.json").is_file() or not (folder / "model.onnx").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a language model build (a folder with genai_config.json "
                                         "and model.onnx, e.g. OUT/store/bench-llm-1.0-int4 from maas bench --llm)")
    return folder
