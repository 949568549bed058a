"""The pure helpers of bench/serving.py (aggregation, percentiles, the log check, the load client against a real
loopback HTTP server); its figures are measured by the script, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def serving():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("bench_serving", BENCH / "serving.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_serving", None)
        sys.path.remove(str(BENCH))


def test_percentiles_interpolate_and_empty_is_none(serving):
    assert serving.percentiles([1, 2, 3, 4, 5]) == {"p50": 3.0, "p95": 4.8, "p99": pytest.approx(4.96)}
    assert serving.percentiles([], (50,)) == {"p50": None}


def test_load_summary_counts_only_accepted_requests_per_second(serving):
    res = serving.LoadResult(8, [1.0, 2.0, 3.0], {"200": 3, "400": 1, "error": 1}, wall_s=0.5, budget_hit=True)
    s = res.summary()
    assert (s["requests"], s["accepted"], s["requests_per_s"], s["p50_ms"]) == (5, 3, 6.0, 2.0)
    assert s["statuses"] == {"200": 3, "400": 1, "error": 1} and s["budget_hit"] is True


def test_merge_counts_and_log_check(serving):
    assert serving.merge_counts([{"200": 2}, {"200": 1, "503": 4}, {}]) == {"200": 3, "503": 4}
    assert serving.log_check(10, 10)["ok"] is True
    assert serving.log_check(10, 9) == {"accepted": 10, "logged": 9, "ok": False}


def test_time_calls_counts_warmup_apart_and_passes_single_rows(serving):
    seen = []
    out = serving.time_calls(lambda x: seen.append(x.shape), np.zeros((3, 4), np.float32), calls=7, warmup=2)
    assert len(seen) == 9 and set(seen) == {(1, 4)}
    assert out["calls"] == 7 and 0 < out["p50_us"] <= out["p95_us"]


def test_quick_sets_small_counts_and_explicit_values_win(serving):
    quick = serving.parse_args(["--quick", "--requests", "7"])
    assert (quick.requests, quick.time_budget, quick.mlflow_requests) == (7, 5.0, 40)
    full = serving.parse_args([])
    assert (full.requests, full.time_budget, full.mlflow_requests) == (400, 30.0, 200)
    with pytest.raises(SystemExit):
        serving.parse_args(["--time-budget", "0"])


@pytest.fixture
def echo_server():
    """A real HTTP/1.1 keep-alive server on loopback: 400 when the first input is negative, else 200; it
    records the first input of every request and the port it came from."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one persistent connection per client

        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((body["inputs"][0][0], self.client_address[1]))
            self.send_response(400 if body["inputs"][0][0] < 0 else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/invocations", received
    server.shutdown()
    server.server_close()


def test_load_client_against_a_real_server(serving, echo_server):
    """Every request is sent once per client and counted by status; latencies only for 200s; one connection
    per client."""
    url, received = echo_server
    rows = np.array([[1.0], [-1.0], [2.0], [3.0]], np.float32)
    res = serving.load(url, serving.bodies(rows), 2, 4, budget_s=30.0)
    assert res.statuses == {"200": 6, "400": 2} and len(res.latencies_ms) == 6 and not res.budget_hit
    assert sorted(v for v, _ in received) == sorted([1.0, -1.0, 2.0, 3.0] * 2)
    assert len({port for _, port in received}) == 2


def test_alternate_sends_each_row_to_every_server(serving, echo_server):
    url, received = echo_server
    rows = np.array([[1.0], [-1.0], [2.0]], np.float32)
    a, b = serving.alternate([url, url], serving.bodies(rows), 3, budget_s=30.0)
    assert a.statuses == b.statuses == {"200": 2, "400": 1} and len(a.latencies_ms) == 2
    assert [v for v, _ in received] == [1.0, 1.0, -1.0, -1.0, 2.0, 2.0]


def test_answer_matches_reads_both_protocols(serving):
    p = np.array([0.25, 0.75])
    assert serving.answer_matches({"predictions": [[0.25, 0.75]]}, p) is True
    assert (
        serving.answer_matches({"predictions": [{"probabilities": [0.3, 0.7], "answered_by": "student"}]}, p) is False
    )
    assert serving.answer_matches({"predictions": [{"probabilities": [0.3, 0.7], "answered_by": "teacher"}]}, p) is None


def test_deferral_threshold_sends_that_share_to_the_teacher(serving):
    from kdflow.selective import route

    conf = np.linspace(0.5, 1.0, 1000)
    probs = np.stack([conf, 1 - conf], axis=1)
    threshold = serving.deferral_threshold(probs, 0.1)
    assert route(conf, threshold).mean() == pytest.approx(0.1, abs=0.002)  # route: True where the teacher answers
