"""`maas bench --llm`'s report from a run's figures (maas/llm_bench.py): pure logic and a plot."""
from __future__ import annotations

from pathlib import Path

from maas.llm_bench import (
    LlmPlan,
    LlmResult,
    arithmetic_bound_tokens_per_s,
    bound_tokens_per_s,
    build_specs,
    configurations,
    fastest_rounds,
    write_outputs,
)


def test_the_report_puts_single_stream_against_the_bandwidth_bound(tmp_path: Path) -> None:
    figures = {"p50": 10.0, "p95": 20.0, "p99": 30.0}
    result = LlmResult(
        machine={"cores": 2, "cpu": "cpu", "isa": "AVX2", "torch": "t", "onnxruntime-gpu": "o", "torchserve": "s",
                 "locust": "l", "date": "d"},
        plan={"source": "/x/llama", "warmup_s": 5, "run_time_s": 20}, bandwidth_gbs=20.0,
        gemm_peak_gmacs={"int8": 100.0, "fp32": 25.0},
        builds={"int4": {"version": "1.0-int4", "weight_bytes": 400_000_000, "macs_per_token": 500_000_000,
                         "cost": {"mean_kl": 0.05}, "parity": None}},
        configs=[{"label": "maas int4", "worker_rss_mb": [700], "register_to_ready_s": 3.0,
                  "worker_log": "big 1.0: loaded on CPUExecutionProvider, batch engine"}],
        rows=[{"label": "maas int4", "users": u, "output_tokens_per_s": 30.0 * u, "stream_tokens_per_s_p50": 35.0,
               "ttft_ms": figures, "itl_ms": figures, "tpot_ms": figures, "requests": 10, "failures": 0,
               "generations": 10}
              for u in (1, 4)],
        invariance={"int4": {"prompts": 8, "tokens": 32, "sequences_that_differ": 0, "max_abs_logit_diff": 0.0}},
        step_costs={"int4": {"decode_ms": {1: 10.0, 8: 25.0}, "prefill_chunk_tokens": 16, "prefill_chunk_ms": 40.0}})
    assert bound_tokens_per_s(result, "int4") == 50.0
    assert arithmetic_bound_tokens_per_s(result, "int4") == 200.0  # int4 computes in int8
    result.int4_kernel_gmacs = {"1": 30.0, "8": 60.0}  # as results.json keeps them: its 8-row rate is the bound
    assert arithmetic_bound_tokens_per_s(result, "int4") == 120.0
    result.builds["int4"]["quantization"] = {"block_size": 32}  # the kernel was measured at blocks of 256
    assert arithmetic_bound_tokens_per_s(result, "int4") is None
    del result.builds["int4"]["quantization"]
    result.int4_kernel_gmacs = {1: 30.0, 8: 100.0}
    write_outputs(result, tmp_path)
    report = (tmp_path / "report.md").read_text()
    # the arithmetic bound is 8 rows' rate: 4 streams are no share of it (the cell stays empty)
    assert ("| int4 | 400 MB | 50.0 tokens/s | 35.0 tokens/s | 70% | 200 tokens/s | 120.0 (4 streams) |  "
            "| KL 0.05 |") in report
    assert "| maas int4 | 4 | 120.0 | 35.0 | 10 / 20 / 30 | 10 / 20 / 30 | 10 / 20 / 30 | 10 | 0 |" in report
    assert "30 GMAC/s at 1 row, 100 at 8 rows" in report
    assert "0 of 8 sequences differ" in report
    assert "| int4 | 10 / 25 | 2.50 | 40 (16 tokens) |" in report
    assert (tmp_path / "llm.png").stat().st_size > 10_000 and (tmp_path / "results.json").is_file()


