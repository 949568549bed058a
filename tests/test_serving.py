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
from tests.conftest import free_port, write_yaml

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
    """Today's (UTC) inference logs under ``root``."""
    day = datetime.now(timezone.utc).date()
    return read_window(root, day, day + timedelta(days=1), **kw)


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
