"""deploy's retry when a model's first workers fail to start: TorchServe 0.12 either keeps the
model at 0 workers (scale it up again) or, depending on timing, drops it (register it again)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from maas.client import ApiError, ServeError
from maas.core.store import Archive
from maas.deploy import _retry_workers, deploy

FAILED = ApiError(500, "Failed to start workers for model flaky version: 1.0")
PARAMS = {"url": "flaky.mar", "initial_workers": 1, "synchronous": "true"}


class FakeManagement:
    """TorchServe's management API as the retry sees it: scripted answers, calls recorded."""

    def __init__(self, put: list[Any], post: list[Any]) -> None:
        self.answers = {"PUT": put, "POST": post}
        self.calls: list[tuple[str, str]] = []
        self.ready = False

    def management(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path))
        answer = self.answers[method].pop(0) if self.answers[method] else {}
        if isinstance(answer, ApiError):
            raise answer
        self.ready = self.ready or answer == "ready"
        return {}

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        return [{"workers": [{"status": "READY" if self.ready else "UNLOADING"}]}]


def test_a_dropped_registration_is_registered_again() -> None:
    client = FakeManagement(put=[ApiError(404, "Model not found: flaky")], post=["ready"])
    _retry_workers(client, Archive(Path("flaky.mar"), "flaky", "1.0"), 1, 10, 2, FAILED, PARAMS)
    assert client.calls == [("PUT", "/models/flaky/1.0"), ("POST", "/models")]


def test_a_model_kept_at_zero_workers_is_scaled_up_again() -> None:
    client = FakeManagement(put=["ready"], post=[])
    _retry_workers(client, Archive(Path("flaky.mar"), "flaky", "1.0"), 1, 10, 2, FAILED, PARAMS)
    assert client.calls == [("PUT", "/models/flaky/1.0")]


def test_a_model_that_never_loads_fails_clearly_even_when_dropped() -> None:
    client = FakeManagement(put=[ApiError(404, "Model not found: flaky")] * 3, post=[FAILED, FAILED])
    with pytest.raises(Exception, match="workers failed to load 3 times"):
        _retry_workers(client, Archive(Path("flaky.mar"), "flaky", "1.0"), 1, 10, 2, FAILED, PARAMS)


class SilentRegistration(FakeManagement):
    """TorchServe's asynchronous worker: a worker that fails to load is never reported, so the
    synchronous registration times out."""

    def management(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "POST":
            self.calls.append((method, path))
            raise ServeError("TorchServe did not answer POST http://127.0.0.1:8081/models within 20 s")
        return super().management(method, path, **kwargs)


def test_a_registration_that_times_out_quotes_the_worker_log(tmp_path: Path) -> None:
    (tmp_path / "store" / "flaky").mkdir(parents=True)
    (tmp_path / "store" / "flaky" / "MAR-INF").mkdir()
    (tmp_path / "store" / "flaky" / "MAR-INF" / "MANIFEST.json").write_text(
        '{"model": {"modelName": "flaky", "modelVersion": "1.0", "handler": "llm.py"}}')
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "model_log.log").write_text("2026-12-03T15:24:55,647 [INFO ] W-9001-flaky_1.0-stdout MODEL_LOG - "
                                        "llm_settings.SettingsError: model-config.yaml handler: unknown setting 'max_stream'\n")
    client = SilentRegistration(put=[], post=[])
    with pytest.raises(ServeError, match="flaky 1.0: workers failed to load: llm_settings.SettingsError: .*'max_stream'"):
        deploy(client, tmp_path / "store", "flaky", timeout=20, log_dir=logs)
    assert client.calls == [("POST", "/models"), ("PUT", "/models/flaky/1.0")]  # then scaled to 0 workers
    with pytest.raises(ServeError, match="did not answer POST"):  # no reason in the log: the timeout itself
        deploy(SilentRegistration(put=[], post=[]), tmp_path / "store", "flaky", timeout=20, log_dir=tmp_path)


def test_a_version_unregistered_by_a_failed_attempt_is_gone_not_an_error() -> None:
    """TorchServe 0.12: DELETE answers 500 (a NullPointerException as its worker shuts down) yet
    unregisters the version; the retry's 404 means it is gone. A 404 at once is still an error."""
    from maas.deploy import undeploy

    client = FakeManagement(put=[], post=[])
    client.answers["DELETE"] = [ApiError(500, "NullPointerException"), ApiError(404, "Model version: 1.0 does not exist")]
    assert undeploy(client, "flaky", "1.0") == "1.0"
    assert client.calls == [("DELETE", "/models/flaky/1.0")] * 2
    client.answers["DELETE"] = [ApiError(404, "Model version: 1.0 does not exist")]
    with pytest.raises(ApiError, match="does not exist"):
        undeploy(client, "flaky", "1.0")
