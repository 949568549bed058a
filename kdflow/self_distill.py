"""Born-again self-distillation (Furlanello, Lipton, Tschannen, Itti & Anandkumar 2018, "Born-Again Neural
Networks", ICML): students of one architecture trained in sequence, each from the previous one's predictions.

Generation 1 is the normal distilled student (from the registered teacher). Generation k+1 has the same
architecture, a fresh initialisation (seed ``train.seed + k``) and the same loss and settings, and learns from
generation k's raw logits, stored through the logit store exactly like a teacher's: under
``logits/<registry.student_name>/v<generation k's version>/<data fingerprint>-<settings>/`` — distinct from the
teacher's stores and reused by any later run that names that version as its teacher.

Every generation is registered (lineage tags below); the one ``self_distill.select`` names goes on to the gate and
promotion (:class:`~kdflow.config_methods.SelfDistillConfig`). Entry points: :func:`born_again_step` (one
generation from a trained parent, library only) and ``flows.self_distill.self_distill_flow`` (the whole run).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from kdflow import metrics, registry
from kdflow.config import DistillConfig
from kdflow.data import Dataset
from kdflow.device import resolve_device
from kdflow.ensemble import TeacherEnsemble, combine_teachers
from kdflow.evaluation import Calibration, Evaluation, module_probabilities
from kdflow.logits import teacher_profile_key
from kdflow.precompute import TeacherOutputs, logit_stores, read_eval_logits, store_spec
from kdflow.registry import ModelRef
from kdflow.report import describe_provenance
from kdflow.sla import SLACheck, check_slas
from kdflow.store import open_store
from kdflow.student import prepare_student_training
from kdflow.train import TrainResult, fit, predict_logits


def generation_config(cfg: DistillConfig, generation: int) -> DistillConfig:
    """``cfg`` for generation ``generation`` (1-based): ``train.seed + generation - 1``, so every generation starts
    from a fresh initialisation and shuffling (generation 1 is exactly the normal student)."""
    if generation < 1:
        raise ValueError(f"generations count from 1, got {generation}")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.train.seed + generation - 1})})


def generation_ref(name: str, version: str, run_id: str | None) -> ModelRef:
    """A registered generation as a teacher: ``models:/<name>/<version>`` (pinned), from run ``run_id``."""
    return ModelRef(f"models:/{name}/{version}", name, str(version), run_id)


def _split_logits(model: nn.Module, x: np.ndarray, rows: slice) -> np.ndarray:
    return predict_logits(model, x[rows])


def store_generation_logits(
    cfg: DistillConfig, model: nn.Module, ref: ModelRef, datasets: Mapping[str, Dataset]
) -> tuple[TeacherEnsemble, TeacherOutputs]:
    """Store ``model``'s raw logits (the registered generation ``ref``) on every split through the logit store, keyed
    like a teacher's (:func:`kdflow.precompute.store_spec`: ``ref``'s name and version, each split's fingerprint,
    clip, top-k) and reused when complete; store its size/speed profile beside them; read the evaluation splits
    back (verified) as a one-teacher ensemble for the next generation to learn from."""
    stores = logit_stores(cfg, ref, datasets)
    stats = {}
    for name, ds in datasets.items():
        spec = store_spec(cfg, ref, name, ds)
        stats[name] = stores[name].precompute(
            ds.ids, functools.partial(_split_logits, model, ds.x), teacher_uri=spec.teacher_uri,
            teacher_name=spec.teacher_name, teacher_version=spec.teacher_version, data_fingerprint=spec.data_fingerprint,
            dataset=name, rows_per_shard=spec.rows_per_shard, clip_value=spec.clip_value, top_k=spec.top_k,
        )  # fmt: skip
    ev, test = cfg.evaluation, datasets["test"]
    profile = metrics.profile(model, test.x, ev.latency_batches, ev.throughput_batch_size, ev.throughput_batches)
    open_store(cfg.store.root, cfg.store.endpoint_url).put(
        teacher_profile_key(ref.name, ref.version), json.dumps(profile, indent=2).encode()
    )
    logits = read_eval_logits(cfg, ref, datasets)
    ensemble = combine_teachers([logits], [profile], datasets["val"].y, "mean", cfg.train.temperature)
    outputs = TeacherOutputs(
        stats, {n: s.uri for n, s in stores.items()}, profile, any(not s.reused for s in stats.values())
    )
    return ensemble, outputs


@dataclass
class GenerationStep:
    """One born-again generation trained by :func:`born_again_step`: the model (best validation epoch), its
    training, and the parent it learned from (its stored logits as an ensemble, and what the store did)."""

    model: nn.Module
    training: TrainResult
    parent: TeacherEnsemble
    parent_outputs: TeacherOutputs


def born_again_step(
    cfg: DistillConfig, generation: int, parent: nn.Module, parent_ref: ModelRef, datasets: Mapping[str, Dataset]
) -> GenerationStep:
    """Train generation ``generation`` (>= 2) from a trained ``parent`` (generation ``generation - 1``, registered as
    ``parent_ref``): store the parent's logits (:func:`store_generation_logits`), then distil a fresh student of
    ``cfg.student`` from them, streamed as the distill flow streams a teacher's (:func:`generation_config`'s seed,
    ``cfg.train``'s loss and settings, checkpoints in the store). No Prefect, no MLflow run: the library entry point
    (the flow runs the same steps as tasks)."""
    if generation < 2:
        raise ValueError(f"generation 1 learns from the registered teacher (the distill flow); got {generation}")
    ensemble, outputs = store_generation_logits(cfg, parent, parent_ref, datasets)
    gen_cfg = generation_config(cfg, generation)
    training = prepare_student_training(gen_cfg, ensemble, datasets)
    try:
        val = datasets["val"]
        result = fit(
            training.model, training.source, val.x, val.y, gen_cfg.train, ensemble.train_logits["val"],
            progress=False, checkpoints=training.checkpoints, device=resolve_device(cfg.device),
        )  # fmt: skip
    finally:
        training.source.close()
    return GenerationStep(training.model, result, ensemble, outputs)


@dataclass(frozen=True, eq=False)
class Generation:
    """One trained, calibrated, evaluated generation (``version`` once registered), with its lineage: the model it
    learned from (``parent``: the registered teacher for generation 1) and the registered teacher at the root."""

    name: str  # the registered model (registry.student_name)
    number: int
    run_id: str
    model_uri: str
    parent: ModelRef
    root: ModelRef
    training: TrainResult
    calibration: Calibration = field(repr=False)
    evaluation: Evaluation = field(repr=False)
    checks: list[SLACheck]
    provenance: dict[str, Any]
    val_accuracy: float  # the served model's, on the validation split: what selection reads
    parent_agreement: float  # test rows where it predicts the parent's class
    version: str | None = None

    @property
    def ref(self) -> ModelRef:
        """This generation as a teacher for the next one (needs ``version``)."""
        if self.version is None:
            raise ValueError(f"generation {self.number} is not registered yet")
        return generation_ref(self.name, self.version, self.run_id)

    @property
    def sla_passed(self) -> bool:
        """Every SLA check passed."""
        return all(c.passed for c in self.checks)

    def lineage_tags(self, generations: int, flow_run_id: str) -> dict[str, Any]:
        """The version tags that record where this generation came from (``kdflow.`` is prefixed on registration)."""
        return {
            "generation": self.number,
            "generations": generations,
            "parent_uri": self.parent.uri,
            "parent_version": self.parent.version,
            "parent_run_id": self.parent.run_id or "",
            "lineage_root_uri": self.root.version_uri,
            "self_distill_run_id": flow_run_id,
        }

    def summary(self, selected: bool = False) -> dict[str, Any]:
        """One row of the report's generations table."""
        ev = self.evaluation
        return {
            "generation": self.number,
            "version": self.version,
            "run_id": self.run_id,
            "parent_uri": self.parent.uri,
            "parent_version": self.parent.version,
            "parent_run_id": self.parent.run_id,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": ev.student_accuracy,
            "test_ece": ev.student_ece,
            "teacher_agreement": 1.0 - ev.flip_rate,
            "parent_agreement": self.parent_agreement,
            "calibrated_temperature": self.calibration.temperature,
            "best_epoch": self.training.best_epoch,
            "sla_passed": self.sla_passed,
            "selected": selected,
        }


