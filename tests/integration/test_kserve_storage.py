"""The storage trees `maas export-kserve` writes really serve: a real TorchServe started from
each tree's own config/config.properties and model-store/ (only its addresses moved to free
loopback ports and /mnt/models to the tree), probed the way the manifests probe it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from conftest import Built
from maas.config_audit import audit
from maas.export import zoo
from maas.export.zoo import maintenance, minilm
from maas.kube import MOUNT, _probes, export_all
from maas.properties import on_free_loopback_ports, read_properties, write_properties
from maas.server import ServerLayout, TorchServe

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model_store: Path, built_models: dict[str, Built]) -> Path:
    out = tmp_path_factory.mktemp("deploy")
    result = export_all([zoo.get(m).spec for m in built_models], ROOT / "config.properties", model_store,
                        out / "kserve", out / "kubernetes")
    assert not result.missing and len(result.archives) == len(built_models)
    return out / "kserve" / "storage"


def local_copy(tree: Path, into: Path) -> Path:
    """The tree's config with /mnt/models -> the tree and the pod addresses -> free loopback ports."""
    props = read_properties(tree / "config" / "config.properties")
    for key, value in props.items():
        props[key] = value.replace(MOUNT, str(tree))
    props = on_free_loopback_ports(props)
    path = into / "config.properties"
    write_properties(path, props)
    return path


def sample_inputs(model: str) -> dict[str, np.ndarray]:
    if model == "maintenance":
        return {"features": maintenance.generate(2, seed=5).features()}
    if model == "minilm":
        return minilm.encode(["The pump is leaking.", "Bearing temperature is normal."])
    return {"pixels": np.full((2, 1, 8, 8), 8.0, dtype=np.float32)}


@pytest.mark.parametrize("model", ["maintenance", "digits", "minilm"])
def test_storage_tree_serves_v2_without_keys(model: str, exported: Path, tmp_path: Path) -> None:
    tree = exported / model
    assert (tree / "model-store" / f"{model}.mar").is_file()
    # The pod config loosens exactly two things, on purpose (see maas/kube.py): pod-network
    # inference/metrics and no token authorization. Nothing else the audit checks.
    pod_findings = audit(read_properties(tree / "config" / "config.properties"))
    assert len(pod_findings) == 3 and sum("disable_token_authorization" in f for f in pod_findings) == 1
    assert sum("metrics API takes no key" in f for f in pod_findings) == 1  # behind the NetworkPolicy in a pod
    assert all("listens beyond loopback" in f for f in pod_findings if "disable_token" not in f and "metrics" not in f)

    ts = TorchServe(ServerLayout(local_copy(tree, tmp_path), tree / "model-store", tmp_path / "run"))
    ts.start(timeout=240, insecure=True)
    try:
        base = ts.endpoints.inference
        # No key file, no Authorization header: what kubelet's probes send.
        for probe in _probes().values():
            path = probe["httpGet"]["path"]
            assert requests.get(base + path, timeout=5).status_code == 200, path
        assert not (tmp_path / "run" / "key_file.json").exists()
        # The model API is off: nothing can be registered, even from inside the pod.
        refused = requests.post(f"{ts.endpoints.management}/models", params={"url": f"{model}.mar"}, timeout=10)
        assert refused.status_code in (400, 403, 405), refused.text
        described = requests.get(f"{ts.endpoints.management}/models/{model}", timeout=10).json()[0]
        spec = zoo.get(model).spec
        assert described["batchSize"] == spec.serving.batch_size
        assert described["maxBatchDelay"] == spec.serving.max_batch_delay_ms

        client = triton.InferenceServerClient(base.split("://", 1)[1])
        inputs = []
        for name, data in sample_inputs(model).items():
            tensor = triton.InferInput(name, list(data.shape), triton.np_to_triton_dtype(data.dtype))
            tensor.set_data_from_numpy(data, binary_data=False)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(t.name, binary_data=False) for t in spec.outputs]
        result = client.infer(model, inputs, outputs=outputs)
        for out in spec.outputs:
            assert result.as_numpy(out.name).shape[0] == 2
    finally:
        ts.stop()
