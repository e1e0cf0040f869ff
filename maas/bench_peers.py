"""The bench's peers: what a competent TorchServe user would serve instead of maas.

    eager     (minilm) PyTorch eager, the style of TorchServe's own Hugging Face example:
              the primary peer, every headline ratio is against it
    torchscript  the same trained weights (read from our archive's ONNX file where they map onto the
              module by name) traced with torch.jit.trace, stock BaseHandler
              (digits' peer; for minilm a second, labelled row: TorchScript is deprecated
              and re-specialises on each new sequence length)
    openvino  (minilm) what an engineer picks to go faster on x86 without maas: the PyTorch
              model converted to OpenVINO IR, the same stock handler shape (needs `openvino`,
              installed by `make bench`; skipped with one line without it)
    openvino-int8  (minilm) the same IR quantized to INT8 by NNCF's post-training quantization
              (transformer preset), calibrated on the same sentences as maas's ov-int8 variant:
              OpenVINO's own fastest path, as its docs advise (needs `nncf`, as above)

Each is archived with torch-model-archiver as `<family>-<peer>.mar`, handler from
maas/peer_handlers/. The weights are the ones ours are built from; the bench checks the
answers agree before it measures anything.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

log = logging.getLogger(__name__)

PEER_DIR = Path(__file__).resolve().parent / "peer_handlers"  # package data: the bench works from a wheel
# minilm's tokenizer and config files the eager and OpenVINO handlers load with AutoTokenizer/AutoModel.
HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def archive(family: str, peer: str, work: Path, store: Path, serialized: Path, handler: str,
            extra: list[Path], model_config: dict) -> Path:
    """torch-model-archiver with the peer's handler; returns store/<family>-<peer>.mar."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "model-config.yaml").write_text(yaml.safe_dump(model_config, sort_keys=False))
    name = f"{family}-{peer}"
    cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
           "--serialized-file", str(serialized), "--handler", str(PEER_DIR / handler),
           "--extra-files", ",".join(str(p) for p in extra), "--config-file", str(work / "model-config.yaml"),
           "--export-path", str(store), "--force"]
    store.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver for the {peer} peer failed: {done.stderr.strip()[-800:]}")
    log.info("peer archive %s.mar built (%s)", name, handler)
    return store / f"{name}.mar"


def served_weights(mar: Path) -> dict[str, Any]:
    """{initializer name: array} of the ONNX file in an archive of ours ({} without one, or when its
    weights live in external files)."""
    import zipfile

    import onnx
    from onnx import numpy_helper

    if not mar.exists():
        return {}
    with zipfile.ZipFile(mar) as z:
        if "model.onnx" not in z.namelist():
            return {}
        proto = onnx.load_model_from_string(z.read("model.onnx"))
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
        return {}
    return {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}


def trained_like_ours(family: str, store: Path) -> Any:
    """The family's module with the weights of our archive in `store`, read from its ONNX file (the
    very weights served; digits: no 14 s of training again), or trained again, seeded as ours was,
    where the ONNX initializers do not map onto the module's parameters by name and shape."""
    import torch

    from maas.export import zoo

    model = zoo.get(family)
    weights = served_weights(store / f"{family}.mar")
    if weights:
        zoo_log = logging.getLogger("maas.export.zoo")
        level = zoo_log.level
        zoo_log.setLevel(logging.WARNING)  # the untrained shell's accuracy is no news
        try:
            shell = model.tiny()
        finally:
            zoo_log.setLevel(level)
        state = shell.module.state_dict()
        if state and all(k in weights and tuple(v.shape) == weights[k].shape for k, v in state.items()):
            shell.module.load_state_dict({k: torch.from_numpy(weights[k].copy()) for k in state})
            log.info("%s: the peer takes the weights of %s.mar", family, family)
            return shell
    return model.train()


