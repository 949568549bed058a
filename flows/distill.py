"""The distillation flow: validate -> teacher logits (once) -> train -> calibrate -> log the served artifact ->
evaluate it and fit its cascade threshold -> gate -> register that artifact -> promote -> report."""

from __future__ import annotations

from typing import Any, NamedTuple

from prefect import flow
from prefect.transactions import transaction
from torch import nn

from kdflow.artifact import ServedSpec
from kdflow.config import DistillConfig, RecentTraffic, load_config, with_recent
from kdflow.data import Datasets
from kdflow.ensemble import TeacherEnsemble
from kdflow.evaluation import Calibration, Evaluation
from kdflow.precompute import TeacherOutputs
from kdflow.report import DistillReport, describe_provenance
from kdflow.train import TrainResult
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
    check_outputs(cfg, ("store", "reports", "mlflow"), device=True)  # fail before compute: every output writable
    params = flatten("", cfg.model_dump(mode="json"))
    with mlflow_run(cfg.mlflow, cfg.registry.experiment, params, {"kdflow.flow": "distill"}) as run_id:
        with transaction():
            datasets = validate_inputs(
                cfg.data, cfg.student, cfg.store.endpoint_url, run_id=run_id, validation=cfg.validation
            )
            teacher_outs, ensemble = teacher_ensemble(cfg, datasets)
            model, training = train_student(cfg, ensemble, datasets, run_id)
            report = gate_and_register(cfg, model, training, ensemble, teacher_outs, datasets, run_id, "distill-flow")
            return publish_report(report, cfg.output_dir)


def teacher_ensemble(cfg: DistillConfig, datasets: Datasets) -> tuple[list[TeacherOutputs], TeacherEnsemble]:
    """The registered teacher(s) of ``teacher_uris``: each one's logits precomputed into its store (once: a
    stored key is reused), loaded back and combined by ``teacher_weighting`` into the soft targets at
    ``train.temperature``."""
    teachers = [resolve_teacher(uri, cfg.mlflow.tracking_uri) for uri in cfg.teacher_uris]
    outs = [precompute_teacher_logits(cfg, t, datasets) for t in teachers]
    ensemble = combine_teachers(
        [load_teacher_logits(cfg, t, datasets) for t in teachers],
        [out.profile for out in outs],
        datasets.val,
        cfg.teacher_weighting,
        cfg.train.temperature,
    )
    return outs, ensemble


class ServedCandidate(NamedTuple):
    """A trained student as it will be served: calibrated, logged as the served artifact, and that artifact
    evaluated."""

    calibration: Calibration
    model_uri: str
    evaluation: Evaluation


def served_candidate(
    cfg: DistillConfig, model: nn.Module, datasets: Datasets, reference: TeacherEnsemble, run_id: str
) -> ServedCandidate:
    """Calibrate ``model`` on ``datasets.selection`` (the validation split; a retrain's recent labeled rows set
    aside for it), log the served artifact (not yet registered) and evaluate
    THAT artifact, loaded back in ``serving.runtime``, on the test split against ``reference`` (the teacher logits
    the student is measured against): what the SLA gate judges is what will be served."""
    calibration = calibrate(model, datasets.selection, cfg.calibration, run_id, cfg.device)
    served = calibration.served
    spec = ServedSpec.of(
        cfg.student, datasets.input_shape, cfg.data.num_classes, calibration.temperature, calibration.map_kind
    )
    model_uri = log_served_student(served, spec, datasets.test.x[:5], run_id)
    evaluation = evaluate(
        model_uri, cfg.serving.runtime, served, datasets.test, reference.eval_logits["test"], reference.profile,
        cfg.calibration.n_bins, cfg.evaluation, run_id,
    )  # fmt: skip
    return ServedCandidate(calibration, model_uri, evaluation)


def gate_and_register(
    cfg: DistillConfig,
    model: nn.Module,
    training: TrainResult,
    ensemble: TeacherEnsemble,
    teacher_outs: list[TeacherOutputs],
    datasets: Datasets,
    run_id: str,
    actor: str,
    provenance_extra: dict[str, Any] | None = None,
) -> DistillReport:
    """Every step after training (the distill flow's, and the online flow's for its co-trained student): the
    :func:`served_candidate`, its cascade threshold, the SLA gate, registration (``challenger``) with provenance
    (plus ``provenance_extra``) and reference profile, and the promotion ``actor`` records."""
    name = cfg.registry.student_name
    calibration, model_uri, evaluation = served_candidate(cfg, model, datasets, ensemble, run_id)
    served = calibration.served
    selection = datasets.selection
    cascade = fit_cascade_threshold(
        model_uri, cfg.serving.runtime, selection, ensemble.eval_logits[selection.name], cfg.serving.cascade, run_id
    )
    gate = sla_gate(evaluation, cfg.sla, name, datasets.test, run_id, served, datasets.recent_labeled)
    provenance = {
        **describe_provenance(cfg, ensemble, datasets, teacher_outs, calibration.temperature),
        **(provenance_extra or {}),
    }
    reference = datasets.reference  # what drift checks will compare production traffic with
    profile = reference_profile(served, reference, ensemble.eval_logits.get(reference.name), cfg.drift.psi_bins)
    tags = {
        **provenance,
        **(cascade.tags() if cascade else {}),
        **({"sla_alert": gate.decision.alert} if gate.decision.alert else {}),
    }
    keep = cfg.registry.register_failed_candidates or gate.decision.alert is not None
    registration = register_student(model_uri, name, run_id, gate.checks, keep, tags, profile)
    promotion = (
        promote_version(name, registration.version, gate.decision.reason, actor)
        if gate.decision.promote and registration.version
        else None
    )
    return DistillReport(
        name, run_id, ensemble, teacher_outs, training, calibration, evaluation, gate, registration, provenance,
        promotion, cascade,
    )  # fmt: skip
