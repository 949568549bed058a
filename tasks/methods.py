"""Tasks the distillation-method flows share (born-again, online): nested MLflow runs and the report with the
method's section."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.runtime import task_run

from kdflow import registry
from kdflow.config import MlflowConfig
from kdflow.lineage import open_child_run
from kdflow.report import DistillReport, to_markdown, write_report
from tasks import kdflow_task
from tasks.tracking import end_mlflow_run, log_artifact, log_metrics


@kdflow_task(name="start-child-run", retries=2, retry_delay_seconds=2)
def start_child_run(
    tracking_uri: str, parent_run_id: str, run_name: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    """:func:`kdflow.lineage.open_child_run`: an MLflow run nested under ``parent_run_id``, keyed by this task run's id
    (the same across retries), so a retry returns the run its first attempt created."""
    registry.configure_tracking(tracking_uri)
    key = task_run.get_id()
    return open_child_run(parent_run_id, f"start-child-run:{key}" if key else None, run_name, tags, params)


@contextlib.contextmanager
def child_run(
    mlflow: MlflowConfig, parent_run_id: str, run_name: str, tags: dict[str, str], params: dict[str, Any] | None = None
) -> Iterator[str]:
    """A nested MLflow run from start to end: yields its id; ends it FINISHED when the block completes, FAILED when
    it raises (then re-raises)."""
    run_id = start_child_run(mlflow.tracking_uri, parent_run_id, run_name, tags, params or {})
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        end_mlflow_run(run_id, status)


def _fetch_plots(run_id: str, directory: Path) -> None:
    """Copy run ``run_id``'s ``plots/`` PNGs into ``directory/plots`` for report.html (nothing when it has none)."""
    from mlflow.artifacts import download_artifacts

    from mlflow import MlflowClient

    if any(a.path.endswith(".png") for a in MlflowClient().list_artifacts(run_id, "plots")):
        directory.mkdir(parents=True, exist_ok=True)
        download_artifacts(run_id=run_id, artifact_path="plots", dst_path=str(directory))


@kdflow_task(name="publish-method-report")
def publish_method_report(
    report: DistillReport, sections: dict[str, Any], output_dir: str, flow_run_id: str
) -> dict[str, Any]:
    """The distill report of the model that went through the gate (:meth:`DistillReport.as_dict`, its plots from its
    own run ``report.run_id``) with the method's ``sections`` (``self_distill`` / ``online``, rendered by
    :mod:`kdflow.report_methods`) as report.json / .md / .html under ``output_dir/<flow_run_id>``, attached to the
    flow's MLflow run and as a Prefect markdown artifact; returns it with its file paths."""
    data = {**report.as_dict(), **sections}
    directory = Path(output_dir) / flow_run_id
    _fetch_plots(report.run_id, directory)
    paths = dict(zip(("json", "markdown", "html"), write_report(data, directory)))
    for path in paths.values():
        log_artifact(flow_run_id, path, "report")
    log_metrics(flow_run_id, {"gate_passed": float(report.gate.passed)})
    create_markdown_artifact(
        markdown=to_markdown(data), key="kdflow-distill-report", description=f"SLA report for {report.student_name}"
    )
    return {**data, "paths": {k: str(p.resolve()) for k, p in paths.items()}}
