"""``kdflow serve-model`` as a real process on a free loopback port, talked to over HTTP, stopped with SIGTERM.

Students are tiny MLPs logged once per module as served artifacts (:func:`kdflow.artifact.log_served_model`) and
registered under a fresh name per test (``mlflow.register_model`` of the logged model: no second export);
MLflow runs on SQLite under a temporary directory, S3 is moto's server on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from kdflow.inference_logs import read_window
from tests.conftest import free_port, make_bucket, write_yaml

WIDTH, CLASSES = 40, 10
STARTUP_SECONDS = 120


def _student(seed: int, x: np.ndarray, y: np.ndarray, steps: int) -> Any:
    """A tiny MLP trained ``steps`` full-batch steps on ``(x, y)``, wrapped with temperature 1.5."""
    from kdflow.models import CalibratedClassifier, build_model

    torch.manual_seed(seed)
    model = build_model("mlp", {"width": 16, "depth": 1}, (WIDTH,), CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return CalibratedClassifier(model, 1.5).eval()


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, tiny_data) -> dict[str, Any]:
    """A SQLite MLflow registry with two logged students (``m1``: trained, ``m2``: another seed) and a teacher."""
    import pyarrow.parquet as pq

    import mlflow
    from kdflow.artifact import ServedSpec, log_served_model
    from kdflow.registry import configure, log_torch_model

    root = tmp_path_factory.mktemp("serving-registry")
    tracking = f"sqlite:///{root}/mlflow.db"
    configure(tracking, "serving-tests", str(root / "artifacts"))
    table = pq.read_table(tiny_data["train"]).to_pandas()
    x = np.stack(table["x"].to_numpy()).astype(np.float32)
    y = table["label"].to_numpy().astype(np.int64)
    spec = ServedSpec("mlp", {"width": 16, "depth": 1}, (WIDTH,), CLASSES, 1.5)
    uris = []
    for seed, steps in ((0, 150), (1, 20)):
        with mlflow.start_run():
            uris.append(log_served_model(_student(seed, x, y, steps), spec, x[:5])[0])
    torch.manual_seed(7)
    from kdflow.models import build_model

    teacher = build_model("mlp", {"width": 64, "depth": 2}, (WIDTH,), CLASSES)
    with mlflow.start_run():
        teacher_uri, _ = log_torch_model(teacher.eval(), x[:5], None)
    mlflow.register_model(teacher_uri, "serving-teacher")
    from kdflow.promotion import set_alias

    set_alias("serving-teacher", "champion", "1", reason="test teacher")
    return {"root": root, "tracking": tracking, "uris": uris, "x": x, "y": y}


def register(env: dict[str, Any], name: str, models: list[int], tags: dict[int, dict] | None = None) -> list[str]:
    """Register ``env['uris'][i]`` for each i in ``models`` as versions 1, 2, ... of ``name``; champion = v1."""
    import mlflow
    from kdflow.promotion import set_alias
    from kdflow.registry import configure_tracking, tag_version

    configure_tracking(env["tracking"])
    versions = [str(mlflow.register_model(env["uris"][i], name).version) for i in models]
    for index, version_tags in (tags or {}).items():
        tag_version(name, versions[index], version_tags)
    set_alias(name, "champion", versions[0], reason="test")
    return versions


def config(env: dict[str, Any], tmp_path: Path, name: str, logs: dict | None = None, **serving: Any) -> Path:
    """A distill config serving ``name`` with logs and spill under ``tmp_path``."""
    cfg = {
        "data": {"train": "unused.parquet", "val": "unused.parquet", "test": "unused.parquet", "num_classes": 10},
        "teacher_uri": "models:/serving-teacher@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": name},
        "mlflow": {"tracking_uri": env["tracking"], "artifact_location": str(env["root"] / "artifacts")},
        "logs": logs or {"root": str(tmp_path / "logs")},
        "serving": {"spill_dir": str(tmp_path / "spill"), "log_flush_seconds": 0.5, **serving},
    }
    return write_yaml(tmp_path / "serve.yaml", cfg)


def kdflow_command() -> list[str]:
    script = Path(sys.executable).with_name("kdflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


@contextlib.contextmanager
def serving(config_path: Path, tmp_path: Path) -> Iterator[httpx.Client]:
    """``kdflow serve-model`` running on a free port until the block ends; then SIGTERM and exit 0."""
    port = free_port()
    out = open(tmp_path / f"server-{port}.log", "w")
    proc = subprocess.Popen(
        [*kdflow_command(), "serve-model", "--config", str(config_path), "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}: {Path(out.name).read_text()[-3000:]}"
            try:
                if client.get("/ping").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /ping in {STARTUP_SECONDS} s: {Path(out.name).read_text()[-3000:]}"
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
            out.close()
        assert code == 0, f"server exited {code}: {Path(out.name).read_text()[-3000:]}"


def today_window(root: str, **kw: Any):
    """The inference logs of today (UTC) and the days either side under ``root``."""
    day = datetime.now(timezone.utc).date()  # a day either side: a test that crosses midnight UTC still counts
    return read_window(root, day - timedelta(days=1), day + timedelta(days=2), require_all_partitions=False, **kw)


def rows(env: dict[str, Any], n: int, start: int = 0) -> list[list[float]]:
    return env["x"][start : start + n].astype(float).tolist()


@pytest.mark.slow
def test_300_requests_then_sigterm_leave_300_logged_rows(registry_env, tmp_path):
    versions = register(registry_env, "serve-basic", [0])
    cfg = config(registry_env, tmp_path, "serve-basic", log_flush_rows=1000, log_flush_seconds=60)
    ids = []
    with serving(cfg, tmp_path) as client:
        for i in range(300):
            r = client.post("/invocations", json={"inputs": rows(registry_env, 1, i)})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == versions[0] and body["model_name"] == "serve-basic"
            (p,) = body["predictions"]
            assert p["answered_by"] == "student" and len(p["probabilities"]) == CLASSES
            assert abs(sum(p["probabilities"]) - 1) < 1e-4 and p["class"] == int(np.argmax(p["probabilities"]))
            ids.append(p["request_id"])
        health = client.get("/health").json()
        assert health["rows_served"] == 300 and health["log_buffer_rows"] == 300  # nothing flushed yet
        assert client.get("/version").json()["model_version"] == versions[0]
    window = today_window(str(tmp_path / "logs"))
    assert len(window) == 300 and set(window.request_ids) == set(ids)
    assert set(window.frame["model_version"]) == {versions[0]}
    assert set(window.frame["answered_by"]) == {"student"}
    assert window.frame["latency_ms"].notna().all() and (window.frame["latency_ms"] > 0).all()
    np.testing.assert_allclose(window.x, np.asarray(registry_env["x"][:300]), rtol=0, atol=0)
    assert not window.shadow_mask.any()


BAD_REQUESTS = [  # (what, body, content type, status, words the one-line error must contain)
    (
        "wrong width",
        b'{"inputs": [[' + b"0.5," * 39 + b"0.5], [" + b"0.5," * 38 + b"0.5]]}",
        None,
        400,
        "row 1 has 39 values, expected 40",
    ),
    ("NaN literal", b'{"inputs": [[NaN' + b", 0.5" * 39 + b"]]}", None, 400, "invalid JSON"),
    ("infinite value", b'{"inputs": [[1e999' + b", 0.5" * 39 + b"]]}", None, 400, "infinity"),
    ("string value", b'{"inputs": [["abc"' + b", 0.5" * 39 + b"]]}", None, 400, "row 0 value 0 is a string"),
    ("boolean value", b'{"inputs": [[0.5, true' + b", 0.5" * 38 + b"]]}", None, 400, "row 0 value 1 is a boolean"),
    ("null value", b'{"inputs": [[0.5' + b", 0.5" * 38 + b", null]]}", None, 400, "row 0 value 39 is null"),
    ("oversized body", b'{"inputs": [[' + b"0.123456789," * 3000 + b"0]]}", None, 413, "max_body_bytes=20000"),
    ("too many rows", b'{"inputs": [' + b",".join([b"[" + b"0.5," * 39 + b"0.5]"] * 51) + b"]}", None, 413, "51 rows"),
    ("missing field", b'{"data": [[0.5]]}', None, 400, "missing field"),
    ("invalid JSON", b'{"inputs": [[0.5', None, 400, "invalid JSON"),
    ("wrong content type", b"0.5,0.5", "text/csv", 415, "text/csv"),
    ("empty body", b"", None, 400, "empty body"),
    ("no rows", b'{"inputs": []}', None, 400, "empty"),
    ("not an object", b"[[0.5]]", None, 400, "expected a JSON object"),
    ("a row is a number", b'{"instances": [0.5, 0.5]}', None, 400, "row 0 is a number"),
    (
        "wrong columns",
        b'{"dataframe_split": {"columns": ["a"], "data": [[0.5]]}}',
        None,
        400,
        "has 1 columns, expected 40",
    ),
]
BAD_LABELS = [
    (b'{"labels": [{"request_id": "r1", "label": 10}]}', "not a known class"),
    (b'{"labels": [{"request_id": "r1", "label": "3"}]}', "must be an integer"),
    (b'{"labels": [{"request_id": "", "label": 3}]}', "non-empty string"),
    (b'{"labels": []}', "non-empty list"),
    (b'{"rows": []}', "missing field"),
]


@pytest.mark.slow
def test_bad_input_is_refused_with_one_line_and_never_logged(registry_env, tmp_path):
    register(registry_env, "serve-bad", [0])
    cfg = config(registry_env, tmp_path, "serve-bad", max_body_bytes=20_000, max_rows_per_request=50)
    with serving(cfg, tmp_path) as client:
        for what, body, content_type, status, words in BAD_REQUESTS:
            headers = {"Content-Type": content_type or "application/json"}
            r = client.post("/invocations", content=body, headers=headers)
            assert r.status_code == status, (what, r.status_code, r.text)
            error = r.json()["error"]
            assert words in error and "\n" not in error, (what, error)
        for body, words in BAD_LABELS:
            r = client.post("/labels", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and words in r.json()["error"], r.text
        r = client.get("/invocations")
        assert r.status_code == 405 and r.json()["error"]
        health = client.get("/health").json()
        assert health["rejected"] == len(BAD_REQUESTS) + len(BAD_LABELS) and health["rows_served"] == 0
    logs = tmp_path / "logs"
    assert not list(logs.glob("date=*")), "a refused request left a logged prediction"
    records = [line for part in logs.glob("rejected/date=*/part-*.jsonl") for line in part.read_text().splitlines()]
    assert len(records) == len(BAD_REQUESTS) + len(BAD_LABELS)


@pytest.mark.slow
def test_hot_swap_moves_to_the_new_champion_without_a_failed_request(registry_env, tmp_path):
    from kdflow.promotion import set_alias

    v1, v2 = register(registry_env, "serve-swap", [0, 1])
    cfg = config(registry_env, tmp_path, "serve-swap", poll_seconds=0.3)
    seen: dict[int, list[tuple[int, str | None, str | None]]] = {0: [], 1: []}  # per sender: (status, version, id)
    stop = threading.Event()

    def count() -> int:
        return len(seen[0]) + len(seen[1])

    def wait_until(check, what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    with serving(cfg, tmp_path) as client:

        def keep_sending(sender: int) -> None:  # its own connection: two requests in flight at a time
            with httpx.Client(base_url=client.base_url, timeout=30) as own:
                i = 0
                while not stop.is_set():
                    try:
                        r = own.post("/invocations", json={"inputs": rows(registry_env, 2, (2 * i + sender) % 500)})
                        body = r.json()
                        seen[sender].append((r.status_code, body.get("model_version"),
                                             body["predictions"][0]["request_id"]))  # fmt: skip
                    except Exception as exc:  # a failed request is what this test looks for
                        seen[sender].append((-1, repr(exc), None))
                    i += 1

        senders = [threading.Thread(target=keep_sending, args=(k,)) for k in (0, 1)]
        for t in senders:
            t.start()
        try:
            wait_until(lambda: count() >= 100, "traffic")
            set_alias("serve-swap", "champion", v2, reason="test: hot swap")
            wait_until(lambda: all(s and s[-1][1] == v2 for s in seen.values()), "the new champion")
            after = count()
            wait_until(lambda: count() >= after + 100, "more traffic")
        finally:
            stop.set()
            for t in senders:
                t.join()
        assert client.get("/health").json()["swaps"] == 1
    everything = seen[0] + seen[1]
    assert all(status == 200 for status, _, _ in everything), [e for e in everything if e[0] != 200][:3]
    for answers in seen.values():  # each sender sees v1 until the swap, then v2 only
        versions = [v for _, v, _ in answers]
        first_v2 = versions.index(v2)
        assert set(versions[:first_v2]) == {v1} and set(versions[first_v2:]) == {v2}, "the version did not switch once"
    frame = today_window(str(tmp_path / "logs")).frame
    assert len(frame) == 2 * len(everything)
    logged = dict(zip(frame["request_id"], frame["model_version"]))
    assert all(logged[rid] == v for _, v, rid in everything), "a logged row carries another version than its answer"


@pytest.mark.slow
def test_s3_logs_and_late_labels_join(registry_env, tmp_path, s3_endpoint):
    bucket = make_bucket(s3_endpoint, "serve-logs")
    root = f"s3://{bucket}/inference"
    register(registry_env, "serve-s3", [0])
    cfg = config(registry_env, tmp_path, "serve-s3", logs={"root": root, "endpoint_url": s3_endpoint})
    data = rows(registry_env, 6)
    with serving(cfg, tmp_path) as client:
        ids = [p["request_id"] for p in client.post("/invocations", json={"inputs": data[:2]}).json()["predictions"]]
        split = {"dataframe_split": {"columns": [f"f{i}" for i in range(WIDTH)], "data": data[2:4]}}
        ids += [p["request_id"] for p in client.post("/invocations", json=split).json()["predictions"]]
        ids += [
            p["request_id"] for p in client.post("/invocations", json={"instances": data[4:]}).json()["predictions"]
        ]
        labels = [{"request_id": rid, "label": k % CLASSES} for k, rid in enumerate(ids[:4])]
        r = client.post("/labels", json={"labels": labels})
        assert r.status_code == 200 and r.json() == {"written": 4}
    window = today_window(root, endpoint_url=s3_endpoint)
    assert sorted(window.request_ids) == sorted(ids)
    got = dict(zip(window.request_ids, window.labels))
    assert [got[rid] for rid in ids] == [0, 1, 2, 3, -1, -1]


@pytest.mark.slow
def test_s3_outage_spills_and_uploads_after_recovery(registry_env, tmp_path, s3_endpoint):
    """A real outage: the log bucket's own moto server is stopped while the server keeps answering, then started
    again on the same port (moto keeps its buckets in this process)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    bucket = make_bucket(endpoint, "serve-outage")
    root = f"s3://{bucket}/logs"
    register(registry_env, "serve-outage", [0])
    cfg = config(registry_env, tmp_path, "serve-outage", logs={"root": root, "endpoint_url": endpoint},
                 log_flush_seconds=0.3)  # fmt: skip
    sent = 0

    def send(client: httpx.Client, n: int) -> None:
        nonlocal sent
        for _ in range(n):
            assert client.post("/invocations", json={"inputs": rows(registry_env, 1, sent)}).status_code == 200
            sent += 1

    def wait_for(client: httpx.Client, check, what: str) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = client.get("/health").json()
            if check(health):
                return health
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {health}")

    try:
        with serving(cfg, tmp_path) as client:
            send(client, 20)
            wait_for(client, lambda h: h["rows_logged"] == 20, "the first flush")
            moto.stop()
            send(client, 30)  # answered while S3 is down
            wait_for(client, lambda h: h["spilled_parts_pending"] > 0 and h["log_buffer_rows"] == 0, "a spill")
            assert list((tmp_path / "spill").rglob("part-*.parquet"))
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto.start()
            send(client, 10)
            wait_for(client, lambda h: h["spilled_parts_pending"] == 0 and h["rows_logged"] == 60, "the re-upload")
        window = today_window(root, endpoint_url=endpoint)
        assert len(window) == sent == 60 and len(set(window.request_ids)) == 60
        assert not list((tmp_path / "spill").rglob("part-*.parquet"))
    finally:
        moto.stop()


