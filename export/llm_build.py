"""A generative language model from a local Hugging Face folder to the model store.

    folder (config.json, *.safetensors, tokenizer, generation config, chat template)  -- never a hub
      -> ONNX Runtime GenAI's model builder at the precision asked (fp32 | int8 | int4 for CPU,
         fp16 | int4 for CUDA), offline (HF_HUB_OFFLINE)
      -> verified (llm_verify: fp32 greedy parity; a quantized build's cost, held to its budget)
      -> manifest.json (sha256 and size of every file, architecture, context length, precision,
         tokenizer, chat template, eos ids, parity or cost) + model-config.yaml (continuous batching)
      -> torch-model-archiver --archive-format no-archive: model_store/<name>/, a folder TorchServe
         serves as it is (a zip of gigabytes would be written, then unpacked again at every start)
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maas.core.clock import now_iso
from maas.core.errors import ExportError
from maas.core.names import name_problem
from maas.export.archive import HANDLERS_DIR, PICKLE_SUFFIXES, _versions, handler_support
from maas.export.batch_decoder import write_batch_decoder
from maas.export.kv_cache import KV_CACHE_TYPES, half_kv_cache, kv_cache_type
from maas.handlers import int4_vnni
from maas.handlers.integrity import sha256_file
from maas.handlers.llm_engine import BATCH_DECODER
from maas.handlers.llm_settings import DEFAULT_SETTINGS

log = logging.getLogger(__name__)

PRECISIONS = {"cpu": ("fp32", "int8", "int4"), "cuda": ("fp16", "int4", "fp32")}
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
# Weights per int4 scale, tried largest first when --int4-block-size is not given: the first build
# within the cost budget is kept. The builder's default is 32; on CPU, ONNX Runtime's MatMulNBits
# (int8 compute, accuracy level 4) decodes faster with larger blocks: on a 568M Llama on 2 AVX-512
# VNNI cores, one stream 12.2 ms a token at 256 vs 14.3 at 128 and 17-18 at 32, eight streams 31.7
# vs 37.2 and 39-42 ms a step, a 16-token prefill chunk 53.5 vs 61.0 ms; mean KL from fp32 0.153 vs
# 0.138 vs 0.101 nats (random weights; trained ones quantize better). A model that a large block
# costs too much falls back to the next. CUDA keeps the builder's default (unmeasured: no GPU here).
INT4_BLOCK_ORDER = {"cpu": (256, 128, 32)}
HANDLER = "llm.py"
# Serving defaults (model-config.yaml): one worker decodes up to `batchSize` streams together
# (TorchServe's continuous batching: each handle() call is one step for every live stream).
# batchSize bounds what the handler sees: its running streams, its queue, and room to answer more
# with a 429 (beyond batchSize TorchServe queues requests itself, out of the handler's sight).
SERVING = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 32, "maxBatchDelay": 5, "responseTimeout": 600,
           "startupTimeout": 600, "continuousBatching": True}
# Instead: TorchServe's asynchronous worker (handlers/llm_async.py): the engine steps on a thread of its
# own and streams while the next step runs, without a frontend round trip a step; each request reaches
# the handler alone (batchSize 1) as it arrives. Not the default: that frontend never says that a
# client left, so an abandoned generation runs to its end.
ASYNC_SERVING = {"asyncCommunication": True, "continuousBatching": False, "batchSize": 1}


class LlmSourceError(ExportError):
    """The folder is not a language model maas can build."""

    show_type = False


@dataclass(frozen=True)
class LlmOptions:
    source: Path
    name: str | None = None
    version: str = "1.0"
    precision: str = "fp32"
    device: str = "cpu"  # the execution provider the build targets: cpu | cuda
    parity_tokens: int = 16
    max_kl: float | None = None  # a quantized build's budget (mean KL vs fp32, nats) instead of llm_verify's
    int4_block_size: int | None = None  # weights per int4 scale; None: INT4_BLOCK_ORDER's first within budget
    kv_cache: str | None = None  # fp16: the KV cache in half the bytes (kv_cache.py; CPU builds); None: the builder's


def quantization(precision: str, device: str, block_size: int | None = None) -> dict[str, int]:
    """The builder's quantization options for a build (empty: its defaults, or nothing to quantize)."""
    if precision != "int4":
        if block_size is not None:
            raise ExportError(f"--int4-block-size applies to int4 builds, not {precision}")
        return {}
    block = block_size or INT4_BLOCK_ORDER.get(device, (None,))[0]
    if block is None:
        return {}
    if block not in INT4_BLOCK_SIZES:
        raise ExportError(f"int4 block size {block}: the builder takes {', '.join(map(str, INT4_BLOCK_SIZES))}")
    return {"block_size": block, "accuracy_level": 4}  # 4: int8 arithmetic; fp32 (1) costs 2.2-3.6x a step (graph-variants)


