"""The int4 products of a CPU build on an AVX-512 VNNI kernel of our own (int4_vnni.c).

ONNX Runtime's MatMulNBits reads int4 weights at the memory's pace for one row, but its several-row
kernel leaves most of these cores' int8 arithmetic unused: a decode step of 8 streams cost 2.55x a
lone stream's in its products alone (benchmarks/results/int4-kernel-rows). int4_vnni.c computes the
same products (same blocks, scales and int8 rounding) on a layout made for VNNI. An int4 archive
carries the kernel built as a shared library (`maas package` builds it where gcc is, named by the
source's hash); at load, where the CPU has AVX-512 VNNI (and the library is there, or gcc to build
it), `prepare` writes a copy of the batch decoder (where derived.py says) whose eligible MatMulNBits
nodes (4 bits, blocks of 256, no zero points, N a multiple of 32) run it, their weights and scales
rearranged for it; anything else stays on ONNX Runtime's own kernels. Elsewhere, or when anything
fails, the archive runs as built.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

try:  # flat, as inside an archive
    from derived import locked, workdir
except ImportError:  # maas.handlers.int4_vnni
    from .derived import locked, workdir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
DOMAIN, OP = "maas.int4", "Int4VnniMatMul"
STAMP = "maas.int4_vnni"  # metadata of a rewritten graph: the kernel build (its source's hash) it was laid out for
BLOCK = 256
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-shared", "-fPIC"]


def library(cache_dir: Path, shipped: Path | None = None) -> Path | None:
    """The kernel built for this machine: the one `shipped` carries (an archive folder), else
    `cache_dir`/int4_vnni-<hash>.so, built there if absent; or None where it cannot run: not x86-64
    Linux, no such library and no gcc, or a CPU without AVX-512 VNNI."""
    if not _buildable():
        return None
    path = shipped / library_name() if shipped is not None and (shipped / library_name()).is_file() else build(cache_dir)
    if path is None:
        return None
    if not ctypes.CDLL(str(path)).maas_int4_vnni_supported():
        log.info("int4 VNNI kernel: this CPU has no AVX-512 VNNI; MatMulNBits serves the int4 products")
        return None
    return path


def _buildable() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64") and SOURCE.is_file()


def cpu_has_vnni() -> bool:
    """What the kernel needs, as the Linux kernel reports the CPU's flags (the library checks again)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= set(flags.split(":", 1)[-1].split())


def library_name() -> str:
    """The library's file name: the hash of its source and flags (a new kernel is never an old file)."""
    return f"int4_vnni-{hashlib.sha256(SOURCE.read_bytes() + ' '.join(FLAGS).encode()).hexdigest()[:16]}.so"


def build(cache_dir: Path) -> Path | None:
    """`cache_dir`/int4_vnni-<hash of source and flags>.so, compiled if it is not there (any x86-64 CPU
    compiles it; it runs only on one with AVX-512 VNNI): what `maas package` puts in an int4 archive,
    for servers without a compiler (the container image has none). None: not x86-64 Linux, or no
    library and no compiler, or it did not build (logged)."""
    if not _buildable():
        return None
    path = cache_dir / library_name()
    if path.is_file():
        return path
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        log.info("int4 VNNI kernel: no C compiler and no library built for it; MatMulNBits serves the int4 products")
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    built = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial)], capture_output=True, text=True)
    if built.returncode:
        log.warning("int4 VNNI kernel did not build; MatMulNBits serves the int4 products:\n%s", built.stderr[-2000:])
        partial.unlink(missing_ok=True)
        return None
    partial.replace(path)  # atomic: workers of one model may build it at once
    return path


