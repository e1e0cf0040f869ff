"""`maas bench` end to end on digits (short): the peer archive is built from the same weights,
served beside ours, both answer the same, and the report carries every figure. No speed is
asserted: figures live in the committed benchmark report, not in timed tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from maas.bench import BenchPlan, run_bench

pytestmark = pytest.mark.integration


def test_bench_digits_side_by_side(tmp_path: Path, model_store: Path, built_models) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(model_store / "digits.mar", store / "digits.mar")
    plan = BenchPlan(families=("digits",), users=(2,), run_time_s=3, warmup_s=1, ceiling_s=1.0, sweep=False)
    run_bench(plan, tmp_path / "out", store)

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {c["label"] for c in results["ceilings"]} == {"ours FP32", "peer TorchScript"}
    labels = {r["label"]: r for r in results["runs"]}
    assert set(labels) == {"ours FP32", "peer TorchScript"}
    for row in labels.values():
        assert row["rps"] > 0 and row["failures"] == 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["locust_cores"] > 0 and row["server_cores"] > 0
    assert results["equivalence"]["digits_top1_agreement_ours_vs_peer"] == 1.0
    assert results["ratios"][0]["fp32_vs_peer_rps"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| digits | ours FP32 | 2 |" in report and "## Ratios" in report
    assert (tmp_path / "out" / "bench.png").stat().st_size > 10_000
