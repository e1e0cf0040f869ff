"""The serving image's recipe: the same pins as pyproject.toml, no URL baked in, the manifests' image."""
from __future__ import annotations

import re
from pathlib import Path

import tomllib

from maas.image import DOCKER_DIR, GENAI_VERSION, ORT_VERSION, TAG, ImagePlan
from maas.kube import IMAGE

ROOT = Path(__file__).resolve().parents[2]


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+?)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_image_pins_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = pins(project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra])
    image = pins((DOCKER_DIR / "requirements.txt").read_text().splitlines())
    image.update(pins([p for p in ImagePlan().packages()]))
    image.pop("numpy"), image.pop("psutil")  # pyproject ranges them; the image pins what the venv resolved
    for name, version in image.items():
        twin = {"onnxruntime": "onnxruntime-gpu", "onnxruntime-genai": "onnxruntime-genai-cuda"}.get(name, name)
        assert ours.get(twin) == version, f"{name}=={version} in the image, {ours.get(twin)} in pyproject.toml"
    assert ours["onnxruntime-gpu"] == ORT_VERSION and ours["onnxruntime-genai-cuda"] == GENAI_VERSION


def test_no_url_is_baked_into_the_dockerfile() -> None:
    text = (DOCKER_DIR / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "://" not in code
    assert re.search(r"^ARG PIP_INDEX_URL$", text, re.M) and re.search(r"^USER 1000$", text, re.M)


def test_the_manifests_run_the_image_maas_builds() -> None:
    assert TAG == IMAGE
    for manifest in [*ROOT.glob("deploy/kubernetes/*.yaml"), ROOT / "deploy/kserve/servingruntime.yaml"]:
        for image in re.findall(r"image: (\S+)", manifest.read_text()):
            assert image == TAG, manifest
