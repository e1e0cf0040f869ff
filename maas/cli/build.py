"""build, package and init: models into the model store, a folder into a maas project."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from maas.export.variants import VARIANTS
from maas.project import Project


@click.command()
@click.argument("models", nargs=-1)
@click.option("--version", "version",
              help="version to stamp; writes <model>-<version>.mar beside the others [the spec's version]; "
                   "with --variant: the archive's version to make the variant from [the plain archive]")
@click.option("--seed", type=int, help="training seed, e.g. for a second training as a new version")
@click.option("--variant", type=click.Choice([*VARIANTS, "auto"]),
              help="make this optimized variant of the model's verified FP32 archive, as version <version>-<variant>: opt (ORT graph "
                   "optimizations), int8 (dynamic quantization, CPU), int8-cal (int8 calibrated on the model's samples: smoothed, "
                   "its most sensitive MatMuls in FP32), fp16 (GPU), ov (OpenVINO, its default precision), "
                   "ov-int8 (NNCF-calibrated INT8 on OpenVINO); refused over its accuracy budget. auto: make every CPU "
                   "candidate, time them here and keep the fastest within budget")
@click.option("--ensemble", type=click.IntRange(2, 16),
              help="build N maintenance members (seeds 0..N-1) and the maintenance-ensemble workflow (.war); "
                   "refused unless the ensemble's held-out AUROC is at least its best member's")
def build(models: tuple[str, ...], version: str | None, seed: int | None, variant: str | None,
          ensemble: int | None) -> None:
    """Train (or load), export to ONNX, verify and package MODELS (default: all) into the model store."""
    from maas.export import zoo
    from maas.export.build import build as build_model

    project: Project = click.get_current_context().obj
    if ensemble:
        from maas.export.ensemble import build_ensemble

        result = build_ensemble(ensemble, project.build_dir, project.model_store, project.workflow_store)
        rec = result.record
        for name, m in [*rec["members"].items(), ("ensemble", rec["ensemble"])]:
            click.echo(f"  {name:9s} AUROC {m['roc_auc']:.4f}  F1 {m['f1']:.4f}  accuracy {m['accuracy']:.4f}")
        if not result.built:
            raise click.ClickException(f"the ensemble's AUROC is below its best member's; no workflow built; "
                                       f"keep {rec['member_archives'][rec['best_member']]}")
        click.echo(f"built {result.war}: `maas deploy maintenance-ensemble`, then POST /wfpredict/maintenance-ensemble")
        return
    for name in models or tuple(zoo.models()):
        result = build_model(name, project.build_dir, project.model_store, version=version, seed=seed, variant=variant)
        if result.choice is not None:
            from maas.export.variant_choice import choice_lines

            for line in choice_lines(result.choice):
                click.echo(f"  {line}")
            click.echo(f"  figures: {result.choice.report}")
            if result.choice.packaged is None:
                click.echo(f"{name}: FP32 on ONNX Runtime is the fastest within budget here; nothing new archived")
                continue
        for line in built_lines(result.mar, result.seconds, json.loads((result.build_dir / "manifest.json").read_text())):
            click.echo(line)


def built_lines(mar: Path, seconds: float, manifest: dict[str, Any]) -> list[str]:
    """What `maas build` says of an archive it made: its metrics and parity, and a variant's cost."""
    metrics = {k: float(f"{v:.8g}") for k, v in manifest.get("metrics", {}).items() if isinstance(v, float)}
    parity = manifest.get("parity", {})
    first = f"built {mar} ({seconds:.1f} s)" + (f"  metrics {metrics}" if metrics else "") + (
        f"  parity max abs error {parity['max_abs_error']:.2g}" if "max_abs_error" in parity else "")
    if "variant" not in manifest:
        return [first]
    acc = manifest["variant"]["accuracy"]
    top1 = f", top-1 agreement {acc['top1_agreement']}" if acc.get("top1_agreement") else ""
    engine = manifest.get("engine", {}).get("name", "onnxruntime")
    return [first, f"  {manifest['variant']['name']} ({engine}): {acc['cost_metric']} {acc['cost']:.4f} "
            f"(budget {acc['budget']:g}){top1}, {manifest['size_bytes'] / 1e6:.1f} MB"]


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="overwrite files maas init wrote before")
def init(directory: Path, force: bool) -> None:
    """Make DIRECTORY a maas project: config.properties with the secure defaults, metrics.yaml,
    an empty model_store/, a commented model spec template (maas.yaml) and a .gitignore."""
    from maas.init import init_project

    for line in init_project(directory, force):
        click.echo(line)
    click.echo(f"next: cd {directory} && maas package --onnx model.onnx (or --torch MODULE:FUNCTION), "
               "then maas serve start")


