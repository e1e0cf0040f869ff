"""The log4j2 configuration maas starts TorchServe with: every line once, nothing per request
but the access log, and what maas reads from the logs still written (tests/integration's
hardening tests read the INTEGRITY line and count "Retry worker" lines on a real server)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from maas.server import log_config


def loggers(path: Path) -> dict[str, ET.Element]:
    return {e.get("name", "root"): e for e in ET.parse(path).getroot().find("Loggers")}


def test_the_packaged_configuration_writes_each_line_once_and_skips_per_request_chatter(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("")
    found = loggers(log_config(tmp_path / "config.properties"))
    named = {k: v for k, v in found.items() if v.tag == "Logger" and v.findall("AppenderRef")}
    assert named and all(v.get("additivity") == "false" for v in named.values())  # never again through the root
    assert found["org.pytorch.serve"].get("level") == "info"  # TorchServe's own default is debug
    assert found["ACCESS_LOG"].get("level") == "info"  # the audit trail stays: one line per request
    for per_request in ("org.pytorch.serve.wlm.BatchAggregator", "org.pytorch.serve.wlm.WorkerLifeCycle"):
        assert found[per_request].get("level") == "warn"
    # WorkerThread's "Retry worker" (INFO) is what maas.worker_log counts: it must not be silenced,
    # only its lines per generation step are filtered out
    assert "org.pytorch.serve.wlm.WorkerThread" not in found
    dropped = found["org.pytorch.serve"].find("RegexFilter").get("regex")
    assert "Backend response time" in dropped and "Retry worker" not in dropped
    assert "Backend received inference" in found["MODEL_LOG"].find("RegexFilter").get("regex")


def test_a_log4j2_xml_beside_the_config_wins(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("")
    (tmp_path / "log4j2.xml").write_text("<Configuration/>")
    assert log_config(tmp_path / "config.properties") == (tmp_path / "log4j2.xml").resolve()


def test_the_image_logs_what_a_host_logs_to_the_console_only() -> None:
    """deploy/docker/log4j2.xml is a copy of the host template with console appenders (the image's
    build context is deploy/docker): its loggers, levels and filters must change with it."""
    root = Path(__file__).resolve().parents[2]
    host, image = loggers(root / "maas/templates/log4j2.xml"), loggers(root / "deploy/docker/log4j2.xml")

    def rules(found: dict[str, ET.Element]) -> dict[str, tuple]:
        return {name: (e.tag, e.get("level"), e.get("additivity"),
                       tuple((f.tag, sorted(f.attrib.items())) for f in e if f.tag != "AppenderRef"))
                for name, e in found.items()}
    assert rules(image) == rules(host)
    console = {e.get("name") for e in ET.parse(root / "deploy/docker/log4j2.xml").getroot().find("Appenders")}
    assert console == {"STDOUT"} and all(ref.get("ref") == "STDOUT" for e in image.values() for ref in e.findall("AppenderRef"))
