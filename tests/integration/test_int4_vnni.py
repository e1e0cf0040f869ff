"""The int4 VNNI kernel (handlers/int4_vnni.c) as ONNX Runtime runs it: built with gcc, loaded as a
custom operator, its products equal to MatMulNBits' (same int8 rounding; the float sums in another
order), each row's result the same whatever rows come with it, products it does not take left to
ONNX Runtime, and an int4 build served on it by the generation handler with the same tokens for a
request alone and among others, without spare rows."""
from __future__ import annotations

from pathlib import Path

import int4_vnni
import numpy as np
import pytest
from llm_steps import Call, handler_for, run_steps


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = int4_vnni.library(tmp_path_factory.mktemp("int4_vnni"))
    if built is None:
        pytest.skip("no AVX-512 VNNI or no gcc here: the archives run MatMulNBits (tested everywhere else)")
    return built


def products_model(shapes: list[tuple[int, int]], block: int = 256, zero_points: bool = False, seed: int = 0):
    """A graph of one MatMulNBits per (N, K), each from its own input x<i> [batch, rows, K]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, inputs, outputs = [], [], [], []
    for i, (n, k) in enumerate(shapes):
        blocks = -(-k // block)  # a last, partial block is padded
        inits += [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal((n * blocks,)) * 0.01).astype(np.float32), f"s{i}")]
        names = [f"x{i}", f"w{i}", f"s{i}"]
        if zero_points:
            inits.append(numpy_helper.from_array(rng.integers(0, 256, (n * ((blocks + 1) // 2),), dtype=np.uint8), f"z{i}"))
            names.append(f"z{i}")
        nodes.append(helper.make_node("MatMulNBits", names, [f"y{i}"], domain="com.microsoft", K=k, N=n, bits=4,
                                      block_size=block, accuracy_level=4))
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["batch", "rows", k]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", "rows", n]))
    graph = helper.make_graph(nodes, "int4", inputs, outputs, inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                  helper.make_opsetid("com.microsoft", 1)])


def sessions(model, folder: Path, library: Path) -> tuple:
    """(ONNX Runtime's session of `model`, a session of its rewrite on the kernel, products moved)."""
    import onnx
    import onnxruntime as ort

    onnx.save(model, str(folder / "model.onnx"))
    moved = int4_vnni.rewrite(folder / "model.onnx", folder / "vnni.onnx", "vnni.onnx.data")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(str(library))
    ours = ort.InferenceSession(str(folder / "vnni.onnx"), options, providers=["CPUExecutionProvider"]) if moved else None
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]), ours, moved


def test_the_kernel_computes_what_matmulnbits_computes_row_by_row(tmp_path: Path, library: Path) -> None:
    # K not a multiple of 256 too: Qwen2.5-0.5B's 896 (3.5 blocks), SmolLM2's 576, a block and one value
    shapes = [(32, 256), (96, 512), (512, 2048), (64, 5632), (64, 896), (32, 576), (32, 257), (32, 100)]
    reference, ours, moved = sessions(products_model(shapes), tmp_path, library)
    assert moved == len(shapes)
    rng = np.random.default_rng(1)
    for rows in (1, 2, 3, 8, 13):
        feeds = {f"x{i}": rng.standard_normal((1, rows, k), dtype=np.float32) for i, (_, k) in enumerate(shapes)}
        for expected, got in zip(reference.run(None, feeds), ours.run(None, feeds)):
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * np.abs(expected).max())
        alone = [ours.run(None, {name: x[:, r:r + 1] for name, x in feeds.items()}) for r in range(rows)]
        together = ours.run(None, feeds)
        for i in range(len(shapes)):  # bit for bit: a row's numbers do not depend on the rows beside it
            assert np.array_equal(np.concatenate([a[i] for a in alone], axis=1), together[i])


def test_products_the_kernel_does_not_take_stay_on_onnxruntime(tmp_path: Path, library: Path) -> None:
    for model in (products_model([(64, 256)], block=32), products_model([(48, 256)]),
                  products_model([(64, 256)], zero_points=True)):
        assert sessions(model, tmp_path, library)[2] == 0


def test_a_kernel_that_cannot_build_leaves_the_build_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    onnx.save(products_model([(64, 256)]), str(tmp_path / "batch_decoder.onnx"))
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    assert int4_vnni.library(tmp_path / "elsewhere") is None
    assert int4_vnni.prepare(tmp_path / "batch_decoder.onnx") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch_decoder.onnx"]