@click.command("package")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), help="an existing ONNX file (external weights beside it travel too)")
@click.option("--torch", "factory", metavar="MODULE:FUNCTION",
              help="a function returning a torch.nn.Module, e.g. my_pkg.models:make_model (importable from here)")
@click.option("--exported-program", type=click.Path(path_type=Path), help="a torch.export.save()d program (.pt2)")
@click.option("--name", help="model name: letters, digits, '.', '_', '-' [the spec's, else the file's or function's]")
@click.option("--version", "version", help="version; writes <name>-<version>.mar beside the others [the spec's, else 1.0]")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="model spec YAML kept beside the model (inputs, outputs, serving, labels, handler, ...)")
@click.option("--example", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="example inputs: a .npz with one array per input name")
@click.option("--input", "inputs", multiple=True, metavar="NAME:DTYPE:[DIMS]",
              help="declare an input, e.g. 'pixels:float32:[batch,3,224,224]' (quoted: a shell reads [..] as a "
                   "file pattern; names mark dynamic axes); repeatable")
@click.option("--handler", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="your handler file (subclass tensor.TensorHandler) [the generic tensor handler]")
@click.option("--extra-file", "extra_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a file the handler reads from its model directory (labels.txt, tokenizer.json); repeatable")
@click.option("--samples", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="sample inputs (.npz) for load tests and variant costs [the example]")
@click.option("--write-spec", type=click.Path(dir_okay=False, path_type=Path),
              help="only write a starting spec read off the graph to this file, then stop")
@click.option("--llm", "llm_folder", type=click.Path(path_type=Path),
              help="a generative language model: a local Hugging Face folder (config.json, *.safetensors, tokenizer, "
                   "chat template), built with ONNX Runtime GenAI and served OpenAI-compatible; never a hub")