def summarize_generation(
    cfg: DistillConfig,
    previous: Generation | None,
    run_id: str,
    model_uri: str,
    parent: TeacherEnsemble,
    parent_outputs: Sequence[TeacherOutputs],
    datasets: Mapping[str, Dataset],
    training: TrainResult,
    calibration: Calibration,
    evaluation: Evaluation,
) -> Generation:
    """The generation after ``previous`` (``None``: generation 1) as a :class:`Generation`: its SLA checks
    (``cfg.sla`` on ``evaluation``, measured against the registered teacher), the served model's validation
    accuracy, its test agreement with ``parent`` (the ensemble it learned from) and its provenance."""
    val, test = datasets["val"], datasets["test"]
    probs = module_probabilities(calibration.served, test.x)
    provenance = describe_provenance(cfg, parent, datasets, list(parent_outputs), calibration.temperature)
    return Generation(
        name=cfg.registry.student_name,
        number=previous.number + 1 if previous else 1,
        run_id=run_id,
        model_uri=model_uri,
        parent=parent.primary,
        root=previous.root if previous else parent.primary,
        training=training,
        calibration=calibration,
        evaluation=evaluation,
        checks=check_slas(evaluation, cfg.sla),
        provenance=provenance,
        val_accuracy=metrics.accuracy(calibration.val_probabilities(), val.y),
        parent_agreement=1.0 - metrics.flip_rate(probs, parent.eval_logits["test"]),
    )


