"""The published language-model speed run (benchmarks/results/llm-speed/): `make bench-llm`.

    .venv/bin/python benchmarks/llm_speed.py [--work DIR] [--run-time 30] [--warmup 8]

Writes the seeded random 568M-parameter Llama of benchmarks/large_llm.py (fp32 weights 2.27 GB,
the demo's 512-token BPE tokenizer) once, then runs `maas bench --llm` on it with both peers:
transformers `generate` in a stock TorchServe handler, and llama.cpp's server built from PyPI's
llama-cpp-python sources (cached in .cache/llama.cpp). Random weights quantize worst, so int4 is
accepted past its KL budget (--max-kl 0.5) and its cost is reported.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from large_llm import make_folder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "llm-speed")
    parser.add_argument("--run-time", default="30")
    parser.add_argument("--warmup", default="8")
    args = parser.parse_args()
    source = args.work / "llama"
    if not (source / "model.safetensors").is_file():
        print(f"writing a seeded random Llama into {source} ...", flush=True)
        make_folder(source)
    subprocess.run([sys.executable, "-m", "maas.cli", "bench", "--llm", str(source), "--max-kl", "0.5",
                    "--run-time", args.run_time, "--warmup", args.warmup, "--llama-cpp", str(ROOT / ".cache" / "llama.cpp"),
                    "--out", str(args.work / "out"), "--publish", str(ROOT / "benchmarks" / "results" / "llm-speed")],
                   check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
