"""The tuning flow: validate -> teacher logits (once) -> the trials' inputs -> one task per worker running its share
of the trials against the shared study -> report and best settings."""

from __future__ import annotations

from typing import Any

import optuna
from prefect import flow

from flows.distill import teacher_ensemble
from kdflow.config import DistillConfig, load_config
from kdflow.tune import check_tune_options, shares, storage_url
from tasks.data import validate_inputs
from tasks.preflight import check_outputs
from tasks.tracking import flatten, mlflow_run
from tasks.tune import create_study, load_tune_inputs, publish_tune_report, tune_worker


@flow(name="tune", log_prints=True)
def tune_flow(
    config_path: str,
    trials: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    subset: float | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Search ``tune.space`` of the config with ``trials`` trials (default ``tune.trials``) split over ``workers``
    concurrent tasks sharing the study ``study`` (default ``kdflow-tune-<run id>``) in ``storage`` (an Optuna RDB URL;
    in memory with one worker). Teacher logits are computed once, as in the distill flow; the MLflow run (tag
    ``kdflow.flow = tune``) holds one nested run per trial, the trial table and the best settings."""
    cfg = load_config(config_path, DistillConfig)
    subset = subset if subset is not None else cfg.tune.subset
    check_tune_options(storage, workers, subset)
    check_outputs(cfg, ("store", "reports", "mlflow"), device=True)
    params = {**flatten("", cfg.model_dump(mode="json")), "tune.workers": workers, "tune.subset": subset}
    with mlflow_run(cfg.mlflow, cfg.registry.experiment, params, {"kdflow.flow": "tune"}) as run_id:
        datasets = validate_inputs(
            cfg.data, cfg.student, cfg.store.endpoint_url, run_id=run_id, validation=cfg.validation
        )
        _, ensemble = teacher_ensemble(cfg, datasets)  # logits computed once, as in the distill flow
        data = load_tune_inputs(cfg, ensemble, datasets, subset)
        shared = storage_url(storage) if storage is not None else optuna.storages.InMemoryStorage()
        name = create_study(study or f"kdflow-tune-{run_id}", shared, cfg.tune)
        futures = [
            tune_worker.submit(cfg, data, shared, name, n, i, run_id)
            for i, n in enumerate(shares(trials or cfg.tune.trials, workers))
            if n
        ]
        for f in futures:
            f.result()
        return publish_tune_report(cfg, shared, name, run_id)
