"""`maas bench` end to end on digits (short): the peer archive is built from the same weights,
served beside ours, both answer the same, the in-process ceiling runs the archive's own
handler, and the report carries every figure. No speed is asserted: figures live in the
committed benchmark report, not in timed tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from maas.bench import BenchPlan, run_bench
from maas.core.machine import cores


def test_bench_digits_side_by_side(tmp_path: Path, model_store: Path, built_models) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(model_store / "digits.mar", store / "digits.mar")
    plan = BenchPlan(families=("digits",), users=(2,), layouts=((1, 16, 5),), run_time_s=3, warmup_s=1, ceiling_s=1.0,
                     levers=False, frontend_warmup_s=2, rounds=1)
    run_bench(plan, tmp_path / "out", store)

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    configs = {c["label"]: c for c in results["configs"]}
    assert set(configs) == {"ours FP32", "peer TorchScript"}
    for c in configs.values():
        assert c["ceiling_rps"] > 0 and c["register_to_ready_s"] > 0 and c["worker_rss_mb"] > 50
        assert c["ceiling_rps"] == max(c["ceiling_rounds_rps"]) and len(c["ceiling_rounds_rps"]) == plan.rounds
    labels = {r["label"]: r for r in results["runs"]}
    assert set(labels) == {"ours FP32", "peer TorchScript"}
    for row in labels.values():
        assert row["rps"] > 0 and row["failures"] == 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["locust_cores"] > 0 and row["frontend_cores"] > 0 and row["worker_cores"] > 0
        assert abs(row["server_cores"] - row["frontend_cores"] - row["worker_cores"]) < 1e-9
    assert results["equivalence"]["digits: peer TorchScript top-1 agreement with ours FP32"] == 1.0
    report = (tmp_path / "out" / "report.md").read_text()
    ours = next(r for r in results["ratios"] if r["label"] == "ours FP32")
    assert ours["vs_peer_rps"] > 0 and ours["vs_ceiling"] > 0 and 0 < ours["bound"] <= 1
    assert results["machine"]["isa"] and results["machine"]["isa"] in report.splitlines()[0]
    assert f"| digits | 2 | ours FP32 | 1x{cores()} b16/5ms |" in report and "## Memory and cold start" in report
    assert (tmp_path / "out" / "bench.png").stat().st_size > 10_000