@pytest.mark.slow
def test_shadow_teacher_fills_teacher_logits_for_a_random_sample(registry_env, tmp_path):
    from kdflow.registry import load_torch_model, resolve

    register(registry_env, "serve-shadow", [0])
    cfg = config(registry_env, tmp_path, "serve-shadow", teacher="models:/serving-teacher@champion",
                 shadow_fraction=0.3, cascade={"enabled": False})  # fmt: skip
    with serving(cfg, tmp_path) as client:
        for i in range(0, 400, 10):
            r = client.post("/invocations", json={"inputs": rows(registry_env, 10, i)})
            assert {p["answered_by"] for p in r.json()["predictions"]} == {"student"}
    window = today_window(str(tmp_path / "logs"))
    assert len(window) == 400
    share = window.shadow_mask.mean()
    assert 0.2 < share < 0.4, share  # binomial(400, 0.3): sd 0.023
    teacher = load_torch_model(resolve("models:/serving-teacher@champion"))
    with torch.no_grad():
        expected = teacher(torch.from_numpy(window.x[window.shadow_mask])).numpy()
    np.testing.assert_allclose(window.teacher_logits[window.shadow_mask], expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(window.teacher_logits[~window.shadow_mask]).all()


@pytest.mark.slow
def test_cascade_answers_low_confidence_rows_with_the_teacher(registry_env, tmp_path):
    from kdflow.artifact import load_served
    from kdflow.registry import load_torch_model, resolve
    from kdflow.serving.holder import softmax

    x = registry_env["x"][:100]
    student = load_served(registry_env["uris"][0]).predict(x)
    threshold = float(np.median(student.max(axis=1)))
    register(registry_env, "serve-cascade", [0], tags={0: {"cascade_threshold": threshold}})
    cfg = config(registry_env, tmp_path, "serve-cascade", teacher="models:/serving-teacher@champion")
    with serving(cfg, tmp_path) as client:
        predictions = client.post("/invocations", json={"inputs": x.astype(float).tolist()}).json()["predictions"]
        assert client.get("/health").json()["cascade_threshold"] == pytest.approx(threshold)
    low = student.max(axis=1) < threshold
    assert 30 < low.sum() < 70
    assert [p["answered_by"] for p in predictions] == ["teacher" if f else "student" for f in low]
    with torch.no_grad():
        teacher_probs = softmax(
            load_torch_model(resolve("models:/serving-teacher@champion"))(torch.from_numpy(x)).numpy()
        )
    answered = np.array([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(answered[low], teacher_probs[low], atol=1e-5)
    np.testing.assert_allclose(answered[~low], student[~low], atol=1e-5)
    frame = today_window(str(tmp_path / "logs")).frame.set_index("request_id")
    frame = frame.loc[[p["request_id"] for p in predictions]]
    assert frame["answered_by"].tolist() == [p["answered_by"] for p in predictions]
    np.testing.assert_allclose(np.stack(frame["probabilities"].to_numpy()), student, atol=1e-6)  # the student's


@pytest.mark.slow
def test_configured_threshold_overrides_the_versions_tag(registry_env, tmp_path):
    """serving.cascade.threshold (an operator's cap on teacher load) wins over the version's own tag."""
    from kdflow.artifact import load_served

    x = registry_env["x"][:100]
    student = load_served(registry_env["uris"][0]).predict(x)
    threshold = float(np.quantile(student.max(axis=1), 0.25))
    register(registry_env, "serve-override", [0], tags={0: {"cascade_threshold": 0.0}})
    cfg = config(registry_env, tmp_path, "serve-override", teacher="models:/serving-teacher@champion",
                 cascade={"threshold": threshold})  # fmt: skip
    with serving(cfg, tmp_path) as client:
        predictions = client.post("/invocations", json={"inputs": x.astype(float).tolist()}).json()["predictions"]
        assert client.get("/health").json()["cascade_threshold"] == pytest.approx(threshold)
    low = student.max(axis=1) < threshold
    assert 10 < low.sum() < 40
    assert [p["answered_by"] for p in predictions] == ["teacher" if f else "student" for f in low]


@pytest.mark.slow
def test_challenger_split_logs_both_versions(registry_env, tmp_path):
    from kdflow.promotion import set_alias

    v1, v2 = register(registry_env, "serve-split", [0, 1])
    set_alias("serve-split", "challenger", v2, reason="test: challenger")
    cfg = config(registry_env, tmp_path, "serve-split", challenger_fraction=0.5)
    answered: dict[str, str] = {}
    with serving(cfg, tmp_path) as client:
        assert client.get("/health").json()["challenger_version"] == v2
        for i in range(100):
            body = client.post("/invocations", json={"inputs": rows(registry_env, 1, i)}).json()
            answered[body["predictions"][0]["request_id"]] = body["model_version"]
    counts = {v: list(answered.values()).count(v) for v in (v1, v2)}
    assert 25 < counts[v2] < 75 and counts[v1] + counts[v2] == 100, counts
    frame = today_window(str(tmp_path / "logs")).frame
    assert dict(zip(frame["request_id"], frame["model_version"])) == answered


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no champion", "unreadable config"])
def test_startup_errors_exit_non_zero_with_one_line(registry_env, tmp_path, case):
    path = config(registry_env, tmp_path, "serve-nobody-registered-this")
    if case == "unreadable config":
        path.write_text("serving: {port: [not a port]\n")
    proc = subprocess.run(
        [*kdflow_command(), "serve-model", "--config", str(path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert ("does not resolve" if case == "no champion" else "not valid YAML") in errors[0]


@pytest.mark.slow
def test_demo_prints_how_to_serve_its_champion(registry_env, tmp_path):
    from app.commands_pipeline import serve_hint
    from kdflow.config import DistillConfig, load_config

    (version,) = register(registry_env, "serve-hint", [0])
    path = config(registry_env, tmp_path, "serve-hint", port=8099)
    hint = serve_hint(load_config(path, DistillConfig), path)
    assert f"models:/serve-hint@champion, version {version}" in hint
    assert f"kdflow serve-model --config {path} --port 8099" in hint
    assert "http://127.0.0.1:8099/invocations" in hint and '{"inputs": [[' + ", ".join(["0.0"] * WIDTH) + "]]}" in hint
    path = config(registry_env, tmp_path, "serve-hint-nobody")
    assert serve_hint(load_config(path, DistillConfig), path) is None


@pytest.mark.slow
def test_torch_runtime_answers_like_onnx(registry_env, tmp_path):
    from kdflow.artifact import load_served

    register(registry_env, "serve-torch", [0])
    x = registry_env["x"][:8]
    with serving(config(registry_env, tmp_path, "serve-torch", runtime="torch"), tmp_path) as client:
        assert client.get("/health").json()["runtime"] == "torch"
        predictions = client.post("/invocations", json={"inputs": x.astype(float).tolist()}).json()["predictions"]
    expected = load_served(registry_env["uris"][0], "onnx").predict(x)
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, atol=1e-5)


@pytest.mark.slow
def test_holder_swaps_in_place_but_not_to_another_input_width(registry_env):
    import mlflow
    from kdflow.artifact import ServedSpec, log_served_model
    from kdflow.models import CalibratedClassifier, build_model
    from kdflow.promotion import set_alias
    from kdflow.serving.holder import ModelHolder

    v1, v2 = register(registry_env, "serve-holder", [0, 1])
    holder = ModelHolder("serve-holder", "champion", "onnx", poll_seconds=60)
    assert holder.champion.version == v1 and not holder.refresh()
    set_alias("serve-holder", "champion", v2, reason="test")
    assert holder.refresh() and holder.champion.version == v2 and holder.swaps == 1
    narrow = CalibratedClassifier(build_model("mlp", {"width": 8, "depth": 1}, (20,), CLASSES), 1.0).eval()
    with mlflow.start_run():
        _, v3 = log_served_model(narrow, ServedSpec("mlp", {"width": 8, "depth": 1}, (20,), CLASSES, 1.0),
                                 registry_env["x"][:5, :20], registered_name="serve-holder")  # fmt: skip
    set_alias("serve-holder", "champion", v3, reason="test: another input width")
    assert not holder.refresh() and holder.champion.version == v2  # still serving, refused once and remembered
    assert not holder.refresh() and holder._refused == {v3}
