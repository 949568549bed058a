"""Online (mutual) distillation for a domain with no teacher (Zhang et al. 2018, "Deep Mutual Learning"): validate ->
co-train teacher and student -> register the teacher (gated, promoted) -> store its logits -> calibrate the student ->
log the served artifact -> evaluate it and fit its cascade threshold -> gate -> register -> promote -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.transactions import transaction

from flows.distill import gate_and_register
from kdflow.config import DistillConfig, load_config
from kdflow.config_methods import online_teacher
from kdflow.registry import CHAMPION
from tasks.data import validate_inputs
from tasks.logits import combine_teachers, load_teacher_logits, precompute_teacher_logits, resolve_teacher
from tasks.methods import child_run, publish_method_report
from tasks.online import co_train, register_cotrained_teacher
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.tracking import flatten, mlflow_run


@flow(name="distill-online", log_prints=True)
def online_flow(config_path: str) -> dict[str, Any]:
    """Co-train ``online.teacher`` and ``student`` on the labeled data (no registered teacher needed), register the
    teacher as ``teacher_uri``'s model (from a nested MLflow run; its alias when it passes ``online.teacher_gate``)
    with its logits stored for later runs, then calibrate, gate, register and promote the student as the distill flow
    does, measured against that teacher. One Prefect transaction: a failed run withdraws what it registered unless
    it is already champion."""
    cfg = load_config(config_path, DistillConfig)
    online, teacher_name, alias = online_teacher(cfg, config_path)  # one clear error before any compute
    check_outputs(cfg, ("store", "reports", "mlflow"), device=True)
    params = flatten("", cfg.model_dump(mode="json"))
    with mlflow_run(cfg.mlflow, cfg.registry.experiment, params, {"kdflow.flow": "distill-online"}) as run_id:
        with transaction():
            datasets = validate_inputs(
                cfg.data, cfg.student, cfg.store.endpoint_url, run_id=run_id, validation=cfg.validation
            )
            pair = co_train(cfg, datasets, run_id)
            lineage = {
                "co_trained_with": cfg.registry.student_name,
                "online_run_id": run_id,
                "online_beta": online.beta,
                "online_teacher_lr_ratio": online.teacher_lr_ratio,
            }
            with child_run(cfg.mlflow, run_id, "co-trained-teacher", {"kdflow.flow": "distill-online"}) as teacher_run:
                teacher = register_cotrained_teacher(pair, datasets, teacher_name, alias, teacher_run, online, lineage)
            if teacher["promote"] and alias == CHAMPION:  # gate passed: the serialized, recorded move
                teacher["promotion"] = promote_version(
                    teacher_name, teacher["version"], teacher["reason"], "online-flow"
                )
            ref = resolve_teacher(f"models:/{teacher_name}/{teacher['version']}", cfg.mlflow.tracking_uri)
            outs = [precompute_teacher_logits(cfg, ref, datasets)]  # stored for evaluation and for later runs
            ensemble = combine_teachers(
                [load_teacher_logits(cfg, ref, datasets)],
                [outs[0].profile],
                datasets.val,
                "mean",
                cfg.train.temperature,
            )
            # the distill flow's steps after training, measured against the co-trained teacher; DML's KL is at T = 1
            extra = {"distillation": "online", "training_temperature": 1.0}
            report = gate_and_register(
                cfg, pair.student, pair.result.student, ensemble, outs, datasets, run_id, "online-flow", extra
            )
            section = {
                "beta": online.beta,
                "teacher_lr_ratio": online.teacher_lr_ratio,
                "epochs": len(pair.result.student.history),
                "teacher": {**teacher, "promoted": teacher["promote"]},  # champion promoted above; another alias: set
            }
            return publish_method_report(report, {"online": section}, cfg.output_dir, run_id)
