"""No secrets where people read: URIs and credentials redacted in reports, run logs and the stack's output; the
audit trail's actor always names a user and a host."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdflow.redact import actor, install_log_redaction, redact, redact_text
from kdflow.report import write_report

SECRET = "pa55-w0rd"
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgresql+psycopg2://kd:pa55@db:5432/mlflow", "postgresql+psycopg2://kd:***@db:5432/mlflow"),
        ("http://admin:pa55@127.0.0.1:5000", "http://admin:***@127.0.0.1:5000"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=abcd&versionId=2",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&versionId=2",
        ),
        ("postgresql://u@h/db?sslmode=require&password=pa55", "postgresql://u@h/db?sslmode=require&password=***"),
        ("AWS_SECRET_ACCESS_KEY=abc AWS_ACCESS_KEY_ID=AKIA", "AWS_SECRET_ACCESS_KEY=*** AWS_ACCESS_KEY_ID=AKIA"),
        # Nothing secret: unchanged.
        (
            "s3://bucket/prefix http://127.0.0.1:5000/api user@host",
            "s3://bucket/prefix http://127.0.0.1:5000/api user@host",
        ),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
        ("", ""),
    ],
)
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_redact_nested_values_and_report(tmp_path):
    report = {
        "provenance": {"tracking_uri": f"postgresql://kd:{SECRET}@db/mlflow", "n": 3},
        "uris": [f"http://u:{SECRET}@h", "s3://b/k"],
        "gate": ("ok", 1.0),
    }
    assert redact(report) == {
        "provenance": {"tracking_uri": "postgresql://kd:***@db/mlflow", "n": 3},
        "uris": ["http://u:***@h", "s3://b/k"],
        "gate": ("ok", 1.0),
    }
    metrics = {"ece": 0.1, "mce": 0.2, "nll": 0.3, "brier": 0.4}
    ev = {
        f"{who}_{m}": 1.0
        for who in ("student", "teacher")
        for m in ("accuracy", "ece", "latency_p50_ms", "latency_p95_ms", "throughput", "params")
    }
    full = {
        **report,
        "student_name": "s",
        "teacher": {"uri": f"http://u:{SECRET}@h/models/t", "version": "1"},
        "evaluation": {**ev, "flip_rate": 0.0, "teacher_gap": 0.0, "size_ratio": 0.1},
        "calibration": {"temperature": 1.5, "before": metrics, "after": metrics},
        "sla_checks": [],
        "registration": {"version": "1"},
        "gate_passed": True,
        "decision": {"reason": "ok"},
    }
    json_path, md_path, html_path = write_report(full, tmp_path)
    assert "http://u:***@h/models/t" in md_path.read_text()
    assert all(SECRET not in p.read_text() for p in (json_path, md_path, html_path))
    assert json.loads(json_path.read_text())["provenance"]["tracking_uri"] == "postgresql://kd:***@db/mlflow"


def test_log_records_are_redacted_at_creation(caplog):
    install_log_redaction()
    install_log_redaction()  # idempotent: one wrapper
    with caplog.at_level(logging.INFO):
        logging.getLogger("kdflow.some.child").info("tracking at %s", f"postgresql://kd:{SECRET}@db/mlflow")
    assert SECRET not in caplog.text and "postgresql://kd:***@db/mlflow" in caplog.text


def test_prefect_run_logs_reach_the_api_redacted(prefect_harness):
    """A task that logs a URI with a password through Prefect's run logger: the log stored by the Prefect API
    (what the UI shows) has it masked."""
    import asyncio

    from prefect import flow, get_run_logger, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    import tasks  # noqa: F401 - installs the redaction, as every flow module does by importing tasks

    @task
    def talk() -> None:
        get_run_logger().info("store at s3://bucket via http://key:%s@127.0.0.1:9000", SECRET)

    @flow
    def speak() -> str:
        talk()
        from prefect.runtime import flow_run

        return flow_run.id

    run_id = speak()

    async def read() -> list[str]:
        await APILogHandler.aflush()  # the batched run logs, sent to the API now
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return [entry.message for entry in logs]

    messages = asyncio.run(read())
    assert any("http://key:***@127.0.0.1:9000" in m for m in messages), messages
    assert not any(SECRET in m for m in messages)


def test_actor_names_a_user_and_host_without_user_variables():
    """$USER, $LOGNAME, ... unset (a cron job, a bare container): the actor still names the OS user and host."""
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    out = subprocess.run(
        [sys.executable, "-c", "from kdflow.redact import actor; print(actor('cli'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.startswith("cli:") and "unknown" not in out and "@" in out, out
    assert out.split("@", 1)[1] == os.uname().nodename
    assert actor("flow").startswith("flow:")


# infra/start-stack.sh never printing the S3 secret: tests/test_infra.py::test_stack_creates_every_bucket_the_configs_name


def test_mlflow_params_tags_and_version_tags_are_redacted(tmp_path):
    """A run opened with a config holding a PostgreSQL URI with a password: MLflow stores it masked, in the run's
    params and tags and in a model version's tags; the audit actor of an alias move defaults to user@host."""
    from kdflow import registry
    from mlflow import MlflowClient

    exp = registry.configure(f"sqlite:///{tmp_path}/mlflow.db", "redact", str(tmp_path / "artifacts"))
    uri = f"postgresql://kd:{SECRET}@db:5432/mlflow"
    run_id, _ = registry.open_run(exp, "k1", "r", {"kdflow.source": uri}, {"mlflow.tracking_uri": uri, "n": 3})
    run = MlflowClient().get_run(run_id)
    assert run.data.params == {"mlflow.tracking_uri": "postgresql://kd:***@db:5432/mlflow", "n": "3"}
    assert run.data.tags["kdflow.source"] == "postgresql://kd:***@db:5432/mlflow"
    client = MlflowClient()
    client.create_registered_model("m")
    version = client.create_model_version("m", f"runs:/{run_id}/model", run_id).version
    registry.tag_version("m", version, {"store": {"uri": f"s3://b/p?X-Amz-Signature={SECRET}"}})
    assert SECRET not in client.get_model_version("m", version).tags["kdflow.store"]
    registry.set_alias("m", "challenger", version, reason="test")
    (event,) = registry.history("m")
    assert event.actor.startswith("kdflow:") and "@" in event.actor
