"""Commands about something that is not running (a monitor, a cluster) answer in one line and
the right exit status; `maas serve audit` passes a fresh project's config. No server needed."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from maas.cli import cli


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert CliRunner().invoke(cli, ["init", str(tmp_path / "p")]).exit_code == 0
    monkeypatch.chdir(tmp_path / "p")
    for var in ("MAAS_CONFIG", "MAAS_MODEL_STORE", "MAAS_RUN_DIR", "MAAS_REPORTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "p"


@pytest.mark.parametrize("args,code,says", [
    (["serve", "audit"], 0, "meets the security defaults"),
    (["monitor", "status"], 1, "not running"),
    (["monitor", "stop"], 0, "Prometheus was not running"),
    (["cluster", "stop"], 0, "no cluster was running"),
])
def test_a_command_about_nothing_running_says_so(project: Path, args: list[str], code: int, says: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code and says in result.output, result.output
