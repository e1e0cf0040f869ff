"""A language model's load test, read (maas/generation_report.py): pure logic on logged rows."""
from pathlib import Path

from maas.generation_report import generation_figures


def test_tpot_counts_every_token_where_event_gaps_cannot(tmp_path: Path) -> None:
    """Two generations of 11 tokens streamed in 100 ms after their first: 10 ms a token, whatever
    the gaps between the events that carried text (a lone byte's token sends none)."""
    (tmp_path / "requests-start.txt").write_text("0")
    (tmp_path / "generations-1.csv").write_text("end_s,ttft_ms,completion_tokens,duration_ms,failed\n"
                                                "2,50,11,150,0\n3,50,11,150,0\n4,50,0,10,1\n")
    (tmp_path / "token-gaps-1.csv").write_text("t_s,gap_ms\n1.9,20\n1.95,80\n2.9,50\n2.95,50\n")
    g = generation_figures(tmp_path, warmup_s=1.0, run_time_s=10.0)
    assert g["generations"] == 2 and g["output_tokens"] == 22 and g["output_tokens_per_s"] == 2.2
    assert g["requests"] == 3 and g["failed"] == 1
    assert g["tpot_ms"] == {"p50": 10.0, "p95": 10.0, "p99": 10.0}
    assert g["itl_ms"]["p50"] == 50.0 and g["ttft_ms"]["p50"] == 50.0


def test_tokens_per_second_count_what_ended_within_the_measured_time(tmp_path: Path) -> None:
    """Tokens streamed in Locust's stop timeout, after the measured seconds, are not its tokens."""
    (tmp_path / "requests-start.txt").write_text("0")
    (tmp_path / "generations-1.csv").write_text("end_s,ttft_ms,completion_tokens,duration_ms,failed\n"
                                                "5,50,64,1000,0\n10,50,64,1000,0\n12,50,64,1000,0\n")
    (tmp_path / "token-gaps-1.csv").write_text("t_s,gap_ms\n5,15\n11.5,90\n")
    g = generation_figures(tmp_path, warmup_s=1.0, run_time_s=10.0)  # measured: 1 s to 11 s
    assert g["generations"] == 2 and g["output_tokens_per_s"] == 12.8 and g["itl_ms"]["p99"] == 15.0


def test_a_generation_astride_the_window_counts_the_tokens_it_streamed_inside(tmp_path: Path) -> None:
    """Throughput counts tokens when they streamed, not whole generations by when they ended: a
    generation from 10 s to 12 s (first token at 10.1 s, 20 more evenly to 12 s) gives the measured
    window (1-11 s) its first token and 9 of the rest; one that ended in the warm-up's tail gives
    the part it streamed after 1 s."""
    (tmp_path / "requests-start.txt").write_text("0")
    (tmp_path / "generations-1.csv").write_text("end_s,ttft_ms,completion_tokens,duration_ms,failed\n"
                                                "12,100,21,2000,0\n1.5,100,11,1100,0\n6,100,30,500,1\n")
    (tmp_path / "token-gaps-1.csv").write_text("t_s,gap_ms\n5,15\n")
    g = generation_figures(tmp_path, warmup_s=1.0, run_time_s=10.0)
    # 1 + 20 x 0.9/1.9 from the first; 10 x 0.5/1.0 from the second (its first token at 0.5 s, outside)
    assert g["output_tokens_per_s"] == round((1 + 20 * 0.9 / 1.9 + 5) / 10, 2), g
    assert g["generations"] == 1  # latencies stay per generation ended inside: the second
