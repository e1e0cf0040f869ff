"""The release gate on one load test: which thresholds broke, and the figures in a few lines."""
from __future__ import annotations

from typing import Any

from maas.slo import Thresholds


def evaluate(summary: dict[str, Any], t: Thresholds) -> list[str]:
    """The broken thresholds, each as 'name: measured vs budget'; empty when all hold."""
    broken = []
    if summary["p95_ms"] > t.max_p95_ms:
        broken.append(f"p95 latency {summary['p95_ms']:.1f} ms > budget {t.max_p95_ms:g} ms")
    if summary["p99_ms"] > t.max_p99_ms:
        broken.append(f"p99 latency {summary['p99_ms']:.1f} ms > budget {t.max_p99_ms:g} ms")
    if summary["error_ratio"] > t.max_error_ratio:
        broken.append(f"error ratio {summary['error_ratio']:.4f} > budget {t.max_error_ratio:g}")
    if summary["rps"] < t.min_rps:
        broken.append(f"throughput {summary['rps']:.1f} req/s < minimum {t.min_rps:g} req/s")
    if summary["requests"] == 0:
        broken.append("no request completed")
    broken += generation_broken(summary.get("generation"), t)
    restarts = summary.get("worker_restarts")
    if restarts is not None and restarts > t.max_worker_restarts:
        broken.append(f"{restarts} worker restart(s) during the run > budget {t.max_worker_restarts} "
                      "(a worker died: see the server's logs/ts_log.log and model_log.log)")
    return broken


def generation_broken(g: dict[str, Any] | None, t: Thresholds) -> list[str]:
    """A language model's streaming thresholds (those its SLO file sets)."""
    if g is None or not g.get("generations"):  # none measured: its percentiles would read 0.0, within any budget
        return ["no generation finished"] if any(v is not None for v in (t.max_ttft_p95_ms, t.max_itl_p95_ms,
                                                                             t.max_tpot_p95_ms,
                                                                             t.min_output_tokens_per_s)) else []
    broken = []
    if t.max_ttft_p95_ms is not None and g["ttft_ms"]["p95"] > t.max_ttft_p95_ms:
        broken.append(f"p95 time to first token {g['ttft_ms']['p95']:.1f} ms > budget {t.max_ttft_p95_ms:g} ms")
    if t.max_itl_p95_ms is not None and g["itl_ms"]["p95"] > t.max_itl_p95_ms:
        broken.append(f"p95 inter-token latency {g['itl_ms']['p95']:.1f} ms > budget {t.max_itl_p95_ms:g} ms")
    tpot = (g.get("tpot_ms") or {}).get("p95")
    if t.max_tpot_p95_ms is not None and (tpot is None or tpot > t.max_tpot_p95_ms):
        broken.append(f"p95 time per output token {tpot or 0:.1f} ms > budget {t.max_tpot_p95_ms:g} ms")
    if t.min_output_tokens_per_s is not None and g["output_tokens_per_s"] < t.min_output_tokens_per_s:
        broken.append(f"output {g['output_tokens_per_s']:.1f} tokens/s < minimum {t.min_output_tokens_per_s:g}")
    return broken


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a summary (for release and capacity records)."""
    keys = ("rps", "p50_ms", "p95_ms", "p99_ms", "error_ratio", "requests", "passed")
    return {k: summary[k] for k in keys}


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['model']} ({s.get('served_version') or s['model_version']}): {s['requests']} requests in {s['run_time_s']} s"
        f" (after {s.get('warmup_s', 0)} s warm-up), "
        f"{s['rps']:.1f} req/s, {s['users']} users",
        f"latency ms: p50 {s['p50_ms']:.1f}  p90 {s['p90_ms']:.1f}  p95 {s['p95_ms']:.1f}  "
        f"p99 {s['p99_ms']:.1f}  max {s['max_ms']:.1f}",
        f"errors: {s['failures']} ({s['error_ratio']:.2%}) {s['errors_by_status'] or ''}".rstrip()
        + (f"; worker restarts: {s['worker_restarts']}" if s.get("worker_restarts") is not None else ""),
        *([generation_line(s["generation"])] if s.get("generation") else []),
        "gate: PASS" if s["passed"] else "gate: FAIL\n  - " + "\n  - ".join(s["broken"]),
    ]
    return "\n".join(lines)


def generation_line(g: dict[str, Any]) -> str:
    ttft, itl = g["ttft_ms"], g["itl_ms"]
    return (f"streaming: {g['generations']} generations, {g['output_tokens_per_s']:.1f} output tokens/s "
            f"(one stream p50 {g['stream_tokens_per_s_p50']:.1f}); time to first token ms p50 {ttft['p50']:.1f} "
            f"p95 {ttft['p95']:.1f} p99 {ttft['p99']:.1f}; inter-token ms p50 {itl['p50']:.1f} p95 {itl['p95']:.1f} "
            f"p99 {itl['p99']:.1f}" + (f"; per output token ms p50 {tpot['p50']:.1f} p95 {tpot['p95']:.1f}"
                                       if (tpot := g.get("tpot_ms")) else ""))
