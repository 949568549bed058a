"""The distillation flow: validate -> teacher logits (once) -> train -> calibrate -> log the served artifact ->
evaluate it and fit its cascade threshold -> gate -> register that artifact -> promote -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.transactions import transaction

from kdflow.artifact import ServedSpec
from kdflow.config import DistillConfig, RecentTraffic, load_config, with_recent
from kdflow.report import DistillReport, describe_provenance
from tasks.data import validate_inputs
from tasks.evaluate import calibrate, evaluate, fit_cascade_threshold
from tasks.logits import combine_teachers, load_teacher_logits, precompute_teacher_logits, resolve_teacher
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.registry import log_served_student, publish_report, reference_profile, register_student, sla_gate
from tasks.tracking import flatten, mlflow_run
from tasks.train import train_student


@flow(name="distill", log_prints=True)
def distill_flow(config_path: str, recent: RecentTraffic | None = None) -> dict[str, Any]:
    """Distil the registered teacher(s) named in the config into a calibrated, gated, registered student;
    ``recent`` (the retrain flow) adds recent production traffic to the transfer set and the gate.

    Everything after the MLflow run starts is one Prefect transaction: a run that fails withdraws the version it
    registered unless it is already champion (``register_student``'s rollback hook). The report is written
    once, last, after promotion."""
    cfg = load_config(config_path, DistillConfig)
    cfg = with_recent(cfg, recent) if recent else cfg
    check_outputs(cfg, ("store", "reports", "mlflow"))  # fail before compute: every output writable
    name = cfg.registry.student_name
    params = flatten("", cfg.model_dump(mode="json"))
    with mlflow_run(cfg.mlflow, cfg.registry.experiment, params, {"kdflow.flow": "distill"}) as run_id:
        with transaction():
            datasets = validate_inputs(
                cfg.data, cfg.student, cfg.store.endpoint_url, run_id=run_id, validation=cfg.validation
            )
            teachers = [resolve_teacher(uri, cfg.mlflow.tracking_uri) for uri in cfg.teacher_uris]
            teacher_outs = [precompute_teacher_logits(cfg, t, datasets) for t in teachers]
            ensemble = combine_teachers(
                [load_teacher_logits(cfg, t, datasets) for t in teachers],
                [out.profile for out in teacher_outs],
                datasets.val,
                cfg.teacher_weighting,
                cfg.train.temperature,
            )
            model, training = train_student(cfg, ensemble, datasets, run_id)
            calibration = calibrate(model, datasets.val, cfg.calibration, run_id)
            served = calibration.served
            spec = ServedSpec.of(
                cfg.student, datasets.input_shape, cfg.data.num_classes, calibration.temperature, calibration.map_kind
            )
            # The SLA gate judges the artifact that will be served: logged (not yet registered), loaded back.
            model_uri = log_served_student(served, spec, datasets.test.x[:5], run_id)
            runtime = cfg.serving.runtime
            evaluation = evaluate(
                model_uri,
                runtime,
                served,
                datasets.test,
                ensemble.eval_logits["test"],
                ensemble.profile,
                cfg.calibration.n_bins,
                cfg.evaluation,
                run_id,
            )
            cascade = fit_cascade_threshold(
                model_uri, runtime, datasets.val, ensemble.eval_logits["val"], cfg.serving.cascade, run_id
            )
            gate = sla_gate(evaluation, cfg.sla, name, datasets.test, run_id, served, datasets.recent_labeled)
            provenance = describe_provenance(cfg, ensemble, datasets, teacher_outs, calibration.temperature)
            reference = datasets.reference  # what drift checks will compare production traffic with
            profile = reference_profile(served, reference, ensemble.eval_logits.get(reference.name), cfg.drift.psi_bins)
            registration = register_student(
                model_uri,
                name,
                run_id,
                gate.checks,
                cfg.registry.register_failed_candidates or gate.decision.alert is not None,
                {
                    **provenance,
                    **(cascade.tags() if cascade else {}),
                    **({"sla_alert": gate.decision.alert} if gate.decision.alert else {}),
                },
                profile,
            )
            promotion = (
                promote_version(name, registration.version, gate.decision.reason, "distill-flow")
                if gate.decision.promote and registration.version
                else None
            )
            return publish_report(
                DistillReport(
                    name,
                    run_id,
                    ensemble,
                    teacher_outs,
                    training,
                    calibration,
                    evaluation,
                    gate,
                    registration,
                    provenance,
                    promotion,
                    cascade,
                ),
                cfg.output_dir,
            )
