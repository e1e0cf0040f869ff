"""`maas init` makes any folder a maas project; the checkout's own files are the templates."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from conftest import ROOT
from maas.cli import cli
from maas.config_audit import audit
from maas.init import template
from maas.properties import read_properties


def test_the_checkouts_config_and_metrics_are_the_templates() -> None:
    # said once: `maas init` writes exactly what this project serves with
    assert (ROOT / "config.properties").read_text() == template("config.properties")
    assert (ROOT / "metrics.yaml").read_text() == template("metrics.yaml")


def test_init_writes_a_secure_project_and_keeps_what_exists(tmp_path: Path) -> None:
    project = tmp_path / "mine"
    result = CliRunner().invoke(cli, ["init", str(project)])
    assert result.exit_code == 0, result.output
    assert audit(read_properties(project / "config.properties")) == []  # the secure defaults
    assert (project / "model_store").is_dir() and (project / "maas.yaml").is_file()
    assert "key_file.json" in (project / ".gitignore").read_text()
    (project / "config.properties").write_text("# mine\n")
    again = CliRunner().invoke(cli, ["init", str(project)])
    assert "kept" in again.output and (project / "config.properties").read_text() == "# mine\n"
    assert (project / ".gitignore").read_text().count("key_file.json") == 1


def test_the_spec_template_is_a_valid_spec(tmp_path: Path) -> None:
    from maas.core.spec_file import read_spec_file

    (tmp_path / "maas.yaml").write_text(template("maas.yaml"))
    fields = read_spec_file(tmp_path / "maas.yaml", require_io=True)
    assert fields["name"] == "my-model" and fields["inputs"][0].shape == ("batch", 3, 224, 224)
