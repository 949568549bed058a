"""The distillation flow: validate -> teacher logits (once) -> train -> calibrate -> evaluate -> gate -> register
-> report -> promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kdflow.config import DistillConfig, RecentTraffic, load_config, with_recent
from tasks.data import validate_inputs
from tasks.evaluate import calibrate, evaluate
from tasks.logits import combine_teachers, load_teacher_logits, precompute_teacher_logits, resolve_teacher
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.registry import (describe_provenance, publish_report, reference_profile, register_student,
                            sla_gate, withdraw_version)
from tasks.tracking import end_mlflow_run, flatten, start_mlflow_run
from tasks.train import train_student


@flow(name="distill", log_prints=True)
def distill_flow(config_path: str, recent: RecentTraffic | None = None) -> dict[str, Any]:
    """Distil the registered teacher(s) named in the config into a calibrated, gated, registered student;
    ``recent`` (the retrain flow) adds recent production traffic to the transfer set and the gate.

    Promotion is the very last step; a run that fails after registering withdraws its version again."""
    cfg = load_config(config_path, DistillConfig)
    cfg = with_recent(cfg, recent) if recent else cfg
    check_outputs(cfg, ("store", "reports", "mlflow"))  # fail before compute: every output writable
    name = cfg.registry.student_name
    run_id = start_mlflow_run(cfg.mlflow.tracking_uri, cfg.registry.experiment, cfg.mlflow.artifact_location,
                              flatten("", cfg.model_dump(mode="json")), {"kdflow.flow": "distill"})
    status, registration = "FAILED", {}
    try:
        datasets = validate_inputs(cfg.data, cfg.student, cfg.store.endpoint_url, run_id=run_id,
                                   validation=cfg.validation)
        teachers = [resolve_teacher(uri) for uri in cfg.teacher_uris]
        teacher_outs = [precompute_teacher_logits(cfg, t, datasets) for t in teachers]
        ensemble = combine_teachers(cfg, teachers, [load_teacher_logits(cfg, t, datasets) for t in teachers],
                                    [out.profile for out in teacher_outs], datasets)
        model, training = train_student(cfg, ensemble, datasets, run_id)
        served, calibration = calibrate(model, datasets["val"], cfg.calibration, run_id)
        evaluation = evaluate(served, datasets["test"], ensemble.eval_logits["test"], ensemble.profile,
                              cfg.data.num_classes, cfg.calibration.n_bins, cfg.evaluation, run_id)
        checks, decision = sla_gate(evaluation, cfg.sla, name, datasets["test"], run_id, served,
                                    datasets.get("recent_labeled"))
        provenance = describe_provenance(cfg, ensemble, datasets, teacher_outs, calibration)
        reference = "recent_labeled" if "recent_labeled" in datasets else "val"  # a retrain: the traffic it serves
        profile = reference_profile(served, datasets[reference], ensemble.eval_logits.get(reference), cfg.drift.psi_bins)
        registration = register_student(served, datasets["test"].x[:5], name, run_id, checks,
                                        cfg.registry.register_failed_candidates, provenance, profile)
        report = publish_report(cfg, run_id, ensemble, teacher_outs, training, calibration, evaluation, checks,
                                decision, registration, provenance)
        if decision.promote and registration["version"]:
            report["promotion"] = promote_version(name, registration["version"], decision.reason, "distill-flow")
            report["registration"] = {**registration, "aliases": [*registration["aliases"], "champion"]}
        status = "FINISHED"
        return report
    except BaseException as exc:
        if registration.get("version"):
            withdraw_version(name, registration["version"], f"the run failed: {exc!r}")
        raise
    finally:
        end_mlflow_run(run_id, status)
