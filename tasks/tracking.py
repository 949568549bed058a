"""MLflow run bookkeeping shared by the flows: one MLflow run per flow run, addressed by id."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run, task_run

from kdflow import registry
from kdflow.config import MlflowConfig
from tasks import kdflow_task


@kdflow_task(name="start-mlflow-run", retries=2, retry_delay_seconds=2)
def start_mlflow_run(
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> str:
    """Create the MLflow run for this flow run (named after it) and log the flattened config as params.

    Idempotent: the run is tagged ``kdflow.run_key`` with this task run's id, which a Prefect retry keeps, and
    a retry returns the run its first attempt created (completing its params) instead of creating a second."""
    exp_id = registry.configure(tracking_uri, experiment, artifact_location)
    run_tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        "prefect.flow_run_name": str(flow_run.get_name() or ""),
    }
    key = task_run.get_id()
    run_id, _ = registry.open_run(
        exp_id,
        f"start-mlflow-run:{key}" if key else None,
        flow_run.get_name() or None,
        {**run_tags, **(tags or {})},
        params,
    )
    return run_id


def end_mlflow_run(run_id: str, status: str) -> None:
    """Close the run as FINISHED or FAILED (a failed flow leaves a FAILED run, never a registered model)."""
    from mlflow import MlflowClient

    MlflowClient().set_terminated(run_id, status=status)


@contextlib.contextmanager
def mlflow_run(
    mlflow: MlflowConfig, experiment: str, params: dict[str, Any], tags: dict[str, str] | None = None
) -> Iterator[str]:
    """The flow run's MLflow run, from start to end: yields its id; ends it FINISHED when the block completes
    and FAILED when it raises (anything, interrupts included), then re-raises."""
    run_id = start_mlflow_run(mlflow.tracking_uri, experiment, mlflow.artifact_location, params, tags)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        end_mlflow_run(run_id, status)


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics to ``run_id`` (NaN-free, names sanitised for MLflow).

    A repeat (a retried task) appends the same values again at the same step: the metric's value is unchanged."""
    from mlflow.entities import Metric

    from mlflow import MlflowClient

    now = int(time.time() * 1000)
    batch = [
        Metric(key.replace("@", "_"), float(value), now, step or 0) for key, value in metrics.items() if value == value
    ]  # skip NaN
    for i in range(0, len(batch), 1000):
        MlflowClient().log_batch(run_id, metrics=batch[i : i + 1000])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a local file to the run's artifacts. A repeat overwrites the same artifact path: harmless."""
    from mlflow import MlflowClient

    MlflowClient().log_artifact(run_id, str(path), artifact_path)


def log_dict(run_id: str, data: Any, artifact_file: str) -> None:
    """Write ``data`` as JSON (or YAML, by extension) to the run's ``artifact_file``; a repeat overwrites it."""
    from mlflow import MlflowClient

    MlflowClient().log_dict(run_id, data, artifact_file)


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Flatten nested dicts to ``a.b.c`` keys (for MLflow params)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}
