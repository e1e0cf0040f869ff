"""Pure logic: key-file parsing and expiry, properties, load-test gate and CSV summary."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import maas.keys
from maas.gate import evaluate
from maas.keys import KeyFileError, read_keys
from maas.locust_csv import read_aggregate, read_errors, recent_rps
from maas.properties import Endpoints, read_properties
from maas.slo import Thresholds

ROOT = Path(__file__).resolve().parents[2]


def write_keys(path: Path, minutes: float) -> None:
    when = (datetime.now(timezone.utc) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    path.write_text(json.dumps({"management": {"key": "m1", "expiration time": when},
                                "inference": {"key": "i1", "expiration time": when}, "API": {"key": "a1"}}))


def test_keys_parse_with_java_nanoseconds(tmp_path: Path) -> None:
    write_keys(tmp_path / "k.json", 60)
    keys = read_keys(tmp_path / "k.json")
    assert keys["inference"].value == "i1" and keys["API"].expires is None
    assert not keys["inference"].expires_within(60) and keys["inference"].expires_within(3700)


def test_a_key_file_read_while_torchserve_rewrites_it_is_read_whole(tmp_path: Path) -> None:
    """TorchServe renews a key by truncating key_file.json and writing it again (Files.write): a
    reader between the two finds it empty, which once failed a request as 'server not running'."""
    path, done = tmp_path / "k.json", threading.Event()
    write_keys(path, 60)
    whole = path.read_bytes()

    def rewrite_in_place() -> None:
        while not done.is_set():
            with open(path, "r+b") as f:
                f.truncate(0)
                time.sleep(0.001)  # empty a third of the time: TorchServe's own window is microseconds
                f.write(whole)
            time.sleep(0.002)
    writer = threading.Thread(target=rewrite_in_place)
    writer.start()
    try:
        values = {read_keys(path)["inference"].value for _ in range(300)}
    finally:
        done.set()
        writer.join()
    assert values == {"i1"}


def test_a_key_file_that_stays_empty_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maas.keys, "REREAD_S", 0.05)
    (tmp_path / "k.json").write_text("")
    with pytest.raises(KeyFileError, match="cannot read key file"):
        read_keys(tmp_path / "k.json")


def test_missing_key_file_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="maas serve start"):
        read_keys(tmp_path / "nope.json")


def test_project_config_is_loopback_with_token_auth() -> None:
    props = read_properties(ROOT / "config.properties")
    ep = Endpoints.from_properties(props)
    assert all(u.startswith("http://127.0.0.1:") for u in (ep.inference, ep.management, ep.metrics))
    assert props["disable_token_authorization"] == "false"
    assert props["install_py_dep_per_model"] == "false"
    assert int(props["max_request_size"]) <= 8 * 1024 * 1024
    assert props["allowed_urls"] == "^file:///nonexistent/.*$"


SUMMARY = {"p95_ms": 20.0, "p99_ms": 40.0, "error_ratio": 0.0, "rps": 100.0, "requests": 1000}


def test_gate_passes_within_budget() -> None:
    assert evaluate(SUMMARY, Thresholds()) == []


def test_gate_names_each_broken_threshold_with_measured_and_budget() -> None:
    broken = evaluate({**SUMMARY, "p95_ms": 900.0, "error_ratio": 0.2, "rps": 1.0},
                      Thresholds(max_p95_ms=500, max_error_ratio=0.01, min_rps=5))
    assert broken == ["p95 latency 900.0 ms > budget 500 ms", "error ratio 0.2000 > budget 0.01",
                      "throughput 1.0 req/s < minimum 5 req/s"]


def test_no_measured_generation_is_no_pass() -> None:
    """Every generation failed or ended in the warm-up: percentiles of nothing read 0.0 ms."""
    nothing = {"generations": 0, "ttft_ms": {"p95": 0.0}, "itl_ms": {"p95": 0.0}, "tpot_ms": {"p95": 0.0},
               "output_tokens_per_s": 0.0}
    assert evaluate({**SUMMARY, "generation": nothing}, Thresholds(max_ttft_p95_ms=500)) == ["no generation finished"]


def test_locust_csv_summary(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
              "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%")
    Path(f"{prefix}_stats.csv").write_text(
        header + "\nPOST,/predictions/m,10,2,5,6,1,30,100,2.5,0.5,5,6,7,8,9,12,20,25,30,30,30\n"
        ",Aggregated,10,2,5,6,1,30,100,2.5,0.5,5,6,7,8,9,12,20,25,30,30,30\n")
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nPOST,/p,\"CatchResponseError('HTTP 400: bad')\",1\n"
        "POST,/p,\"CatchResponseError('failure_probability 2 is not a probability')\",1\n")
    agg = read_aggregate(prefix)
    assert agg == {"requests": 10, "failures": 2, "rps": 2.5, "avg_ms": 6.0, "p50_ms": 5.0, "p90_ms": 9.0,
                   "p95_ms": 12.0, "p99_ms": 25.0, "max_ms": 30.0}
    assert read_errors(prefix) == {"400": 1, "body": 1}


def test_stale_key_retries_and_refused_connections_are_told_apart(tmp_path: Path) -> None:
    """A request retried with a renewed key is reported apart as a fast success: the endpoint's own
    row is the figures, not the Aggregated one it lowers. FastHttp's status 0 (no answer) is a
    connection failure, not a wrong body."""
    prefix = tmp_path / "locust"
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
              "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%")
    Path(f"{prefix}_stats.csv").write_text(
        header + "\nPOST,/predictions/m,10,2,5,6,1,30,100,2.5,0.5,5,6,7,8,9,12,20,25,30,30,30\n"
        "POST,\"/predictions/m [stale key, retried]\",10,0,1,1,1,1,100,2.5,0,1,1,1,1,1,1,1,1,1,1,1\n"
        ",Aggregated,20,2,2,3,1,30,100,5.0,0.5,2,5,6,7,8,9,12,20,30,30,30\n")
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nPOST,/p,\"CatchResponseError('HTTP 0: connection failed (x)')\",40\n"
        "POST,/p,\"CatchResponseError('HTTP 503: busy')\",2\n")
    agg = read_aggregate(prefix)
    assert (agg["requests"], agg["failures"], agg["p95_ms"]) == (10, 2, 12.0)
    assert read_errors(prefix) == {"connection": 40, "503": 2}


def test_an_answer_of_nulls_is_not_a_right_answer() -> None:
    """orjson writes NaN as null: numpy reads [null, null] as objects, which the finiteness check skipped."""
    from maas.core.bodies import tensor_check

    check = tensor_check({"outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}], "batch_axis": "batch"})
    assert check({"outputs": {"y": [0.5, 1.0]}}) is None
    assert "null" in check({"outputs": {"y": [None, None]}})


def test_progress_rate_comes_from_the_request_count() -> None:
    """Locust's history says 'Requests/s' 0 for a run's first seconds and after the warm-up's
    reset; the progress line's rate comes from the running count instead, from the reset on."""
    def row(t: int, count: int) -> dict[str, str]:
        return {"Timestamp": str(t), "Total Request Count": str(count), "Requests/s": "0.000000"}
    history = [row(0, 0), row(1, 380), row(2, 1040), row(3, 0), row(4, 650), row(5, 1300), row(6, 1960)]
    assert recent_rps(history[:3]) == 520.0  # the first seconds, before Locust has a figure
    assert recent_rps(history) == 1960 / 3  # from the reset on, not across it
    assert recent_rps(history + [row(t, 1960 + 600 * (t - 6)) for t in range(7, 13)]) == 600.0  # the last 5 s
    assert recent_rps([]) == 0.0 and recent_rps(history[:1]) == 0.0


