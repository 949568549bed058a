"""infra/: the shipped configs validate and say what the deployments and the stack rely on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kdflow.config import DistillConfig, TeacherConfig, load_config
from tests.test_deployments import BIN, client_env, explained, prefect_server, start_process, wait_for  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def s3_uris(cfg: DistillConfig | TeacherConfig) -> list[str]:
    """Every ``s3://`` location a config names (data, logit store, inference logs)."""
    found = []
    for value in (*cfg.data.model_dump().values(), cfg.store.root, getattr(getattr(cfg, "logs", None), "root", None)):
        if isinstance(value, str) and value.startswith("s3://"):
            found.append(value)
    return found


@pytest.mark.parametrize(
    "name, model",
    [
        ("kdflow-production.yaml", DistillConfig),
        ("kdflow-production-teacher.yaml", TeacherConfig),
        ("kdflow-stack.yaml", DistillConfig),
        ("kdflow-stack-teacher.yaml", TeacherConfig),
    ],
)
def test_infra_configs_validate_against_the_tracking_server(name, model):
    """Each shipped config loads strictly and tracks to the MLflow server, artifacts through it (not SQLite)."""
    cfg = load_config(INFRA / name, model)
    assert cfg.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert cfg.mlflow.artifact_location is None  # the server's --artifacts-destination decides


def test_production_config_keeps_data_and_stores_on_s3():
    """Production: data, logit store and inference logs on S3 (any worker machine reaches them); the teacher it
    distils is the one the production teacher config registers, with checkpoints in the same bucket."""
    cfg = load_config(INFRA / "kdflow-production.yaml", DistillConfig)
    teacher = load_config(INFRA / "kdflow-production-teacher.yaml", TeacherConfig)
    assert cfg.store.root.startswith("s3://") and cfg.logs.root.startswith("s3://")
    assert all(v.startswith("s3://") for v in (cfg.data.train, cfg.data.val, cfg.data.test, cfg.data.transfer))
    assert cfg.store.endpoint_url is None and cfg.logs.endpoint_url is None  # AWS_ENDPOINT_URL_S3 or AWS itself
    assert cfg.teacher_uri == f"models:/{teacher.registry_name}@{teacher.alias}"
    assert teacher.store.root == cfg.store.root and teacher.data.train == cfg.data.train


def test_stack_config_keeps_everything_on_local_disk():
    """The single-machine stack config: no S3 anywhere, stores under .kdflow/stack/ (kept across restarts)."""
    cfg = load_config(INFRA / "kdflow-stack.yaml", DistillConfig)
    assert s3_uris(cfg) == [] and s3_uris(load_config(INFRA / "kdflow-stack-teacher.yaml", TeacherConfig)) == []
    assert cfg.store.root.startswith(".kdflow/stack/") and cfg.logs.root.startswith(".kdflow/stack/")


def test_the_demo_config_stays_embedded():
    """`make demo`, `kdflow distill` and `kdflow serve` examples keep the embedded SQLite default."""
    cfg = load_config(REPO / "kdflow" / "configs" / "mnist1d_distill.yaml", DistillConfig)
    assert cfg.mlflow.tracking_uri.startswith("sqlite:///") and not s3_uris(cfg)


@pytest.mark.slow
def test_worker_stops_within_seconds_of_sigterm(prefect_server, tmp_path):  # noqa: F811 (the imported fixture)
    """infra/worker.sh's worker, idle on a real server, exits soon after one SIGTERM to the pid worker.sh exec'd
    (`prefect worker start` polled on until killed)."""
    env = client_env(prefect_server.api_url, tmp_path / "prefect-home")
    env.update(KDFLOW_DEPLOY="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    worker = start_process("worker.sh", ["bash", str(INFRA / "worker.sh")], tmp_path / "worker.log", env, REPO)
    try:
        with explained(worker, prefect_server.process):
            wait_for("the worker to start", lambda: "started!" in worker.log.read_text(), 120, worker)
            time.sleep(2)  # let it poll once: a loop mid-request must stop too
            sent = time.monotonic()
            os.kill(worker.popen.pid, signal.SIGTERM)  # the pid itself, as a supervisor would: not the group
            code = worker.popen.wait(timeout=10)
            waited = time.monotonic() - sent
        assert "stopped on a signal" in worker.log.read_text(), worker.tail()
        print(f"worker exited {code} {waited:.1f} s after SIGTERM")
    finally:
        worker.stop(grace_s=1)
