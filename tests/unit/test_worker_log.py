"""Why a model could not load, read from TorchServe's worker log as it writes it."""
from __future__ import annotations

from pathlib import Path

from maas.worker_log import load_failure

T, M = "2026-12-02T09:15:03,741 [INFO ] W-9001-tampered_1.0-stdout MODEL_LOG - ", "MODEL_LOG - "
LOG = "\n".join([
    T + "Torch worker started.",
    T + "INTEGRITY: model.onnx sha256 f6 does not match manifest 17",
    T + "Failed to load model tampered, exception model.onnx: sha256 f6 does not match the manifest's 17",
    T + "ort_base.ModelIntegrityError: model.onnx: sha256 f6 does not match",
    T + "RuntimeError: 500 - Unknown exception",
    "2026-12-02T09:15:03,900 [INFO ] W-9000-maintenance_1.0-stdout " + M + "ValueError: not this model's",
]) + "\n"


def test_the_workers_own_reason_not_its_wrapping(tmp_path: Path) -> None:
    (tmp_path / "model_log.log").write_text(LOG)
    assert load_failure(tmp_path, "tampered", "1.0") == "model.onnx: sha256 f6 does not match the manifest's 17"
    assert load_failure(tmp_path, "maintenance", "1.0") == "ValueError: not this model's"
    assert load_failure(tmp_path, "other", "1.0") is None
    assert load_failure(tmp_path / "missing", "tampered", "1.0") is None