def build_torchscript(family: str, work: Path, store: Path) -> Path:
    import torch

    from maas.export import zoo

    model = zoo.get(family)
    trained = trained_like_ours(family, store)
    work.mkdir(parents=True, exist_ok=True)
    example = tuple(torch.from_numpy(trained.sample[n][:2]) for n in model.spec.input_names)
    traced = torch.jit.trace(trained.module.eval(), example, check_trace=False)
    traced.save(str(work / "peer.pt"))
    (work / "peer.json").write_text(json.dumps({"kind": family}))
    return archive(family, "torchscript", work, store, work / "peer.pt", "torch_peer.py",
                   [work / "peer.json", *map(Path, trained.assets)], model.spec.model_config())


def build_eager(family: str, work: Path, store: Path) -> Path:
    from maas.export import zoo
    from maas.export.zoo.minilm import model_dir

    source = model_dir()
    return archive(family, "eager", work, store, source / "model.safetensors", "eager_peer.py",
                   [source / f for f in HF_FILES], zoo.get(family).spec.model_config())


def build_openvino(family: str, work: Path, store: Path) -> Path:
    import openvino as ov
    import torch

    from maas.export import zoo
    from maas.export.zoo.minilm import model_dir

    model = zoo.get(family)
    trained = model.train()
    sample = {n: torch.from_numpy(trained.sample[n][:4]) for n in model.spec.input_names}
    converted = ov.convert_model(trained.module.eval(), example_input=tuple(sample.values()),
                                 input=[(n, [-1, -1], ov.Type.i64) for n in sample])
    work.mkdir(parents=True, exist_ok=True)
    ov.save_model(converted, str(work / "model.xml"))  # weights compressed to FP16 on disk, FP32 compute on CPU
    source = model_dir()
    return archive(family, "openvino", work, store, work / "model.bin", "openvino_peer.py",
                   [work / "model.xml", *(source / f for f in HF_FILES)], model.spec.model_config())


def build_openvino_int8(family: str, work: Path, store: Path) -> Path:
    import nncf
    import openvino as ov

    from maas.export import zoo
    from maas.export.zoo.minilm import model_dir

    model = zoo.get(family)
    if not (work / "fp32" / "model.xml").is_file():
        build_openvino(family, work / "fp32", work / "fp32-store")
    calibration = model.calibration(256)  # the texts maas's ov-int8 variant is calibrated on
    quantized = nncf.quantize(ov.Core().read_model(str(work / "fp32" / "model.xml")), nncf.Dataset(calibration),
                              model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(calibration))
    ov.save_model(quantized, str(work / "model.xml"))
    source = model_dir()
    return archive(family, "openvino-int8", work, store, work / "model.bin", "openvino_peer.py",
                   [work / "model.xml", *(source / f for f in HF_FILES)], model.spec.model_config())


BUILDERS: dict[str, Callable[[str, Path, Path], Path]] = {
    "eager": build_eager, "torchscript": build_torchscript, "openvino": build_openvino,
    "openvino-int8": build_openvino_int8}
LABELS = {"eager": "peer eager PyTorch", "torchscript": "peer TorchScript", "openvino": "peer OpenVINO",
          "openvino-int8": "peer OpenVINO INT8 (NNCF)"}


def peers_for(family: str) -> list[str]:
    """The peers benchmarked for a family, in report order (the primary peer first)."""
    if family != "minilm":
        return ["torchscript"]
    peers = ["eager", "torchscript"]
    if importlib.util.find_spec("openvino") is not None:
        peers.append("openvino")
        if importlib.util.find_spec("nncf") is not None:
            peers.append("openvino-int8")
    else:
        log.warning("bench: openvino is not installed, the OpenVINO peers are skipped (`make bench` installs it)")
    return peers


def primary_peer(family: str) -> str:
    return LABELS[peers_for(family)[0]]


def build_peers(family: str, work: Path, store: Path) -> None:
    """Every peer archive of `family` the store lacks."""
    for peer in peers_for(family):
        if not (store / f"{family}-{peer}.mar").exists():
            BUILDERS[peer](family, work / f"{family}-{peer}", store)

