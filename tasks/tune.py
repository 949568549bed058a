"""Tuning tasks: the trials' inputs read once, the study created once, one task per worker, the report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from prefect import get_run_logger

from kdflow.config import DistillConfig, TuneConfig
from kdflow.data import Dataset
from kdflow.ensemble import TeacherEnsemble
from kdflow.tune import (
    TrialRuns,
    TuneData,
    load_tune_data,
    make_objective,
    open_study,
    run_trials,
    summary,
    write_overlay,
    write_summary,
)
from kdflow.tune_report import write_report_html
from tasks import kdflow_task
from tasks.logits import store_retries
from tasks.tracking import log_artifact, log_metrics

Storage = str | optuna.storages.BaseStorage | None


@kdflow_task(name="load-tune-data", **store_retries)
def load_tune_inputs(
    cfg: DistillConfig, ensemble: TeacherEnsemble, datasets: Mapping[str, Dataset], subset: float | None
) -> TuneData:
    """:func:`kdflow.tune.load_tune_data`: every teacher's stored logits for the training splits and validation, read
    once for all trials; a stratified ``subset`` of the training rows when given."""
    data = load_tune_data(cfg, ensemble.teachers, ensemble.weights, datasets, subset, cfg.tune.seed)
    get_run_logger().info("trials train on %s rows (subset %s)", data.rows, subset or "none: every row")
    return data


@kdflow_task(name="create-study", retries=2, retry_delay_seconds=2)
def create_study(name: str, storage: Storage, tune: TuneConfig) -> str:
    """Create the study (or find it) once, before the workers load it: they must not race to create its tables."""
    study = open_study(name, storage, tune)
    get_run_logger().info("study %s: %d trial(s) already in it", name, len(study.trials))
    return study.study_name


@kdflow_task(name="tune-worker")
def tune_worker(
    cfg: DistillConfig, data: TuneData, storage: Storage, study: str, n_trials: int, worker: int, parent_run_id: str
) -> list[int]:
    """Run ``n_trials`` trials of the shared study (:func:`kdflow.tune.run_trials`), each an MLflow run nested under
    ``parent_run_id``; the trial numbers it ran."""
    logger = get_run_logger()
    objective = make_objective(
        cfg,
        data,
        TrialRuns(cfg.mlflow.tracking_uri, parent_run_id, study),
        lambda m: logger.info("worker %d %s", worker, m),
    )
    ran = run_trials(open_study(study, storage, cfg.tune, worker), objective, n_trials)
    logger.info("worker %d ran trials %s", worker, ran)
    return ran


@kdflow_task(name="publish-tune-report")
def publish_tune_report(cfg: DistillConfig, storage: Storage, study: str, parent_run_id: str) -> dict[str, Any]:
    """Every trial to ``<output_dir>/tune/<run id>/trials.json`` and a readable ``report.html``, the best feasible trial's settings to ``best.yaml``
    there (a partial distill config), both attached to the tuning run with the counts and the best figures."""
    loaded = optuna.load_study(study_name=study, storage=storage)
    result = summary(loaded, cfg.sla.max_ece)
    out = Path(cfg.output_dir).resolve() / "tune" / parent_run_id
    paths = {"trials": str(write_summary(out, result)), "report": str(write_report_html(out, result))}
    if result["best"] is not None:
        paths["overlay"] = str(write_overlay(out / "best.yaml", loaded.best_trial, study))
        best = {"best_val_accuracy": result["best"]["value"], "best_val_ece": result["best"]["val_ece"]}
        log_metrics(parent_run_id, {**best, "best_trial": result["best"]["number"]})
    for path in paths.values():
        log_artifact(parent_run_id, path, "tune")
    counts = {f"trials_{s.lower()}": n for s, n in result["states"].items()}
    log_metrics(parent_run_id, {"trials": result["trials"], "trials_infeasible": len(result["infeasible"]), **counts})
    return {**{k: v for k, v in result.items() if k != "table"}, "run_id": parent_run_id, "paths": paths}
