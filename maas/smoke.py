"""Answers every release candidate must get right before it is load-tested.

Each case: a title, a request body, its content type, and a check of the answer that
returns None when right or what is wrong. The inputs have known answers: records that
trigger a published failure rule, real digit scans with their labels, sentence pairs
whose similarity order is obvious.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from maas.demo_requests import HEAT_FAILURE, HEALTHY, OVERSTRAIN, THREE

Check = Callable[[Any], Optional[str]]
Case = tuple[str, bytes, str, Check]


def _failure(expected: bool, mode: str | None = None) -> Check:
    def check(answer: Any) -> Optional[str]:
        if not isinstance(answer, dict) or answer.get("failure") is not expected:
            return f"expected failure={expected}, got {str(answer)[:120]}"
        if mode and answer["failure_modes"].get(mode, 0) < 0.5:
            return f"expected {mode} >= 0.5, got {answer['failure_modes']}"
        return None
    return check


def _top1(label: str) -> Check:
    def check(answer: Any) -> Optional[str]:
        top = next(iter(answer), None) if isinstance(answer, dict) else None
        return None if top == label else f"expected top label {label}, got {str(answer)[:120]}"
    return check


def _minilm_cases() -> list[Case]:
    texts = ["The machine is overheating.", "The engine temperature is far too high.", "I would like a pizza."]

    def check(answer: Any) -> Optional[str]:
        vectors = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(vectors, list) or len(vectors) != 3 or any(len(v) != 384 for v in vectors):
            return f"expected 3 embeddings of 384, got {str(answer)[:120]}"
        dot = [sum(a * b for a, b in zip(vectors[0], v)) for v in vectors[1:]]
        if not dot[0] > dot[1] + 0.1:
            return f"paraphrase similarity {dot[0]:.3f} not above unrelated {dot[1]:.3f}"
        return None

    return [("paraphrase closer than unrelated", json.dumps({"texts": texts}).encode(), "application/json", check)]


def archive_cases(model_store: Path, model: str, version: str | None, rows: int = 4) -> list[Case]:
    """A packaged model's cases: its archive's first sample rows, each expected to answer what ONNX
    Runtime answers in-process on the archive's own model file (within the manifest's tolerance)."""
    import io
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from maas.deploy import archive_manifest, archive_member, find_archive
    from maas.tensor_requests import tensor_bodies

    archive = find_archive(model_store, model, version)
    manifest = archive_manifest(archive)
    samples = None
    if manifest.get("samples"):
        with np.load(io.BytesIO(archive_member(archive, manifest["samples"])), allow_pickle=False) as data:
            samples = {k: data[k][:rows] for k in data.files}
    bodies = tensor_bodies(manifest, samples)[:rows]
    with tempfile.TemporaryDirectory() as tmp:
        for member in [manifest["model_file"], *(e["file"] for e in manifest.get("external_data", []))]:
            (Path(tmp) / member).write_bytes(archive_member(archive, member))
        session = ort.InferenceSession(str(Path(tmp) / manifest["model_file"]), providers=["CPUExecutionProvider"])
        batched = bool(manifest.get("batch_axis"))
        expected = []
        for body in bodies:
            feeds = {n: np.asarray(v, dtype=t["dtype"]) for (n, v), t in zip(json.loads(body)["inputs"].items(),
                                                                           manifest["inputs"])}
            outs = session.run(None, {n: a[None] if batched else a for n, a in feeds.items()})
            expected.append({o["name"]: (v[0] if batched else v) for o, v in zip(manifest["outputs"], outs)})

    def same_as(want: dict[str, Any]) -> Check:
        def check(answer: Any) -> Optional[str]:
            got = answer.get("outputs") if isinstance(answer, dict) else None
            if not isinstance(got, dict):
                return f"expected {{'outputs': ...}}, got {str(answer)[:120]}"
            for name, value in want.items():
                array = np.asarray(got.get(name), dtype=np.float64)
                bound = manifest.get("atol", 1e-5) + manifest.get("rtol", 1e-4) * float(np.max(np.abs(value)) if value.size else 0)
                if array.shape != value.shape or not np.all(np.abs(array - value) <= bound):
                    return f"output {name} differs from ONNX Runtime in-process on the archive's model"
            return None
        return check

    return [(f"sample {i} equals ONNX Runtime in-process", body, "application/json", same_as(want))
            for i, (body, want) in enumerate(zip(bodies, expected))]


def cases(model: str) -> list[Case]:
    if model == "maintenance":
        return [
            ("healthy machine", json.dumps(HEALTHY).encode(), "application/json", _failure(False)),
            ("heat dissipation failure", json.dumps(HEAT_FAILURE).encode(), "application/json", _failure(True, "HDF")),
            ("overstrain failure", json.dumps(OVERSTRAIN).encode(), "application/json", _failure(True, "OSF")),
        ]
    if model == "digits":
        return [("a scanned 3", json.dumps({"pixels": THREE}).encode(), "application/json", _top1("3"))]
    if model == "minilm":
        return _minilm_cases()
    raise KeyError(f"no release smoke cases for model {model!r}")


def run_cases(client: Any, model: str, version: str, model_store: Path | None = None) -> list[str]:
    """The failed cases, each as 'title: problem'; empty when the version answers them all.
    The zoo's models have cases with known answers; a packaged model's come from its archive."""
    problems = []
    try:
        found = cases(model)
    except KeyError:
        if model_store is None:
            raise
        found = archive_cases(model_store, model, version)
    for title, body, content_type, check in found:
        resp = client.predict(model, body, content_type, version)
        if resp.status_code != 200:
            problems.append(f"{title}: HTTP {resp.status_code} {resp.text[:120]}")
            continue
        try:
            problem = check(resp.json())
        except ValueError:
            problem = "answer is not JSON"
        if problem:
            problems.append(f"{title}: {problem}")
    return problems
