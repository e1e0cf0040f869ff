"""What every benchmark script writes to its --out folder: results.json, README.md and its plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence


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


def grouped_bars(path: Path, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str,
                 xlabel: str = "", size: tuple[float, float] = (7, 4)) -> None:
    """A bar chart at `path`: one group of bars per label in `groups`, one bar in each per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=size)
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + i * width, list(values), width, label=name)
    ax.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2, list(groups))
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_folder(text: str) -> Path:
    """argparse type of --model: a language model build's folder (what `maas bench --llm` leaves in its store)."""
    import argparse

    folder = Path(text)
    if not (folder / "genai_config.json").is_file() or not (folder / "model.onnx").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a language model build (a folder with genai_config.json "
                                         "and model.onnx, e.g. OUT/store/bench-llm-1.0-int4 from maas bench --llm)")
    return folder