def test_levers_are_one_change_each_from_the_last_precision() -> None:
    plan = LlmPlan(source=Path("/x/llama"))
    assert [spec[0] for spec in build_specs(plan)] == ["fp32", "int4", "int4, blocks of 128", "int4, blocks of 32"]
    builds = {key: {"version": "1.0-" + (f"int4-b{block}" if block else precision), "folder": f"/s/{key}"}
              for key, precision, block in build_specs(plan)}
    configs = configurations(plan, builds)
    assert [c["label"] for c in configs] == ["maas fp32", "maas int4", "maas int4, MatMulNBits", "maas int4, no batching",
                                             "maas int4, whole prompts in one step", "maas int4, prompts in chunks of 8",
                                             "maas int4, 1 thread",
                                             "maas int4, not batch-invariant", "maas int4, requests without a seed",
                                             "maas int4, threads sleep between ops",
                                             "maas int4, decode not overlapped", "maas int4, prompt prefix not reused",
                                             "maas int4, asynchronous worker", "maas int4, int8 KV cache",
                                             "maas int4, blocks of 128", "maas int4, blocks of 32"]
    assert [c["handler"] for c in configs[2:]] == [{"int4_vnni": False}, {"engine": "generator"}, {"prefill_chunk_tokens": 4096},
                                                   {"prefill_chunk_tokens": 8}, {"intra_op_threads": 1}, {"batch_invariant": False},
                                                   {}, {"allow_spinning": False}, {"overlap_decode": False},
                                                   {"reuse_prompt_prefix": False}, {}, {"kv_cache_int8": True}, {}, {}]
    assert configs[8]["payload"] == "bench-llm-unseeded"
    assert configs[12]["serving"] == {"asyncCommunication": True, "continuousBatching": False, "batchSize": 1}
    assert configs[-1]["version"] == "1.0-int4-b32" and configs[-1]["precision"] == "int4"
    assert [s[0] for s in build_specs(LlmPlan(source=Path("/x"), levers=False))] == ["fp32", "int4"]


def test_each_row_is_its_fastest_round_in_the_first_rounds_order() -> None:
    def r(label: str, users: int, rate: float) -> dict:
        return {"label": label, "users": users, "output_tokens_per_s": rate, "ttft_ms": {"p50": rate}}

    rounds = [[r("a", 1, 60.0), r("a", 8, 200.0), r("b", 1, 70.0)],
              [r("a", 1, 66.0), r("a", 8, 180.0), r("b", 1, 64.0)]]
    assert fastest_rounds(rounds) == [
        {**r("a", 1, 66.0), "rounds_tokens_per_s": [60.0, 66.0]},
        {**r("a", 8, 200.0), "rounds_tokens_per_s": [200.0, 180.0]},
        {**r("b", 1, 70.0), "rounds_tokens_per_s": [70.0, 64.0]}]
    assert fastest_rounds([rounds[0]])[0]["rounds_tokens_per_s"] == [60.0]


def test_llama_cpp_takes_its_turn_in_every_round_after_ours(monkeypatch) -> None:
    """A drift of the shared machine between rounds reaches the peer as it reaches us: each round
    serves maas's configurations, then llama.cpp's servers (kept up beside TorchServe)."""
    from maas import llm_bench

    served: list[str] = []
    monkeypatch.setattr(llm_bench, "served_rows", lambda ts, store, cfg, plan, reports, check_parity: (
        served.append(cfg["label"]) or [{"label": cfg["label"], "users": 1}]))
    monkeypatch.setattr(llm_bench, "llama_cpp_round", lambda plan, result, servers, store, reports: (
        served.extend(c["label"] for c, _ in servers) or [{"label": c["label"], "users": 1} for c, _ in servers]))
    monkeypatch.setattr(llm_bench, "set_engine", lambda folder, serving, **handler: None)  # no archive here
    plan = LlmPlan(source=Path("/x"), precisions=("int4",), rounds=2, levers=False)
    result = LlmResult(machine={}, plan={}, builds={"int4": {"version": "1.0-int4", "folder": "/x/int4"}})
    llama = [({"label": "peer: llama.cpp server (f32)"}, None), ({"label": "peer: llama.cpp server (Q4_0)"}, None)]
    rounds = llm_bench.served_rounds(plan, result, None, Path("/s"), Path("/r"), None, llama)
    one_round = ["maas int4", "maas int4, MatMulNBits", "peer: llama.cpp server (f32)", "peer: llama.cpp server (Q4_0)"]
    assert served == one_round * 2 and [[r["label"] for r in rnd] for rnd in rounds] == [one_round] * 2
    # ours once; the servers' configs are added by the run
    assert [c["label"] for c in result.configs] == ["maas int4", "maas int4, MatMulNBits"]