def repack(weights: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' [N, blocks, 128] bytes (two weights a byte, low nibble first) and [N, blocks]
    scales -> the kernel's [N/16, blocks, 32, 64] bytes (see int4_vnni.c) and [N/16, blocks, 16] scales."""
    n, blocks, half = weights.shape
    if half != BLOCK // 2 or n % 32:
        raise ValueError(f"not a product the kernel takes: weights {weights.shape}")
    nibbles = np.stack([weights & 15, weights >> 4], axis=-1).reshape(n // 16, 16, blocks, BLOCK // 8, 2, 4)
    packed = nibbles[..., 0, :] | (nibbles[..., 1, :] << 4)  # [N/16, 16 columns, blocks, 32 pairs, 4]
    packed = np.ascontiguousarray(packed.transpose(0, 2, 3, 1, 4)).reshape(n // 16, blocks, BLOCK // 8, 64)
    grouped = np.ascontiguousarray(scales.reshape(n // 16, 16, blocks).transpose(0, 2, 1))
    return packed, grouped.astype(np.float32)


def eligible(node: Any, initializers: dict[str, Any], uses: dict[str, int]) -> bool:
    """A MatMulNBits the kernel computes exactly as ONNX Runtime's accuracy level 4 does."""
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or len(node.input) != 3:
        return False
    attrs = {a.name: a.i for a in node.attribute}
    weights, scales = (initializers.get(name) for name in node.input[1:])
    return (attrs.get("bits") == 4 and attrs.get("block_size") == BLOCK and attrs.get("accuracy_level") == 4
            and attrs["N"] % 32 == 0 and weights is not None and scales is not None  # K any: a last block is padded
            and weights.data_type == 2 and list(weights.dims) == [attrs["N"], -(-attrs["K"] // BLOCK), BLOCK // 2]
            and scales.data_type == 1 and math.prod(scales.dims) == attrs["N"] * -(-attrs["K"] // BLOCK)  # uint8, float
            and all(uses[name] == 1 for name in node.input[1:]))


def eligible_nodes(graph: Any) -> list[int]:
    """Positions of `graph`'s nodes the kernel takes (needs no weights loaded)."""
    initializers = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return [i for i, node in enumerate(graph.node) if eligible(node, initializers, uses)]


def rewrite(source: Path, target: Path, weights_file: str, stamp: str = "") -> int:
    """`source`'s graph with every eligible MatMulNBits on the kernel, saved as `target`, its weights in
    `weights_file` beside it, `stamp` (the kernel's build) in its metadata. -> how many products
    moved (none: nothing saved)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    moved = eligible_nodes(graph)
    for index in moved:
        node = graph.node[index]
        attrs = {a.name: a.i for a in node.attribute}
        weights, scales = (numpy_helper.to_array(initializers[name]) for name in node.input[1:])
        packed, grouped = repack(weights, scales.reshape(attrs["N"], -1))
        for name, array in zip(node.input[1:], (packed, grouped)):
            initializers[name].CopyFrom(numpy_helper.from_array(array, name))
        graph.node[index].CopyFrom(helper.make_node(OP, list(node.input), list(node.output), name=node.name,
                                                    domain=DOMAIN, K=attrs["K"], N=attrs["N"]))
    if moved:
        if not any(o.domain == DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
        onnx.helper.set_model_props(model, {STAMP: stamp})
        onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=weights_file, size_threshold=1024)
    return len(moved)


def ship(decoder: Path) -> Path | None:
    """At package time: the kernel's library built beside `decoder` when its graph has products the
    kernel takes, so that the archive carries it (its workers then need no compiler); else None."""
    import onnx

    if not eligible_nodes(onnx.load(str(decoder), load_external_data=False).graph):
        return None
    if (built := build(decoder.parent)) is None:
        log.warning("int4 VNNI kernel not built into the archive (see above): servers without a compiler (the "
                    "container image) will serve its int4 products on MatMulNBits")
    return built


def prepare(decoder: Path) -> tuple[Path, Path, int] | None:
    """(the decoder with its int4 products on the kernel, the kernel's library, how many
    MatMulNBits it still has): the library the archive carries (else built), the decoder written
    once beside `decoder` (or where derived.workdir says, for a read-only archive) and again when
    either changes; or None: run `decoder` as it is (nothing eligible, no VNNI, no library and no
    gcc, or a failure, logged)."""
    try:
        import onnx

        if not eligible_nodes(onnx.load(str(decoder), load_external_data=False).graph):
            return None  # fp32, int8 or other blocks: nothing to build or rewrite
        if not _buildable() or not cpu_has_vnni():
            log.info("int4 VNNI kernel: not on this machine (x86-64 Linux, AVX-512 VNNI); MatMulNBits serves the "
                     "int4 products")
            return None
        work = workdir(decoder.parent)  # the archive's folder, or one of its own where that is read-only
        lib = library(work, shipped=decoder.parent) if work is not None else None
        if lib is None:
            return None
        target = work / f"{decoder.stem}.int4_vnni.onnx"
        with locked(target):
            built = onnx.load(str(target), load_external_data=False) if target.is_file() else None
            stamp = {p.key: p.value for p in built.metadata_props}.get(STAMP) if built else None
            data = target.with_name(target.name + ".data")  # gone while the graph stayed: a temp dir's cleaner
            if stamp != lib.stem or target.stat().st_mtime < decoder.stat().st_mtime or not data.is_file():
                partial = target.with_name(f"{target.stem}.partial.onnx")
                rewrite(decoder, partial, target.name + ".data", lib.stem)
                partial.replace(target)
                built = onnx.load(str(target), load_external_data=False)
        return target, lib, sum(n.op_type == "MatMulNBits" for n in built.graph.node)
    except Exception:  # the build as archived still serves
        log.exception("int4 VNNI kernel not used; MatMulNBits serves the int4 products")
        return None
