"""What a prompt pays for the LM head, with a real vocabulary: every position's logits or the last one's.

    .venv/bin/python benchmarks/last_position_logits.py [--vocab 128256] [--layers 2] \
        [--prompts 16,256] [--out benchmarks/results/last-position-logits]

The bench's 568M Llama has the 512-token vocabulary of a tokenizer trained here, so its LM head is
nothing; Llama 3's has 128256 tokens (Qwen2.5's 151936): 263 M multiply-accumulates a position at a
hidden size of 2048. ONNX Runtime GenAI's graph computes the head for every position of a prompt;
the serving engine reads the last one's. This builds a seeded random Llama with that vocabulary and
a small body (its hidden size 2048, `--layers` layers), int4 as maas builds it for CPU, and times the
serving engine's prefill of `--prompts` tokens on the graph as built and on its one-position copy
(export/batch_decoder.py, what `maas package --llm` archives since 2026-12-04), interleaved, after
checking both give the same logits. The saving is the head's: the same in milliseconds whatever
the body, a smaller share of a deeper model's prefill.
Writes results.json, README.md and prefill.png to --out.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # the seeded folders' tokenizer trainer
from published import grouped_bars, publish  # noqa: E402 -- beside this script

HIDDEN = 2048


def source_folder(out: Path, vocab: int, layers: int) -> Path:
    """A Hugging Face folder: seeded random Llama weights at `vocab`, a tokenizer trained here."""
    import torch
    import transformers
    from thirdparty.llm_folders import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(out)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                                      num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).eval().save_pretrained(out, safe_serialization=True)
    return out


def builds(source: Path, work: Path) -> tuple[Path, Path]:
    """The int4 build as the builder writes it, and a folder of the same files with the one-position copy."""
    from maas.export.batch_decoder import write_batch_decoder
    from maas.export.llm_build import quantization, run_builder

    full, one = work / "as-built", work / "last-position"
    run_builder(source, full, "int4", "cpu", work / "cache", quantization("int4", "cpu", 256))
    one.mkdir()
    for path in full.iterdir():
        if path.is_file():
            os.link(path, one / path.name)
    if write_batch_decoder(one) is None:
        raise SystemExit("the build's logits do not come from a product the copy can feed one position")
    return full, one


def time_prefills(folders: dict[str, Path], lengths: list[int], rounds: int, threads: int) -> list[dict[str, Any]]:
    """Median ms of a prompt's prefill (the staging row, from an empty cache) per folder and length."""
    from maas.handlers.llm_engine import BatchEngine

    engines = {name: BatchEngine(folder, 2, max(lengths) + 8, threads, 2**34) for name, folder in folders.items()}
    rng, cases = np.random.default_rng(0), []
    for length in lengths:
        times: dict[str, list[float]] = {name: [] for name in engines}
        for round_ in range(rounds + 1):  # the first is a warm-up
            prompt, answers = rng.integers(3, 500, length).tolist(), {}
            for name, engine in engines.items():
                started = time.perf_counter()
                answers[name] = engine.prefill(f"r{round_}", prompt)
                if round_:
                    times[name].append((time.perf_counter() - started) * 1e3)
                engine.drop(f"r{round_}")
                engine.length.pop(f"r{round_}", None)
                engine.staging_tokens.clear()  # from an empty cache again: nothing reused
            first, second = answers.values()
            if not np.allclose(first, second, atol=1e-3):
                raise SystemExit(f"the copy's logits differ: {float(np.abs(first - second).max()):.3g} at {length} tokens")
        cases.append({"tokens": length, "prefill_ms": {name: round(statistics.median(t), 1) for name, t in times.items()}})
        print(f"{length} tokens: {cases[-1]['prefill_ms']}", file=sys.stderr, flush=True)
    return cases


def plot(result: dict[str, Any], path: Path) -> None:
    cases = result["cases"]
    grouped_bars(path, [f"{c['tokens']} tokens" for c in cases],
                 {name: [c["prefill_ms"][name] for c in cases] for name in cases[0]["prefill_ms"]},
                 "ms a prompt's prefill (median)",
                 f"LM head of {result['vocab']} tokens: every position's logits or the last one's")

def readme(result: dict[str, Any]) -> str:
    lines = [f"# A prompt's LM head: every position's logits or the last one's ({result['when']})", "",
             f"A seeded random Llama, vocabulary {result['vocab']} (Llama 3's), hidden size {HIDDEN}, "
             f"{result['layers']} layers, int4 (blocks of 256) as maas builds it for CPU; {result['threads']} threads, "
             f"onnxruntime {result['onnxruntime']}. The serving engine's prefill of a prompt from an empty cache, "
             f"on the graph as ONNX Runtime GenAI built it and on its one-position copy (`batch_decoder.onnx`), "
             f"interleaved, median of {result['rounds']}; both checked to give the same logits. Made by "
             "`benchmarks/last_position_logits.py`.", "",
             "| prompt tokens | every position ms | last position ms | saved ms |", "|---|---|---|---|"]
    for c in result["cases"]:
        every, last = c["prefill_ms"]["every position"], c["prefill_ms"]["last position"]
        lines.append(f"| {c['tokens']} | {every} | {last} | {every - last:.1f} |")
    lines += ["", "The saving is the head's own arithmetic and its logits' memory: the same milliseconds with a "
              "deeper body, a smaller share of its prefill.", "", "![prefill](prefill.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama 3: 128256)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the body")
    parser.add_argument("--prompts", default="16,256", help="prompt lengths in tokens, comma-separated")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved prefills per length")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "last-position-logits")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from maas.core.machine import cores

    try:
        lengths = [int(n) for n in args.prompts.split(",")]
    except ValueError:
        parser.error(f"--prompts {args.prompts}: token counts, e.g. 16,256")
    with tempfile.TemporaryDirectory() as scratch:
        full, one = builds(source_folder(Path(scratch) / "source", args.vocab, args.layers), Path(scratch))
        cases = time_prefills({"every position": full, "last position": one}, lengths, args.rounds, cores())
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vocab": args.vocab,
              "layers": args.layers, "threads": cores(), "rounds": args.rounds,
              "onnxruntime": onnxruntime.__version__, "cases": cases}
    publish(args.out, result, readme, plot, "prefill.png")


if __name__ == "__main__":
    main()
