"""Shared fixtures: the real packaged configs shrunk to tiny data, a Prefect test harness, a tiny teacher."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from kdflow.config import packaged_config  # noqa: E402
from kdflow.generators import write_mnist1d  # noqa: E402

TINY_SIZES = {"train": 600, "val": 300, "test": 300}
TINY_TRANSFER = 1200


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``bench/<script>`` run as a user runs it (``python bench/<script> ...`` from the repository root), with
    moto's test credentials in its environment; its output captured."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return subprocess.run(
        [sys.executable, str(root / "bench" / script), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with ``start_new_session=True`` as a user would: SIGTERM to its process group, then
    SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def no_default_mlflow_store():
    """Every MLflow call names its tracking URI: a call that fell back to MLflow's default would leave a
    ``mlflow.db`` in the working directory (seen once: a teacher resolved before the config's URI was set)."""
    stray = Path.cwd() / "mlflow.db"
    existed = stray.exists()
    yield
    assert existed or not stray.exists(), f"a test used MLflow's default tracking store and created {stray}"


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free loopback port; boto3 (unchanged) talks to it over real HTTP."""
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_bucket(endpoint: str, name: str) -> str:
    """Create an S3 bucket on ``endpoint`` and return its name."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (temporary database) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Tiny MNIST-1D splits generated offline once per session."""
    return write_mnist1d(tmp_path_factory.mktemp("mnist1d"), transfer_size=TINY_TRANSFER, sizes=TINY_SIZES)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    """Per-session state: MLflow database, artifacts, logit store, reports."""
    return tmp_path_factory.mktemp("kdflow-state")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as YAML and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def teacher_config(tiny_data, state_dir) -> dict[str, Any]:
    """The packaged MNIST-1D teacher config, shrunk: tiny data, few epochs, tmp state."""
    cfg = yaml.safe_load(packaged_config("mnist1d_teacher.yaml").read_text())
    cfg["data"].update({k: str(tiny_data[k]) for k in ("train", "val", "test")})
    cfg["model"]["args"] = {"channels": 32, "depth": 3, "kernel_size": 5}
    cfg["train"].update(epochs=12, early_stopping_patience=None, batch_size=64)
    cfg["gate"]["min_accuracy"] = 0.2  # a floor for 600 training rows (chance is 0.1); the packaged one is 0.85
    cfg["mlflow"] = {
        "tracking_uri": f"sqlite:///{state_dir}/mlflow.db",
        "artifact_location": str(state_dir / "artifacts"),
    }
    cfg["store"] = {"root": str(state_dir / "store")}  # training checkpoints stay in the tmp state
    return cfg


@pytest.fixture(scope="session")
def session_teacher(prefect_harness, teacher_config, state_dir) -> dict[str, Any]:
    """A tiny teacher trained and registered through the real teacher flow (alias ``champion``), once."""
    from flows.teacher import teacher_flow

    return teacher_flow(str(write_yaml(state_dir / "teacher.yaml", teacher_config)))


@pytest.fixture()
def teacher(session_teacher, teacher_config) -> dict[str, Any]:
    """The session's teacher, with MLflow pointed at the registry that holds it: many tests point the process-wide
    tracking URI at registries of their own, so a test that resolves the teacher must not depend on test order."""
    from kdflow.registry import configure_tracking

    configure_tracking(teacher_config["mlflow"]["tracking_uri"])
    return session_teacher


@pytest.fixture()
def distill_config(tiny_data, state_dir, teacher, request) -> dict[str, Any]:
    """The packaged distill config shrunk to tiny data; each test gets its own student name and reports dir."""
    cfg = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    cfg["data"].update({k: str(tiny_data[k]) for k in ("train", "val", "test", "transfer")})
    cfg["train"].update(epochs=4, early_stopping_patience=None, batch_size=128, schedule={"warmup_steps": 10})
    # SLAs loose enough for a 4-epoch student on 1,800 rows; tests that need a failing gate tighten them.
    cfg["sla"] = {
        "min_accuracy": 0.3,
        "max_teacher_gap": 0.6,
        "max_ece": 0.5,
        "max_flip_rate": 0.7,
        "max_latency_p95_ms": 1000.0,
        "max_size_ratio": 0.5,
        "champion_tolerance": 0.5,
    }
    cfg["evaluation"] = {"latency_batches": 20, "throughput_batches": 2}
    cfg["registry"]["student_name"] = f"student-{request.node.name}".replace("[", "-").replace("]", "")[:60]
    cfg["mlflow"] = {
        "tracking_uri": f"sqlite:///{state_dir}/mlflow.db",
        "artifact_location": str(state_dir / "artifacts"),
    }
    cfg["store"] = {"root": str(state_dir / "store"), "rows_per_shard": 512}
    cfg["output_dir"] = str(state_dir / "reports")
    return cfg


def chain_is_consistent(events: list, start: str | None = None) -> bool:
    """Each alias event's ``previous`` is the version set by the event before it (``start`` for the first)."""
    expected = start
    for e in events:
        if e.previous != expected:
            return False
        expected = e.version
    return True


# ---- the machine's PostgreSQL (127.0.0.1:5432, user postgres): tests that need it skip with a printed reason
PG_HOST, PG_PORT = "127.0.0.1", 5432


def postgres_answers() -> bool:
    """Whether something accepts TCP connections on PostgreSQL's port."""
    import socket

    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=3):
            return True
    except OSError:
        return False


def psql_admin(sql: str) -> None:
    """Run one SQL statement as ``postgres`` on the ``postgres`` database (creating and dropping test databases)."""
    import subprocess

    subprocess.run(
        ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", "-d", "postgres", "-qc", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


def drop_database(db: str) -> None:
    """Drop a test database (terminating leftover connections)."""
    psql_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