def with_version(generation: Generation, version: str) -> Generation:
    """``generation`` once registered as ``version``."""
    return replace(generation, version=str(version))


def select_generation(generations: Sequence[Generation], rule: str) -> Generation:
    """The generation that goes on to the gate: ``best_val``, the highest validation accuracy of the served model
    (the earliest on a tie: no later generation without a measured gain); ``last``, the final one. Never by a test
    figure: the gate's test comparison must stay unbiased."""
    if not generations:
        raise ValueError("no generation was trained")
    if rule == "last":
        return generations[-1]
    if rule == "best_val":
        return max(generations, key=lambda g: (g.val_accuracy, -g.number))
    raise ValueError(f"unknown generation selection {rule!r}; expected best_val or last")


def record_selection(
    generations: Sequence[Generation], chosen: Generation, rule: str, tags: dict[str, Any], challenger: bool
) -> tuple[str, ...]:
    """Tag every registered generation ``kdflow.generation_selected`` (True on ``chosen`` only) and
    ``kdflow.generation_select`` (the rule), add ``tags`` (the confidence-fallback fit, an SLA alert) to the chosen
    one and, when ``challenger`` (as the distill flow: it passed its SLAs, or failed ones are kept on request), make it
    ``challenger``; ``champion`` moves later, through the serialized promotion. Returns the aliases it got."""
    for g in generations:
        registry.tag_version(g.name, str(g.version), {"generation_selected": g is chosen, "generation_select": rule})
    registry.tag_version(chosen.name, str(chosen.version), tags)
    if not challenger:
        return ()
    why = f"born-again generation {chosen.number} of {len(generations)}, selected by {rule}"
    registry.ensure_alias(chosen.name, registry.CHALLENGER, str(chosen.version), reason=why, actor="self-distill-flow")
    return (registry.CHALLENGER,)


def self_distill_section(
    generations: Sequence[Generation], chosen: Generation, rule: str, flow_run_id: str
) -> dict[str, Any]:
    """The report's ``self_distill`` section: the rule, the chosen generation and one row per generation."""
    return {
        "generations": len(generations),
        "select": rule,
        "selected_generation": chosen.number,
        "selected_version": chosen.version,
        "flow_run_id": flow_run_id,
        "table": [g.summary(g is chosen) for g in generations],
    }
