"""What a student's training needs, assembled from the config: a fresh model, the streamed training input
(labeled train rows, the unlabeled transfer set and, when retraining, recent production rows, joined by id with
their stored teacher logits; with ``hard_examples.enabled`` the teacher's most uncertain rows emphasised) and its
checkpoints."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from kdflow.checkpoint import Checkpoints, training_key
from kdflow.config import DistillConfig
from kdflow.data import Dataset
from kdflow.ensemble import TeacherEnsemble, combine_logits
from kdflow.hard_examples import HardExampleSelection, select_from_stores
from kdflow.models import build_for_training, count_parameters
from kdflow.precompute import logit_stores
from kdflow.store import open_store
from kdflow.stream import StreamingSource
from kdflow.train import seed_everything


@dataclass
class StudentTraining:
    """A fresh student, the stream it learns from (close it when done), its checkpoints and, when enabled, the hard
    examples its stream emphasises."""

    model: nn.Module
    source: StreamingSource
    checkpoints: Checkpoints
    hard_examples: HardExampleSelection | None = None

    def describe(self, arch: str) -> str:
        """One line for the log: parameters, rows and row groups."""
        return (
            f"student {arch}: {count_parameters(self.model)} parameters, {len(self.source)} training rows "
            f"streamed from {len(self.source.chunks)} row groups"
        )


def prepare_student_training(
    cfg: DistillConfig, ensemble: TeacherEnsemble, datasets: Mapping[str, Dataset]
) -> StudentTraining:
    """Seed everything from ``cfg.train.seed`` first (the initial weights too: same config, same student), build the
    student (its input preprocessing fitted on the labeled train split), open the stored logits of every teacher for every split it trains on (several teachers' logits are
    combined per batch: :func:`kdflow.ensemble.combine_logits`), select the hard examples when
    ``cfg.hard_examples.enabled`` (:func:`kdflow.hard_examples.select_from_stores`, from those stored logits), and
    key its checkpoints by everything that determines the result (:func:`kdflow.checkpoint.training_key`)."""
    seed_everything(cfg.train.seed)
    model = build_for_training(cfg.student, datasets["train"].x, cfg.data.num_classes)
    per_teacher = [logit_stores(cfg, t, datasets) for t in ensemble.teachers]
    splits = [("train", cfg.data.train, True)]
    splits += [(n, getattr(cfg.data, n), False) for n in ("transfer", "recent") if getattr(cfg.data, n)]
    parts = [(name, uri, [stores[name] for stores in per_teacher], labeled) for name, uri, labeled in splits]
    combine = None
    if len(ensemble.teachers) > 1:
        combine = functools.partial(combine_logits, weights=ensemble.weights, temperature=cfg.train.temperature)
    fingerprints = {n: d.fingerprint for n, d in datasets.items()}
    versions = [t.version for t in ensemble.teachers]
    hard, extra = None, None
    if cfg.hard_examples.enabled:
        stores = {name: part_stores for name, _, part_stores, _ in parts}
        labels = {name: (datasets[name].ids, datasets[name].y) for name, _, _, labeled in parts if labeled}
        hard = select_from_stores(cfg.hard_examples, stores, ensemble.weights, cfg.data.num_classes, labels)
        extra = {"hard_examples": cfg.hard_examples.model_dump(mode="json")}
    source = StreamingSource(
        parts,
        cfg.data,
        versions,
        fingerprints,
        cfg.store.endpoint_url,
        combine=combine,
        emphasis=hard,
        prefetch=cfg.train.prefetch_buffers,
        readers=cfg.train.prefetch_readers,
    )
    teachers = [
        {
            "name": t.name,
            "version": str(t.version),
            "weight": w,
            "logit_keys": {n: s.key for n, s in sorted(st.items())},
        }
        for t, w, st in zip(ensemble.teachers, ensemble.weights, per_teacher)
    ]
    key = training_key(
        "student", cfg.student, cfg.train, cfg.data.num_classes, datasets["train"].input_shape, fingerprints, teachers,
        extra,
    )  # fmt: skip
    store = open_store(cfg.store.root, cfg.store.endpoint_url)
    return StudentTraining(model, source, Checkpoints(store, key, cfg.train.checkpoint_every_epochs), hard)