def test_a_graph_with_nothing_the_kernel_takes_is_left_alone(tmp_path: Path) -> None:
    import onnx

    onnx.save(products_model([(64, 256)], block=32), str(tmp_path / "batch_decoder.onnx"))
    assert int4_vnni.prepare(tmp_path / "batch_decoder.onnx") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch_decoder.onnx"]  # not even the kernel built


def test_the_rewrite_is_made_once_and_again_for_another_kernel(tmp_path: Path, library: Path) -> None:
    import onnx

    decoder = tmp_path / "batch_decoder.onnx"
    onnx.save(products_model([(64, 256), (64, 256)], block=256), str(decoder))
    target, built, left = int4_vnni.prepare(decoder)
    assert target.name == "batch_decoder.int4_vnni.onnx" and built.parent == tmp_path and left == 0
    written = target.stat().st_mtime_ns
    assert int4_vnni.prepare(decoder)[0].stat().st_mtime_ns == written  # a second worker reuses it
    int4_vnni.rewrite(decoder, target, target.name + ".data", stamp="int4_vnni-an-older-kernel")
    int4_vnni.prepare(decoder)
    stamp = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
    assert stamp == {int4_vnni.STAMP: built.stem}  # laid out again for the kernel built now


@pytest.fixture(scope="module")
def int4_archive(tmp_path_factory: pytest.TempPathFactory, library: Path) -> Path:
    """A seeded random Qwen2 whose every product the kernel takes (N a multiple of 32; K 384, a block
    and a half, in all but the MLP's down projection), packaged at int4 in blocks of 256."""
    from click.testing import CliRunner
    from thirdparty.llm_folders import make_folder

    from maas.cli import cli

    folder = make_folder(tmp_path_factory.mktemp("vnni_src") / "qwen2", "qwen2", vocab_size=416, hidden_size=384,
                         intermediate_size=768, num_attention_heads=6, num_key_value_heads=2)
    store, build = (tmp_path_factory.mktemp(n) for n in ("vnni_store", "vnni_build"))
    result = CliRunner().invoke(cli, ["--model-store", str(store), "package", "--llm", str(folder), "--name", "vnni",
                                      "--precision", "int4", "--int4-block-size", "256", "--max-kl", "5"],
                                env={"MAAS_BUILD_DIR": str(build)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return store / "vnni"


def served_texts(archive: Path, stagger: int, **settings) -> tuple[list[str], object]:
    bodies = [{"prompt": p, "max_tokens": 24, "temperature": 0} for p in ("The pump", "Bearing 7 at", "x")]
    bodies += [{"prompt": f"Valve {i} reports", "max_tokens": 16, "temperature": 0.9, "seed": i} for i in range(3)]
    calls = [Call(body, joins=stagger * i) for i, body in enumerate(bodies)]
    handler, context = handler_for(archive, **settings)
    run_steps(handler, context, calls)
    assert all(call.status == 200 for call in calls)
    return [call.text() for call in calls], handler.engine


def test_an_int4_build_decodes_on_the_kernel_the_same_alone_and_among_others(int4_archive: Path) -> None:
    alone, engine = served_texts(int4_archive, stagger=40)  # one request at a time
    assert engine.int4_kernel == "int4_vnni" and not engine.pairs_rows  # every product on the kernel: no spare rows
    assert served_texts(int4_archive, stagger=0, max_streams=3)[1].staging == 3  # none beyond an odd max_streams
    assert all(alone)
    assert served_texts(int4_archive, stagger=0)[0] == alone  # six at once
    assert served_texts(int4_archive, stagger=1, max_streams=4, prefill_chunk_tokens=3)[0] == alone
    _, onnxruntime_engine = served_texts(int4_archive, stagger=0, int4_vnni=False)
    assert onnxruntime_engine.int4_kernel == "onnxruntime" and onnxruntime_engine.pairs_rows


def test_the_kernel_and_matmulnbits_give_a_prompt_close_logits(int4_archive: Path) -> None:
    from maas.handlers.llm_engine import BatchEngine

    prompt = [5, 17, 42, 8, 99, 3, 61, 200]
    ours = BatchEngine(int4_archive, 2, 64, 2, 2**24).prefill("a", prompt)
    reference = BatchEngine(int4_archive, 2, 64, 2, 2**24, int4_vnni=False).prefill("a", prompt)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-3 * np.abs(reference).max() + 1e-5)


def decoded_logits(archive: Path, prompts: list[list[int]], steps: int = 3, **options) -> np.ndarray:
    """The first sequence's logits over `steps` decode steps, `prompts` all running together."""
    from maas.handlers.llm_engine import BatchEngine

    engine = BatchEngine(archive, len(prompts), 64, 2, 2**24, **options)
    for key, prompt in enumerate(prompts):
        engine.prefill(str(key), prompt)
        engine.activate(str(key))
    return np.stack([engine.decode({str(key): 7 + step for key in range(len(prompts))})["0"] for step in range(steps)])


def test_a_sequence_gets_the_same_logits_bit_for_bit_alone_and_among_others(int4_archive: Path) -> None:
    prompts = [[5, 17, 42, 8], [9, 9, 30], [100, 3, 61, 200, 7], [11]]
    alone = decoded_logits(int4_archive, prompts[:1])
    for count in (2, 3, 4):
        assert np.array_equal(decoded_logits(int4_archive, prompts[:count]), alone), count


def test_an_int8_kv_cache_goes_with_the_kernel(int4_archive: Path) -> None:
    """kv_int8.py's copy of the kernel's graph: both rewrites at once, the kernel's library registered."""
    import kv_int8
    import onnxruntime_genai as og

    from maas.handlers.llm_engine import BatchEngine

    text = list(og.Tokenizer(str(int4_archive)).encode(kv_int8.CALIBRATION_TEXT))
    prompts = [[5, 17, 42, 8], [9, 9, 30]]
    engine = BatchEngine(int4_archive, 2, 64, 2, 2**24, kv_int8_text=text)
    assert engine.decoder_path.name == "batch_decoder.int4_vnni.kv_int8.onnx" and engine.cache[0].dtype == np.int8
    assert engine.int4_kernel == "int4_vnni"
    reference = decoded_logits(int4_archive, prompts)
    cost = kv_int8.kl(reference, decoded_logits(int4_archive, prompts, kv_int8_text=text))
    assert cost < 1e-3, cost


def test_an_archive_in_a_read_only_store_serves_on_the_kernel_it_carries(int4_archive: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """As the image runs it: no compiler, the model store mounted read-only. `maas package` put the
    kernel's library in the archive (listed in manifest.json, so checked at load); the worker writes
    its graph on the kernel and its int8 KV cache's copy to a private directory under the temp dir,
    and answers as it does from a writable store; the store is left as it was."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    manifest = json.loads((int4_archive / "manifest.json").read_text())
    assert [name for name in manifest["files"] if name.startswith("int4_vnni-")] == [int4_vnni.library_name()]
    copy, view = tmp_path / "store" / "vnni", tmp_path / "ro" / "vnni"
    shutil.copytree(int4_archive, copy, ignore=lambda _, names: [n for n in names if ".int4_vnni." in n
                                                                 or ".kv_int8." in n or n.endswith(".lock")])
    view.mkdir(parents=True)
    if os.geteuid():  # not root: permissions make it read-only
        view.rmdir()
        copy.rename(view)
        for path in (view, *view.iterdir()):
            path.chmod(path.stat().st_mode & ~0o222)
    elif subprocess.run(["mount", "--bind", str(copy), str(view)], capture_output=True).returncode:
        pytest.skip("root here may not mount: a read-only bind mount is how this test makes a store read-only")
    try:
        if not os.geteuid():
            assert subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode == 0
        before = sorted(p.name for p in view.iterdir())
        monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        texts, engine = served_texts(view, stagger=0, kv_cache_int8=True)
        assert engine.int4_kernel == "int4_vnni" and engine.cache[0].dtype == np.int8
        assert engine.decoder_path.parent.parent == tmp_path / "tmp" / f"maas-{os.getuid()}"
        assert sorted(p.name for p in view.iterdir()) == before
    finally:
        if not os.geteuid():
            subprocess.run(["umount", "--lazy", str(view)], capture_output=True)  # the sessions still map its files
        else:
            for path in (view, *view.iterdir()):
                path.chmod(path.stat().st_mode | 0o200)
            view.rename(copy)
    assert served_texts(copy, stagger=0, kv_cache_int8=True)[0] == texts  # a writable store answers the same