def test_slo_files_parse_and_reject_unknown_keys(tmp_path: Path) -> None:
    from maas.slo import SLO

    for model in ("maintenance", "digits", "minilm"):
        slo = SLO.for_model(model)
        assert slo.users > 0 and slo.thresholds.max_p95_ms > 0 and slo.warmup_s >= 0
    bad = tmp_path / "slo.yaml"
    bad.write_text("users: 4\np95: 10\n")
    with pytest.raises(ValueError, match="unknown SLO keys"):
        SLO.from_file(bad)


def test_regression_check_names_what_got_worse() -> None:
    from maas.release import regressions
    from maas.slo import Regression

    base = {"p95_ms": 10.0, "rps": 100.0}
    assert regressions({"p95_ms": 14.0, "rps": 80.0}, base, Regression(0.5, 0.3)) == []
    found = regressions({"p95_ms": 16.0, "rps": 60.0}, base, Regression(0.5, 0.3))
    assert found[0].startswith("p95 16.0 ms > 15.0 ms") and found[1].startswith("throughput 60.0 req/s < 70.0")


def test_the_baseline_is_a_run_that_measured_what_the_gate_measures(tmp_path: Path) -> None:
    """A newer explanations run, gRPC run, capacity step or run at other users is no baseline: the
    explanations one (p95 400 ms) let a candidate 25x slower than the predictions baseline pass."""
    from maas.release import last_summary
    from maas.slo import SLO

    slo = SLO.from_file(ROOT / "loadtests" / "slo" / "maintenance.yaml")
    runs = [("20261201-100000-m", {}), ("20261201-110000-m-explanations", {"endpoint": "explanations"}),
            ("20261201-120000-m-grpc", {"protocol": "grpc"}), ("20261201-130000-m-capacity-8u", {}),
            ("20261201-140000-m", {"users": slo.users + 1}), ("20261201-150000-m", {"passed": False})]
    for folder, changed in runs:
        (tmp_path / folder).mkdir()
        summary = {"model": "m", "served_version": "1.0", "passed": True, "endpoint": "predictions", "protocol": "http",
                   "users": slo.users, "run_time_s": slo.run_time_s, "locust_workers": 0, **changed}
        (tmp_path / folder / "summary.json").write_text(json.dumps(summary))
    found = last_summary(tmp_path, "m", "1.0", slo, 0)
    assert found is not None and found[1].parent.name == "20261201-100000-m"