@click.option("--precision", type=click.Choice(["fp32", "int8", "int4", "fp16"]), default="fp32", show_default=True,
              help="with --llm: the weights' precision (fp32, int8, int4 for CPU; fp16, int4 for CUDA)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="with --llm: the execution provider the build targets")
@click.option("--int4-block-size", type=click.Choice(["16", "32", "64", "128", "256"]), default=None,
              help="with --llm --precision int4: weights per scale; smaller is closer to fp32, larger decodes faster "
                   "[cpu: 256, else 128, else 32, the first within --max-kl; cuda: the builder's 32]")
@click.option("--kv-cache", type=click.Choice(["fp32", "fp16"]), default=None,
              help="with --llm on cpu: the KV cache's type; fp16 holds twice the tokens in the same kv_cache_mb, "
                   "8 streams' steps ~10 % slower [the builder's: fp32]")
@click.option("--max-kl", type=click.FloatRange(0, None), default=None,
              help="with --llm: accept a quantized build up to this mean KL divergence from fp32 (nats per token) "
                   "[int8 0.02, int4 0.1, fp16 0.005]")
@click.pass_obj
def package_cmd(project: Project, onnx_file: Path | None, factory: str | None, exported_program: Path | None,
                name: str | None, version: str | None, spec_file: Path | None, example: Path | None,
                inputs: tuple[str, ...], handler: Path | None, extra_files: tuple[Path, ...], samples: Path | None,
                write_spec: Path | None, llm_folder: Path | None, precision: str, device: str,
                int4_block_size: str | None, kv_cache: str | None, max_kl: float | None) -> None:
    """Package your own model: export where needed, verify, and archive it into the model store.

    \b
    Examples:
      maas package --onnx model.onnx --name detector
      maas package --torch my_pkg.models:make_model --input 'pixels:float32:[batch,3,224,224]'
      maas package --exported-program model.pt2 --spec maas.yaml
      maas package --onnx model.onnx --write-spec maas.yaml    # then edit it and package with --spec
      maas package --llm ./my-llama --precision int4            # a language model folder (OpenAI API)
    \b
    Then: maas deploy NAME, maas predict NAME body.json ({"inputs": {"<input>": [...]}}), maas loadtest NAME.
    """
    if llm_folder is not None:
        if onnx_file or factory or exported_program or spec_file or example or inputs or handler or extra_files or samples \
                or write_spec:
            raise click.UsageError("--llm builds from the folder alone: give only --name, --version, --precision, "
                                   "--device, --int4-block-size, --kv-cache, --max-kl")
        return _package_llm(project, llm_folder, name, version, precision, device,
                            int(int4_block_size) if int4_block_size else None, kv_cache, max_kl)
    from maas.export.package import PackageOptions, package_model

    opts = PackageOptions(onnx=onnx_file, torch=factory, exported_program=exported_program, name=name,
                          version=version, spec_file=spec_file, example=example, inputs=inputs, handler=handler,
                          extra_files=extra_files, samples=samples)
    result = package_model(opts, project.build_dir, project.model_store, write_spec)
    if write_spec is not None:
        click.echo(f"wrote {write_spec}: check it, then `maas package ... --spec {write_spec}`")
        return
    parity = result.manifest.get("parity", {})
    figure = (f"parity max abs error {parity['max_abs_error']:.2g} on {', '.join(parity['cases'])}"
              if "max_abs_error" in parity else "no PyTorch source: ONNX Runtime ran the example")
    click.echo(f"packaged {result.mar} ({result.seconds:.1f} s): {result.name} {result.version}, "
               f"inputs {', '.join(f'{t.name} {t.dtype}{list(t.shape)}' for t in result.spec.inputs)}; {figure}")
    variance = parity.get("batch_variance")
    if variance:
        click.echo(f"batch variance: a row's answer moves by up to {variance['alone_vs_batched_max_abs']:.2g} with what it "
                   f"is batched with ({variance['fixed_shape_max_abs']:.2g} with serving.fixed_batch_rows: "
                   f"{variance['fixed_shape_rows']}); {variance.get('default', '')}")
    click.echo(f"next: maas deploy {result.name}" + (f" --version {result.version}" if opts.version else ""))


def _package_llm(project: Project, folder: Path, name: str | None, version: str | None, precision: str, device: str,
                 int4_block_size: int | None, kv_cache: str | None, max_kl: float | None) -> None:
    from maas.core.extras import require
    from maas.export.llm_build import LlmOptions, package_llm, summary_lines

    require("zoo", "maas package --llm (transformers reads the folder to verify the build)")
    result = package_llm(LlmOptions(folder, name=name, version=version or "1.0", precision=precision, device=device,
                                    max_kl=max_kl, int4_block_size=int4_block_size, kv_cache=kv_cache),
                         project.build_dir, project.model_store)
    for line in summary_lines(result.path, result.manifest):
        click.echo(line)
    click.echo(f"next: maas deploy {result.name}" + (f" --version {result.version}" if version else "") +
               f"; OpenAI base URL http://127.0.0.1:8080/predictions/{result.name}/{result.version}/v1")
