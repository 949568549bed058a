"""Born-again self-distillation (Furlanello et al. 2018): validate -> teacher logits (once) -> generation 1 (the
normal student) -> its logits stored -> generation 2 learns from them -> ... -> every generation registered with its
lineage -> the selected one gated -> challenger -> promoted -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.transactions import transaction

from flows.distill import served_candidate, teacher_ensemble
from kdflow.config import DistillConfig, load_config
from kdflow.data import Datasets
from kdflow.ensemble import TeacherEnsemble
from kdflow.precompute import TeacherOutputs
from kdflow.report import DistillReport
from kdflow.self_distill import Generation, generation_config, select_generation, self_distill_section
from tasks.data import validate_inputs
from tasks.evaluate import fit_cascade_threshold
from tasks.methods import child_run, publish_method_report
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.registry import reference_profile, sla_gate
from tasks.self_distill import record_selection, register_generation, store_generation_logits, summarize_generation
from tasks.tracking import flatten, mlflow_run
from tasks.train import train_student


@flow(name="self-distill", log_prints=True)
def self_distill_flow(config_path: str) -> dict[str, Any]:
    """Train ``self_distill.generations`` born-again generations of ``student`` (generation 1 from the registered
    teacher(s), each later one from the previous one's stored logits), register each with its lineage, and gate,
    make challenger and promote the one ``self_distill.select`` names. One MLflow run for the flow, one nested run per
    generation; one Prefect transaction (a failed run withdraws the versions it registered unless champion)."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("store", "reports", "mlflow"), device=True)  # fail before compute: every output writable
    name, rule = cfg.registry.student_name, cfg.self_distill.select
    params = flatten("", cfg.model_dump(mode="json"))
    with mlflow_run(cfg.mlflow, cfg.registry.experiment, params, {"kdflow.flow": "self-distill"}) as run_id:
        with transaction():
            datasets = validate_inputs(
                cfg.data, cfg.student, cfg.store.endpoint_url, run_id=run_id, validation=cfg.validation
            )
            # the registered teacher(s): what every generation is measured against
            outs, reference = teacher_ensemble(cfg, datasets)
            parent, parent_outs, generations = reference, outs, []
            for _ in range(cfg.self_distill.generations):
                if generations:  # generation k+1 learns from generation k's logits, stored like a teacher's
                    parent, parent_outs = store_generation_logits(cfg, generations[-1], datasets)
                generations.append(train_generation(cfg, generations, parent, parent_outs, reference, datasets, run_id))
            chosen = select_generation(generations, rule)
            cascade = fit_cascade_threshold(
                chosen.model_uri, cfg.serving.runtime, datasets.val, reference.eval_logits["val"],
                cfg.serving.cascade, chosen.run_id,
            )  # fmt: skip
            served = chosen.calibration.served
            gate = sla_gate(
                chosen.evaluation, cfg.sla, name, datasets.test, chosen.run_id, served, datasets.recent_labeled
            )
            tags = {
                **(cascade.tags() if cascade else {}),
                **({"sla_alert": gate.decision.alert} if gate.decision.alert else {}),
            }
            keep = gate.passed or cfg.registry.register_failed_candidates or gate.decision.alert is not None
            registration = record_selection(generations, chosen, rule, tags, keep, run_id)
            promotion = (
                promote_version(name, str(chosen.version), gate.decision.reason, "self-distill-flow")
                if gate.decision.promote
                else None
            )
            report = DistillReport(
                name, chosen.run_id, reference, outs, chosen.training, chosen.calibration, chosen.evaluation, gate,
                registration, chosen.provenance, promotion, cascade,
            )  # fmt: skip
            section = self_distill_section(generations, chosen, rule, run_id)
            return publish_method_report(report, {"self_distill": section}, cfg.output_dir, run_id)


def train_generation(
    cfg: DistillConfig,
    previous: list[Generation],
    parent: TeacherEnsemble,
    parent_outs: list[TeacherOutputs],
    reference: TeacherEnsemble,
    datasets: Datasets,
    flow_run_id: str,
) -> Generation:
    """The generation after ``previous`` in its own MLflow run nested under the flow's: distil a fresh student from
    ``parent``'s stored logits, calibrate it, log its served artifact, evaluate that against the registered
    teacher(s) ``reference``, register it with its lineage and SLA record (no alias)."""
    number = len(previous) + 1
    tags = {"kdflow.flow": "self-distill", "kdflow.generation": str(number), "kdflow.parent_uri": parent.primary.uri}
    gen_cfg = generation_config(cfg, number)
    with child_run(cfg.mlflow, flow_run_id, f"generation-{number}", tags, {"train.seed": gen_cfg.train.seed}) as run_id:
        model, training = train_student(gen_cfg, parent, datasets, run_id)
        calibration, model_uri, evaluation = served_candidate(cfg, model, datasets, reference, run_id)
        generation = summarize_generation(
            cfg, previous[-1] if previous else None, run_id, model_uri, parent, parent_outs, datasets, training,
            calibration, evaluation,
        )  # fmt: skip
        ref = datasets.reference  # what drift checks compare production traffic with, should it become champion
        profile = reference_profile(calibration.served, ref, reference.eval_logits.get(ref.name), cfg.drift.psi_bins)
        return register_generation(generation, cfg.self_distill.generations, flow_run_id, profile)
