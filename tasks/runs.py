"""The bookkeeping around a flow body that owns an MLflow run and may register a model version."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kdflow.config import MlflowConfig
from tasks.registry import withdraw_version
from tasks.tracking import end_mlflow_run, start_mlflow_run


@dataclass
class TrackedRun:
    """The flow's MLflow run, and the version it registered but has not promoted yet (if any)."""

    run_id: str
    model_name: str
    unpromoted: str | None = None

    def registered(self, version: str | None) -> None:
        """``version`` was registered: withdraw it if the flow fails before :meth:`promoted`."""
        self.unpromoted = version

    def promoted(self) -> None:
        """The registered version is champion (or meant to stay): keep it whatever happens next."""
        self.unpromoted = None


@contextlib.contextmanager
def tracked_run(mlflow: MlflowConfig, experiment: str, model_name: str, params: dict[str, Any],
                tags: dict[str, str]) -> Iterator[TrackedRun]:
    """Start the flow's MLflow run (:func:`tasks.tracking.start_mlflow_run`) and close it FINISHED when the body
    completes, FAILED when it raises; then a version the body registered and did not promote is withdrawn
    (:func:`tasks.registry.withdraw_version`): a failed flow leaves no registered model."""
    run = TrackedRun(start_mlflow_run(mlflow.tracking_uri, experiment, mlflow.artifact_location, params, tags),
                     model_name)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except BaseException as exc:
        if run.unpromoted:
            withdraw_version(model_name, run.unpromoted, f"the {tags.get('kdflow.flow', 'flow')} run failed: {exc!r}")
        raise
    finally:
        end_mlflow_run(run.run_id, status)
