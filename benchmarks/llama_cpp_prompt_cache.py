"""Where llama.cpp's first-token lead comes from: its server's prompt cache, measured.

    .venv/bin/python benchmarks/llama_cpp_prompt_cache.py --gguf WORK/gguf/model-Q4_0.gguf \
        [--llama-cpp .cache/llama.cpp] [--out benchmarks/results/llama-cpp-prompt-cache]

In `maas bench --llm` llama.cpp's server answers a stream alone with its first token in 42 ms
(p50) against maas's 125, yet its p95 is 129 ms. llama-server keeps each slot's last prompt
and, by default (`cache_prompt: true`), computes only what a new prompt does not share with
the slot it picks (by similarity). The bench's users cycle through a few chat prompts (the
same ones as here: maas.export.clients.LlmClient), so most of a prompt is often there already.
This sends those prompts one at a time, twice over, with the cache on (the default) and off,
and records the tokens llama.cpp computed (`timings.prompt_n`) and how long that took
(`timings.prompt_ms`). The GGUF is the one a `maas bench --llm --llama-cpp` run converted
(WORK/gguf/). Writes results.json and README.md to --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prompts() -> list[str]:
    """The chat prompts of one bench user, in its order (LlmClient.payloads, seed 0)."""
    from maas.export.clients import LlmClient

    return [p.format(i=i) for i, p in enumerate(LlmClient.PROMPTS * 2)]


def measure(url: str, cache: bool) -> list[dict]:
    import requests

    rows = []
    for text in prompts():
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0,
                "cache_prompt": cache}
        answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
        timings = answer["timings"]
        rows.append({"prompt": text, "prompt_tokens": answer["usage"]["prompt_tokens"],
                     "computed": timings["prompt_n"], "prompt_ms": round(timings["prompt_ms"], 1)})
    return rows


def readme(result: dict) -> str:
    lines = [f"# llama.cpp's prompt cache ({result['finished']}, {result['gguf']})", "",
             "Each bench prompt sent alone, twice over (the second round finds the first's prompts in the "
             "server's slots); tokens llama.cpp computed of the prompt's, and the time it took.", "",
             "| prompt | tokens | cache on: computed | ms | cache off: computed | ms |", "|---|---|---|---|---|---|"]
    for on, off in zip(result["cache_on"], result["cache_off"]):
        lines.append(f"| {on['prompt']} | {on['prompt_tokens']} | {on['computed']} | {on['prompt_ms']} | "
                     f"{off['computed']} | {off['prompt_ms']} |")
    lines += ["", f"Median prompt time: cache on {result['median_ms']['on']} ms, off {result['median_ms']['off']} ms.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True, help="a GGUF that `maas bench --llm --llama-cpp` converted")
    parser.add_argument("--llama-cpp", type=Path, default=ROOT / ".cache" / "llama.cpp", help="its build cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llama-cpp-prompt-cache")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from maas.core.machine import cores
    from maas.llama_cpp_peer import LlamaServer, build
    from maas.properties import free_loopback_ports

    args.out.mkdir(parents=True, exist_ok=True)
    # As the bench runs it: threads = cores, 8 slots, continuous batching
    with LlamaServer(build(args.llama_cpp), args.gguf, free_loopback_ports(1)[0], cores(), 8, 1024,
                     args.out / "llama-server.log") as server:
        result = {"gguf": args.gguf.name, "cache_on": measure(server.url, True), "cache_off": measure(server.url, False)}
    result["median_ms"] = {k: statistics.median(r["prompt_ms"] for r in result[f"cache_{k}"]) for k in ("on", "off")}
    result["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "README.md").write_text(readme(result))
    (args.out / "llama-server.log").unlink(missing_ok=True)
    print(readme(result))


if __name__ == "__main__":
    main()
