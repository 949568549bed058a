"""Born-again tasks: a generation's logits stored as a teacher's, its summary, its registration with lineage tags,
and the selection of the generation that goes on to the gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger
from prefect.transactions import get_transaction

from kdflow import self_distill as born_again
from kdflow.config import DistillConfig
from kdflow.data import Dataset
from kdflow.ensemble import TeacherEnsemble
from kdflow.evaluation import Calibration, Evaluation
from kdflow.lineage import register_with_record
from kdflow.precompute import TeacherOutputs
from kdflow.report import Registration
from kdflow.self_distill import Generation
from kdflow.train import TrainResult
from tasks import kdflow_task
from tasks.logits import store_retries
from tasks.registry import withdraw_on_rollback
from tasks.tracking import log_metrics


@kdflow_task(name="store-generation-logits", **store_retries)
def store_generation_logits(
    cfg: DistillConfig, generation: Generation, datasets: Mapping[str, Dataset]
) -> tuple[TeacherEnsemble, list[TeacherOutputs]]:
    """:func:`kdflow.self_distill.store_generation_logits`: the registered ``generation``'s raw logits on every split
    in the logit store (``logits/<student name>/v<version>/...``, reused when complete), read back as the next
    generation's one-teacher ensemble."""
    ensemble, outputs = born_again.store_generation_logits(cfg, generation.calibration.served, generation.ref, datasets)
    done = ", ".join(f"{n} {'reused' if s.reused else 'stored'}" for n, s in outputs.stats.items())
    get_run_logger().info("generation %d (%s) logits: %s", generation.number, generation.ref.uri, done)
    return ensemble, [outputs]


@kdflow_task(name="summarize-generation")
def summarize_generation(
    cfg: DistillConfig, previous: Generation | None, run_id: str, model_uri: str, parent: TeacherEnsemble,
    parent_outputs: list[TeacherOutputs], datasets: Mapping[str, Dataset], training: TrainResult,
    calibration: Calibration, evaluation: Evaluation,
) -> Generation:  # fmt: skip
    """:func:`kdflow.self_distill.summarize_generation`: SLA checks, served validation accuracy, agreement with the
    parent; logged to the generation's run."""
    g = born_again.summarize_generation(
        cfg, previous, run_id, model_uri, parent, parent_outputs, datasets, training, calibration, evaluation
    )
    row = g.summary()
    log_metrics(
        run_id, {k: float(row[k]) for k in ("generation", "val_accuracy", "parent_agreement", "teacher_agreement")}
    )
    get_run_logger().info(
        "generation %d: val accuracy %.4f, test accuracy %.4f, ECE %.4f, agreement teacher %.4f parent %.4f, SLAs %s",
        g.number, g.val_accuracy, row["test_accuracy"], row["test_ece"], row["teacher_agreement"], g.parent_agreement,
        "passed" if g.sla_passed else "FAILED",
    )  # fmt: skip
    return g


@kdflow_task(name="register-generation", retries=1, retry_delay_seconds=2)
def register_generation(
    generation: Generation, generations: int, flow_run_id: str, profile: dict[str, Any]
) -> Generation:
    """:func:`kdflow.lineage.register_with_record`: register the generation (every one, passed its SLAs or not: the
    next learns from it) with its provenance, lineage tags and SLA record, no alias. Idempotent under retries;
    withdrawn again if the flow's transaction fails (:func:`tasks.registry.withdraw_on_rollback`)."""
    tags = {**generation.provenance, **generation.lineage_tags(generations, flow_run_id)}
    _, version = register_with_record(
        generation.name, generation.run_id, generation.model_uri, generation.checks, tags, profile
    )
    get_transaction().set("registered", (generation.name, version))
    get_run_logger().info("registered generation %d as %s version %s", generation.number, generation.name, version)
    return born_again.with_version(generation, version)


register_generation.on_rollback(withdraw_on_rollback)


@kdflow_task(name="record-selection", retries=1, retry_delay_seconds=2)
def record_selection(
    generations: list[Generation], chosen: Generation, rule: str, tags: dict[str, Any], challenger: bool,
    flow_run_id: str,
) -> Registration:  # fmt: skip
    """:func:`kdflow.self_distill.record_selection`: tag each generation selected or not, make the chosen one
    ``challenger`` when ``challenger``; each generation's figures go to the flow's MLflow run as ``generation_*``
    metrics (step: its number), so the UI plots them against the generation."""
    aliases = born_again.record_selection(generations, chosen, rule, tags, challenger)
    figures = ("val_accuracy", "test_accuracy", "test_ece", "teacher_agreement", "parent_agreement")
    for g in generations:
        row = g.summary()
        log_metrics(flow_run_id, {f"generation_{k}": float(row[k]) for k in figures}, step=g.number)
    log_metrics(flow_run_id, {"selected_generation": float(chosen.number)})
    get_run_logger().info("generation %d (version %s) selected by %s", chosen.number, chosen.version, rule)
    return Registration(chosen.name, chosen.version, aliases, chosen.model_uri)
