"""Teacher flow: validate -> train on hard labels -> evaluate -> register as ``challenger`` -> gate -> ``champion``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kdflow.config import TeacherConfig, load_config
from kdflow.registry import CHAMPION
from tasks.data import validate_inputs
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.registry import register_teacher
from tasks.tracking import flatten, mlflow_run
from tasks.train import train_teacher


@flow(name="train-teacher", log_prints=True)
def teacher_flow(config_path: str) -> dict[str, Any]:
    """Train a teacher from the config and register it so distillation can name it by ``models:/`` URI; it
    becomes ``cfg.alias`` only if it passes ``cfg.gate`` (``result["promoted"]``), else stays ``challenger``."""
    cfg = load_config(config_path, TeacherConfig)
    check_outputs(cfg, ("mlflow",), device=True)  # fail before compute: every output writable
    params = flatten("", cfg.model_dump(mode="json"))
    with mlflow_run(cfg.mlflow, cfg.experiment, params, {"kdflow.flow": "train-teacher"}) as run_id:
        datasets = validate_inputs(cfg.data, cfg.model, with_transfer=False, run_id=run_id, validation=cfg.validation)
        model, training = train_teacher(
            cfg.model, cfg.train, cfg.data.num_classes, datasets, run_id, cfg.store, cfg.device
        )
        result = register_teacher(model, datasets, cfg.registry_name, cfg.alias, run_id, training, cfg.gate)
        if result["promote"] and cfg.alias == CHAMPION:  # gate passed: the serialized, SLA-checked move
            result["promotion"] = promote_version(
                cfg.registry_name, result["version"], result["reason"], "train-teacher-flow"
            )
        return {**result, "promoted": result["promote"]}