def quantization_choices(precision: str, device: str, block_size: int | None = None) -> list[dict[str, int]]:
    """The quantizations to build in turn until one is within budget: the one asked for, or on CPU
    int4 without a block size every block of INT4_BLOCK_ORDER, the fastest first."""
    if precision == "int4" and block_size is None and device in INT4_BLOCK_ORDER:
        return [quantization(precision, device, block) for block in INT4_BLOCK_ORDER[device]]
    return [quantization(precision, device, block_size)]


@dataclass(frozen=True)
class LlmResult:
    name: str
    version: str
    path: Path  # model_store/<name>[-<version>]/
    manifest: dict[str, Any]
    seconds: dict[str, float]


def read_source(source: Path) -> dict[str, Any]:
    """What the folder says of itself; a clear error for what maas cannot build from."""
    if not source.is_dir():
        raise LlmSourceError(f"{source}: not a folder (give a local Hugging Face model folder: config.json, "
                             "*.safetensors, tokenizer files)")
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LlmSourceError(f"{source}: no readable config.json ({exc.__class__.__name__})") from None
    weights = sorted(source.glob("*.safetensors"))
    pickled = sorted(p.name for p in source.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if not weights:
        raise LlmSourceError(f"{source}: no *.safetensors weights" + (
            f" (found {', '.join(pickled)}: pickled weights can run code when loaded; convert them to safetensors)"
            if pickled else ""))
    if not ((source / "tokenizer.json").is_file() or (source / "tokenizer.model").is_file()):
        raise LlmSourceError(f"{source}: no tokenizer.json or tokenizer.model beside the weights")
    clash = _lm_head_clash(config)
    if clash:
        raise LlmSourceError(f"{source}: the vocabulary ({config['vocab_size']} tokens) is as wide as the {clash}: ONNX "
                             "Runtime GenAI's builder takes every linear layer that wide for the LM head and wires the "
                             "output to the wrong layer (the build would fail maas's parity check)",
                             hint="pad the vocabulary (resize the embeddings) to another size")
    generation = {}
    if (source / "generation_config.json").is_file():
        try:
            generation = json.loads((source / "generation_config.json").read_text())
        except ValueError as exc:
            raise LlmSourceError(f"{source / 'generation_config.json'}: not JSON ({exc})") from None
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    return {
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "model_type": config.get("model_type", "?"),
        "context_length": config.get("max_position_embeddings"),
        "parameters_bytes": sum(p.stat().st_size for p in weights),
        "eos_token_ids": eos if isinstance(eos, list) else [eos] if eos is not None else [],
        "source_folder": source.name,
        "config_sha256": sha256_file(source / "config.json"),
    }


def _lm_head_clash(config: dict[str, Any]) -> str | None:
    """Which projection is exactly as wide as the vocabulary (None: none is). The builder of
    onnxruntime-genai 0.18 finds the LM head as a Linear with vocab_size outputs."""
    vocab, hidden = config.get("vocab_size"), config.get("hidden_size")
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or (hidden // heads if hidden else None)
    widths = {"key/value projections": (config.get("num_key_value_heads") or heads) * head_dim if head_dim else None,
              "hidden size": hidden, "MLP": config.get("intermediate_size"),
              "query projection": heads * head_dim if head_dim else None}
    return next((name for name, width in widths.items() if width and width == vocab), None)


def _builder_error(output: str) -> str:
    """The builder's own last words, for a one-line error."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln)]
    return (errors or lines or ["no output"])[-1][:400]


def run_builder(source: Path, out: Path, precision: str, device: str, cache: Path,
                options: dict[str, int] | None = None) -> float:
    """ONNX Runtime GenAI's model builder, offline; its progress goes to the log as it comes."""
    if shutil.rmtree(out, ignore_errors=True) or out.exists():
        raise ExportError(f"{out}: cannot clear the previous build")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
           "-p", precision, "-e", device, "-c", str(cache)]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        text = line.strip().split("\r")[-1]
        if text and "%|" not in text:  # tqdm bars redraw hundreds of times; their last state is enough
            log.info("builder: %s", text[:200])
    if proc.wait() != 0:
        raise ExportError(f"the ONNX Runtime GenAI builder failed on {source.name} at {precision}/{device}: "
                          f"{_builder_error(''.join(seen))}",
                          hint="supported: Llama, Mistral, Qwen2/3, Phi, Gemma and more (not GPT-2): the list is in "
                               "onnxruntime_genai/models/builder.py (its --help fails to print in 0.18)")
    return time.perf_counter() - start


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file the handler loads (what it checks before loading)."""
    return {p.name: {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
            for p in sorted(folder.iterdir()) if p.is_file()}


def chat_template(onnx_dir: Path) -> str | None:
    jinja = onnx_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = onnx_dir / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.is_file() else None


def verify(source: Path, onnx_dir: Path, precision: str, device: str, tokens: int,
           max_kl: float | None = None, halved_cache: bool = False) -> dict[str, Any]:
    """Parity at fp32, the cost of a quantized build (an fp32 build with its KV cache halved is priced
    as fp16 is: greedy tokens may part from transformers' on a near tie); a CUDA build where no GPU is
    here is unverified."""
    from maas.export import llm_verify

    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers() or not _gpu_present():
            return {"verified": False, "why": "a CUDA build, and no GPU here: serve it where one is and run "
                                              "`maas package --llm` there to verify it"}
    reference = llm_verify.Reference.load(source)
    if precision == "fp32" and not halved_cache:
        return {"verified": True, "parity": llm_verify.greedy_parity(reference, onnx_dir, tokens)}
    priced_as = "fp16" if precision == "fp32" else precision
    return {"verified": True, "cost": llm_verify.quantized_cost(reference, onnx_dir, priced_as, tokens, max_kl)}


def build_within_budget(opts: LlmOptions, onnx_dir: Path, cache: Path) -> tuple[dict[str, int], dict[str, Any], dict[str, float]]:
    """Build and verify each of quantization_choices in turn; (quantization, checks, seconds) of the
    first within the cost budget. The blocks tried before it are named in its cost ("larger_blocks")."""
    seconds, tried = {"build": 0.0, "verify": 0.0}, []
    for quant in quantization_choices(opts.precision, opts.device, opts.int4_block_size):
        start = time.perf_counter()
        run_builder(opts.source, onnx_dir, opts.precision, opts.device, cache, quant)
        if opts.kv_cache == "fp16":
            half_kv_cache(onnx_dir, _decoder_file(onnx_dir))
        if opts.device == "cpu":  # the serving engine's copy, one position's logits (batch_decoder.py)
            write_batch_decoder(onnx_dir, _decoder_file(onnx_dir))
        middle = time.perf_counter()
        checks = verify(opts.source, onnx_dir, opts.precision, opts.device, opts.parity_tokens, opts.max_kl,
                        halved_cache=opts.kv_cache == "fp16")
        seconds = {"build": round(seconds["build"] + middle - start, 1),
                   "verify": round(seconds["verify"] + time.perf_counter() - middle, 1)}
        cost = checks.get("cost")
        if cost is None or cost["within_budget"]:
            if tried:
                cost["larger_blocks"] = tried
            return quant, checks, seconds
        tried.append({"block_size": quant["block_size"], "mean_kl": cost["mean_kl"]} if quant else {"mean_kl": cost["mean_kl"]})
        log.info("%s: a mean KL of %.4g nats per token is over the budget of %g: trying the next block size",
                 f"{opts.precision} blocks of {quant.get('block_size')}", cost["mean_kl"], cost["kl_budget"])
    blocks = ", ".join(f"blocks of {t['block_size']}: {t['mean_kl']:.4g}" for t in tried if "block_size" in t)
    raise ExportError(f"{opts.precision} costs a mean KL divergence of {cost['mean_kl']:.4g} nats per token against fp32 "
                      f"(budget {cost['kl_budget']}; top-1 agreement {cost['top1_agreement']:.1%}"
                      f"{'; ' + blocks if len(tried) > 1 else ''}): not archived",
                      hint="try a higher precision (int8, fp32), or accept the cost with --max-kl")


def _gpu_present() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def archive_llm(build_dir: Path, onnx_dir: Path, name: str, version: str, model_store: Path, folder_name: str) -> Path:
    """torch-model-archiver, no-archive format: model_store/<folder_name>/ holds the handler, its
    support modules, the ONNX files, manifest.json and model-config.yaml as they are."""
    handler = HANDLERS_DIR / HANDLER
    extra = [*handler_support(handler), build_dir / "manifest.json",
             *(p for p in sorted(onnx_dir.iterdir()) if p.is_file() and p.name != "model.onnx")]
    target = model_store / folder_name
    staging = model_store / f".{folder_name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", version,
           "--serialized-file", str(onnx_dir / "model.onnx"), "--handler", str(handler),
           "--extra-files", ",".join(map(str, extra)), "--config-file", str(build_dir / "model-config.yaml"),
           "--archive-format", "no-archive", "--export-path", str(staging), "--force"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"torch-model-archiver failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    # The archiver writes <export-path>/<model-name>/; swap it in whole so a server never reads half a model.
    shutil.rmtree(target, ignore_errors=True)
    (staging / name).replace(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def package_llm(opts: LlmOptions, build_root: Path, model_store: Path) -> LlmResult:
    """Build, verify and archive a language model folder; the one road for generative models."""
    device, precision = opts.device, opts.precision
    if precision not in PRECISIONS.get(device, ()):
        raise ExportError(f"precision {precision} is not built for {device}: {device} takes {', '.join(PRECISIONS.get(device, ()))}")
    quantization_choices(precision, device, opts.int4_block_size)  # a block size that cannot apply fails first
    if opts.kv_cache not in (None, *KV_CACHE_TYPES):
        raise ExportError(f"--kv-cache {opts.kv_cache}: choose {' or '.join(KV_CACHE_TYPES)}")
    if opts.kv_cache == "fp16" and device != "cpu":
        raise ExportError("--kv-cache fp16 applies to CPU builds (a CUDA build keeps the builder's cache: "
                          "its fp16 build's is fp16 already)")
    facts = read_source(opts.source)
    name = opts.name or re.sub(r"[^A-Za-z0-9._-]", "-", opts.source.resolve().name)
    if problem := name_problem(name):
        raise ExportError(f"{problem} (give --name)")
    build_dir = build_root / f"{name}-{opts.version}"
    build_dir.mkdir(parents=True, exist_ok=True)
    onnx_dir = build_dir / "onnx"
    quant, checks, seconds = build_within_budget(opts, onnx_dir, build_root / ".hf-cache")
    genai = json.loads((onnx_dir / "genai_config.json").read_text())["model"]
    if device == "cpu":  # the int4 kernel's library, built here: the servers' image has no compiler
        decoder = onnx_dir / BATCH_DECODER
        int4_vnni.ship(decoder if decoder.is_file() else onnx_dir / "model.onnx")
    manifest = {
        "kind": "llm",
        "name": name,
        "version": opts.version,
        "created": now_iso(),
        **facts,
        "context_length": genai.get("context_length", facts["context_length"]),
        "eos_token_ids": _as_list(genai.get("eos_token_id", facts["eos_token_ids"])),
        "bos_token_id": genai.get("bos_token_id"),
        "vocab_size": genai.get("vocab_size"),
        "precision": precision,
        **({"quantization": quant} if quant else {}),
        "execution_provider": device,
        "kv_cache": _kv_cache_of(onnx_dir),
        "tokenizer": "tokenizer.json" if (onnx_dir / "tokenizer.json").is_file() else "tokenizer.model",
        "chat_template": chat_template(onnx_dir),
        "files": file_table(onnx_dir),
        **checks,
        "seconds": seconds,
        "versions": {**_versions(), "onnxruntime-genai": _genai_version()},
    }
    (build_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    config = {**SERVING, "deviceType": "gpu" if device == "cuda" else "cpu",
              "handler": dict(DEFAULT_SETTINGS)}
    (build_dir / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    folder = name if opts.version == "1.0" else f"{name}-{opts.version}"
    path = archive_llm(build_dir, onnx_dir, name, opts.version, model_store, folder)
    seconds["archive"] = round(time.perf_counter() - start, 1)
    return LlmResult(name, opts.version, path, manifest, seconds)


def _decoder_file(onnx_dir: Path) -> str:
    return json.loads((onnx_dir / "genai_config.json").read_text())["model"]["decoder"]["filename"]


def _kv_cache_of(onnx_dir: Path) -> str | None:
    """fp32 or fp16: what the build's decoder keeps its KV cache in."""
    import onnx

    return kv_cache_type(onnx.load(str(onnx_dir / _decoder_file(onnx_dir)), load_external_data=False).graph)


def _as_list(value: Any) -> list[int]:
    return value if isinstance(value, list) else [value] if value is not None else []


def _genai_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai-cuda")
    except metadata.PackageNotFoundError:
        return "?"


def summary_lines(path: Path, manifest: dict[str, Any]) -> list[str]:
    """What `maas package --llm` says of a language model it archived."""
    size = sum(f["size_bytes"] for f in manifest["files"].values())
    seconds = manifest["seconds"]
    block = manifest.get("quantization", {}).get("block_size")
    precision = manifest["precision"] + (f" (blocks of {block})" if block else "")
    if manifest.get("kv_cache") == "fp16" and manifest["execution_provider"] == "cpu":
        precision += ", KV cache fp16"
    lines = [f"packaged {path}/ ({manifest['architecture']}, {precision} for {manifest['execution_provider']}, "
             f"context {manifest['context_length']}, {size / 1e6:.1f} MB; build {seconds['build']:g} s, "
             f"verify {seconds['verify']:g} s)"]
    if "parity" in manifest:
        p = manifest["parity"]
        lines.append(f"  parity: greedy tokens equal transformers' on {p['equal']}/{p['prompts']} prompts")
    elif "cost" in manifest:
        c = manifest["cost"]
        lines.append(f"  cost vs fp32: mean KL {c['mean_kl']:.3g} nats (budget {c['kl_budget']:g}), next-token top-1 "
                     f"agreement {c['top1_agreement']:.1%}, greedy agreement {c['greedy_agreement']:.1%}")
        if c.get("larger_blocks"):
            lines.append("  faster larger blocks were over the budget: " + ", ".join(
                f"blocks of {t['block_size']} mean KL {t['mean_kl']:.3g}" for t in c["larger_blocks"]))
    else:
        lines.append(f"  unverified: {manifest.get('why', '')}")
    return lines
