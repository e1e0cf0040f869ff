"""image: the serving image every manifest runs, built here without a registry."""
from __future__ import annotations

import click


@click.group()
def image() -> None:
    """The serving image (deploy/docker/Dockerfile) that every manifest under deploy/ runs."""


@image.command("build")
@click.option("--tag", default=None, help="image tag [maas-torchserve:0.12.0, what the manifests run]")
@click.option("--base", default=None,
              help="base image [maas-base:bookworm, made here from Debian packages]; python:3.11-slim from a registry")
@click.option("--gpu", is_flag=True, help="onnxruntime-gpu and onnxruntime-genai-cuda instead of the CPU wheels")
@click.option("--no-openvino", is_flag=True, help="leave OpenVINO out (~180 MB; archives whose engine is openvino fail to load)")
@click.option("--force", is_flag=True, help="rebuild even when an image of the same recipe exists")
def image_build(tag: str | None, base: str | None, gpu: bool, no_openvino: bool, force: bool) -> None:
    """Build the image unless one of the same recipe (Dockerfile, pins, build arguments) is there.

    Wheels come from this machine's pip configuration (cached under ~/.cache/maas/image-wheels) and
    reach the build over a loopback port; with no Docker daemon running and root, maas starts its own.
    """
    from maas.image import ImagePlan, build_image

    plan = ImagePlan(**{k: v for k, v in {"tag": tag, "base": base}.items() if v},
                     **({"ort": "onnxruntime-gpu", "genai": "onnxruntime-genai-cuda"} if gpu else {}),
                     **({"openvino": ""} if no_openvino else {}))
    built = build_image(plan, force=force, echo=click.echo)
    how = f"built in {built.build_s:.0f} s" if built.build_s else "up to date"
    click.echo(f"{built.tag}: {built.size_mb:.0f} MB, {how} (recipe {built.recipe})")
