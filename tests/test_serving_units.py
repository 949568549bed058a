"""kdflow.serving without a server: request parsing and validation, the log buffer and its spill directory."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest

from kdflow.inference_logs import read_window
from kdflow.serving.holder import cascade_threshold, softmax
from kdflow.serving.logbuffer import LogBatch, LogBuffer, spill_root
from kdflow.serving.requests import RequestError, check_content_type, parse_inputs, parse_labels

W = 4


def body(payload) -> bytes:
    return orjson.dumps(payload)


def test_inputs_instances_and_dataframe_split_give_the_same_rows():
    data = [[0.0, 1.5, -2, 3], [4, 5, 6, 7.25]]
    expected = np.array(data, dtype=np.float32)
    payloads = [
        {"inputs": data},
        {"instances": data},
        {"dataframe_split": {"columns": list("abcd"), "data": data}},
        {"dataframe_split": {"data": data}},
    ]
    for payload in payloads:
        out = parse_inputs(body(payload), W, 10)
        assert out.dtype == np.float32 and out.shape == (2, W)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "raw, status, message",
    [
        (b"", 400, "empty body: expected a JSON object"),
        (b"{", 400, "invalid JSON"),
        (b"[1]", 400, "expected a JSON object with one of ['inputs', 'instances', 'dataframe_split'], found a list"),
        (
            b'{"x": 1}',
            400,
            "missing field: expected one of ['inputs', 'instances', 'dataframe_split'], found keys ['x']",
        ),
        (b'{"inputs": [], "instances": []}', 400, "give only one of"),
        (b'{"inputs": {}}', 400, "inputs must be a list of rows, found an object"),
        (b'{"inputs": []}', 400, "inputs is empty: expected at least one row of 4 numbers"),
        (b'{"inputs": [[1, 2, 3, 4], [1, 2, 3]]}', 400, "row 1 has 3 values, expected 4"),
        (b'{"inputs": [[1, 2, 3, 4], [1, 2, 3, 4, 5]]}', 400, "row 1 has 5 values, expected 4"),
        (b'{"inputs": [[1, 2, 3, "4"]]}', 400, "row 0 value 3 is a string, expected a number"),
        (b'{"inputs": [[1, 2, false, 4]]}', 400, "row 0 value 2 is a boolean, expected a number"),
        (b'{"inputs": [[1, 2, 3, null]]}', 400, "row 0 value 3 is null, expected a number"),
        (b'{"inputs": [[1, 2, 3, [4]]]}', 400, "row 0 value 3 is a list, expected a number"),
        (b'{"inputs": [[1, 2, 3, 1e39]]}', 400, "row 0 value 3 (1e+39) is not a finite float32"),
        (b'{"inputs": [[1, 2, 3, 4], 5]}', 400, "inputs row 1 is a number, expected a list of 4 numbers"),
        (b'{"inputs": [[1, 2, 3, NaN]]}', 400, "invalid JSON"),
        (b'{"dataframe_split": [[1, 2, 3, 4]]}', 400, "dataframe_split must be an object with 'data'"),
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2, 3, 4]]}}', 400, "has 1 columns, expected 4"),
        (
            b'{"inputs": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]}',
            413,
            "3 rows in one request, at most serving.max_rows_per_request=2",
        ),
    ],
)
def test_bad_bodies_name_the_problem(raw, status, message):
    with pytest.raises(RequestError) as info:
        parse_inputs(raw, W, 2)
    assert info.value.status == status
    assert message in info.value.message and "\n" not in info.value.message


def test_a_boolean_next_to_numbers_is_refused_although_numpy_would_take_it():
    with pytest.raises(RequestError, match="row 1 value 0 is a boolean"):
        parse_inputs(b'{"inputs": [[1, 2, 3, 4], [true, 2, 3, 4]]}', W, 10)
    # the word inside a column name sends the body down the slow path, which still accepts it
    out = parse_inputs(b'{"dataframe_split": {"columns": ["true", "b", "c", "d"], "data": [[1, 2, 3, 4]]}}', W, 10)
    np.testing.assert_array_equal(out, [[1, 2, 3, 4]])


def test_content_type():
    check_content_type(None)
    check_content_type("application/json; charset=utf-8")
    with pytest.raises(RequestError) as info:
        check_content_type("text/csv")
    assert info.value.status == 415 and "text/csv" in info.value.message


def test_labels_are_validated():
    ids, labels = parse_labels(body({"labels": [{"request_id": "a", "label": 0}, {"request_id": "b", "label": 9}]}), 10)
    assert ids == ["a", "b"] and labels == [0, 9]
    for items, message in [
        ([{"request_id": "a", "label": 10}], "labels[0].label 10 is not a known class (0..9)"),
        ([{"request_id": "a", "label": -1}], "is not a known class"),
        ([{"request_id": "a", "label": True}], "must be an integer class, found a boolean"),
        ([{"request_id": "a", "label": 1.0}], "must be an integer class, found a number"),
        ([{"request_id": " ", "label": 1}], "labels[0].request_id must be a non-empty string"),
        ([{"label": 1}], "request_id must be a non-empty string, found null"),
        (["a"], "labels[0] is a string, expected an object"),
        ([], "labels must be a non-empty list"),
    ]:
        with pytest.raises(RequestError) as info:
            parse_labels(body({"labels": items}), 10)
        assert info.value.status == 400 and message in info.value.message


def test_cascade_threshold_tag_and_softmax():
    assert cascade_threshold({}, "m") == 0.0
    assert cascade_threshold({"kdflow.cascade_threshold": "0.625"}, "m") == 0.625
    assert cascade_threshold({"kdflow.cascade_threshold": "high"}, "m") == 0.0
    p = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def _batch(i: int, n: int, version: str = "1", teacher: bool = False) -> LogBatch:
    rng = np.random.default_rng(i)
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    ids = [f"r{i}-{k}" for k in range(n)]
    x = rng.normal(size=(n, W)).astype(np.float32)
    logits = rng.normal(size=(n, 3)).astype(np.float32) if teacher else None
    return LogBatch(time.time(), ids, version, x, probs, ["student"] * n, 1.5, logits)


def _window(root: str):
    day = datetime.now(timezone.utc).date()
    return read_window(root, day - timedelta(days=1), day + timedelta(days=2), require_all_partitions=False)


def test_buffer_flushes_rows_with_their_versions_and_teacher_logits(tmp_path):
    root = str(tmp_path / "logs")
    buffer = LogBuffer(root, "m", str(tmp_path / "spill"), flush_rows=1000, flush_seconds=60)
    buffer.append(_batch(0, 3, "1"))
    buffer.append(_batch(1, 2, "2", teacher=True))
    assert buffer.depth == 5 and not (tmp_path / "logs").exists()  # nothing written before a flush
    assert buffer.flush() == 5 and buffer.depth == 0 and buffer.rows_written == 5
    window = _window(root)
    versions = dict(zip(window.request_ids, window.frame["model_version"]))
    assert versions == {"r0-0": "1", "r0-1": "1", "r0-2": "1", "r1-0": "2", "r1-1": "2"}
    assert window.shadow_mask.sum() == 2 and set(window.frame["latency_ms"]) == {1.5}


def test_flusher_thread_writes_when_enough_rows_wait_and_close_writes_the_rest(tmp_path):
    root = str(tmp_path / "logs")
    buffer = LogBuffer(root, "m", str(tmp_path / "spill"), flush_rows=10, flush_seconds=60)
    buffer.start()
    buffer.append(_batch(0, 12))
    deadline = time.monotonic() + 30
    while buffer.rows_written < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert buffer.rows_written == 12  # woken by the row count, long before flush_seconds
    buffer.append(_batch(1, 3))
    buffer.close()
    assert len(_window(root)) == 15


def test_a_failed_write_spills_and_is_uploaded_once_the_root_works_again(tmp_path):
    """A real fault: the log root sits under a regular file, so every write to it fails (NotADirectoryError)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    root = str(blocker / "logs")
    buffer = LogBuffer(root, "m", str(tmp_path / "spill"), flush_rows=1000, flush_seconds=60)
    buffer.append(_batch(0, 4))
    buffer.reject(400, "row 0 has 3 values, expected 4", "/invocations", 10)
    assert buffer.flush() == 4
    spill = spill_root(str(tmp_path / "spill"), root)
    spilled = sorted(p.relative_to(spill).as_posix() for p in spill.rglob("part-*"))
    assert buffer.spill_pending == 2 and spilled[0].startswith("date=") and spilled[1].startswith("rejected/date=")
    blocker.unlink()  # the root is writable again
    assert buffer.flush() == 0 and buffer.spill_pending == 0
    assert not list((tmp_path / "spill").rglob("part-*"))
    assert sorted(_window(root).request_ids) == [f"r0-{k}" for k in range(4)]
    parts = list((blocker / "logs").glob("rejected/date=*/part-*.jsonl"))
    (record,) = [orjson.loads(line) for p in parts for line in p.read_bytes().splitlines()]
    assert record["status"] == 400 and record["path"] == "/invocations"


def test_spilled_parts_of_an_earlier_process_are_uploaded_by_the_next(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    root, spill = str(blocker / "logs"), str(tmp_path / "spill")
    first = LogBuffer(root, "m", spill, flush_rows=1000, flush_seconds=60)
    first.append(_batch(0, 2))
    first.close()
    assert first.spill_pending == 1
    blocker.unlink()
    second = LogBuffer(root, "m", spill, flush_rows=1000, flush_seconds=60)
    assert second.spill_pending == 1
    second.close()
    assert second.spill_pending == 0 and len(_window(root)) == 2