SAFE = read_properties(ROOT / "config.properties")


@pytest.mark.parametrize("change,finding", [
    ({"management_address": "http://0.0.0.0:8081"}, "management_address"),
    ({"inference_address": "https://0.0.0.0:8443"}, "without TLS"),
    ({"grpc_management_address": "0.0.0.0"}, "grpc_management_address"),
    ({"disable_token_authorization": "true"}, "disable_token_authorization"),
    ({"allowed_urls": "file://.*|http(s)?://.*"}, "allowed_urls"),
    ({"allowed_urls": "https://.*"}, "allowed_urls"),
    ({"allowed_urls": "^file:///.*$"}, "allowed_urls"),
    ({"install_py_dep_per_model": "true"}, "install_py_dep_per_model"),
    ({"max_request_size": "999999999999"}, "max_request_size"),
    ({"allowed_urls": "^(HTTP|HTTPS|FILE)://.*"}, "allowed_urls"),  # TorchServe matches without case
    ({"allowed_urls": "^https?://[^/]+/models/.*"}, "allowed_urls"),
    ({"enable_envvars_config": "true"}, "TS_* environment"),
    ({"use_env_allowed_urls": "true"}, "TS_* environment"),
    ({"metrics_address": "https://0.0.0.0:8443", "certificate_file": "c.pem", "private_key_file": "k.pem"}, "takes no key"),
])
def test_config_audit_finds_each_weakening(change, finding) -> None:
    from maas.config_audit import audit

    assert audit(SAFE) == []
    problems = audit({**SAFE, **change})
    assert len(problems) == 1 and finding in problems[0], problems
    assert audit({k: v for k, v in SAFE.items() if k not in ("allowed_urls", "max_request_size")})


def test_the_audit_reads_the_file_as_torchserve_does(tmp_path: Path) -> None:
    """Java's escapes and separators: `disable\\_token_authorization=true` turns authorization off."""
    from maas.config_audit import audit

    config = tmp_path / "config.properties"
    config.write_text((ROOT / "config.properties").read_text() + "disable\\_token_authorization = true\n")
    assert any("disable_token_authorization" in p for p in audit(read_properties(config)))


def test_tls_makes_a_public_address_acceptable() -> None:
    from maas.config_audit import audit

    tls = {**SAFE, "inference_address": "https://0.0.0.0:8443", "certificate_file": "c.pem", "private_key_file": "k.pem"}
    assert audit(tls) == []
