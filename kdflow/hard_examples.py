"""Hard examples: the training rows the teacher is least sure of, seen more often (or weighted more) by the student.

The seed idea is "augmenting the transfer set with the teacher's high-entropy examples for rare classes". Every
figure here comes from the STORED teacher logits (:mod:`kdflow.logits`); the teacher never runs again.

1. **Entropy** of the teacher's predictive distribution at T=1 (:func:`teacher_entropy`):
   ``H(x) = -sum_c p_c ln p_c`` with ``p = softmax(z_t)``, in nats (0 for a one-hot, ``ln C`` for uniform). Several
   teachers: ``p`` is their weighted mean probability at T=1 (:func:`kdflow.ensemble.combine_logits`), what the
   evaluation calls the teacher. T=1 rather than the training T: the teacher's own uncertainty, so changing
   ``train.temperature`` (or tuning it) does not change which rows are hard.
2. **Eligible rows** (:func:`select_hard_examples`): every candidate row (``hard_examples.splits``), or with
   ``classes: rare`` only rows of a rare class — one whose share of the train labels is below ``rare_share``
   (:func:`rare_classes`); a row's class is its label on labeled rows, else the teacher's top class.
3. **Selection** (:func:`top_fraction`): the ``k = ceil(fraction * eligible)`` eligible rows of highest entropy,
   ties broken by position (split order train, transfer, recent; row order within a split), so it is deterministic.
4. **Emphasis**: ``oversample`` puts each selected row ``factor`` times into every epoch (the stream repeats it in
   its row group, :class:`kdflow.stream.StreamingSource`; in memory :func:`oversample_indices`); ``weight`` gives it
   loss weight ``factor`` against 1 for the others, in a per-batch weighted mean
   (:func:`kdflow.weighted_losses.weighted_distillation_loss`) — the same objective in expectation.

Entry points: :func:`select_from_stores` (the distill flow, via :func:`kdflow.student.prepare_student_training`)
and :func:`train_with_hard_examples` (in-memory arrays, as :func:`kdflow.train.train_classifier`: "KD with hard
examples" for a benchmark).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from kdflow.config import ConfigError, HardExamplesConfig, TrainConfig
from kdflow.ensemble import combine_logits
from kdflow.logits import LogitStore, LogitStoreError
from kdflow.stream import ArraySource
from kdflow.train import TrainResult, fit

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "transfer", "recent")  # the order candidate rows are ranked in when entropies tie


def teacher_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of ``softmax(z)`` per row at T=1: ``H = -sum_c p_c ln p_c = logsumexp(z) - sum_c p_c z_c``,
    computed in float64 from the max-shifted logits (no ``0 * log 0``). Shape ``(n, C)`` -> ``(n,)``."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1)
    return np.log(s) - (e * z).sum(axis=1) / s


def rare_classes(labels: np.ndarray, num_classes: int, share: float) -> tuple[int, ...]:
    """The classes ``c`` whose share of ``labels`` is below ``share``: ``count_c / n < share`` (an absent class
    is rare)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("rare classes need train labels; the train split is empty")
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    return tuple(int(c) for c in np.flatnonzero(counts / len(labels) < share))


def top_fraction(entropy: np.ndarray, fraction: float, eligible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k = ceil(fraction * m)`` rows of highest ``entropy`` among the ``m`` eligible rows (all when
    ``eligible`` is None), highest first; ties keep index order (a stable sort)."""
    entropy = np.asarray(entropy, dtype=np.float64)
    pool = np.arange(len(entropy)) if eligible is None else np.flatnonzero(eligible)
    k = min(len(pool), math.ceil(round(fraction * len(pool), 9)))  # round: 0.1 * 30 is 3.0000000000000004
    order = np.argsort(-entropy[pool], kind="stable")
    return pool[order[:k]]


def oversample_indices(factors: np.ndarray) -> np.ndarray:
    """Row indices with row ``i`` repeated ``factors[i]`` times (whole numbers), in row order: an epoch's rows
    when the selected rows are oversampled."""
    counts = np.asarray(factors)
    if np.any(counts != np.round(counts)) or np.any(counts < 0):
        raise ValueError(f"oversampling needs whole, non-negative copy counts, got {np.unique(counts).tolist()}")
    return np.repeat(np.arange(len(counts)), counts.astype(np.int64))


@dataclass(frozen=True)
class Candidates:
    """One split's candidate rows: ids, teacher entropy at T=1 and class (label where known, else the teacher's
    top class)."""

    ids: np.ndarray
    entropy: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True, eq=False)
class HardExampleSelection:
    """The selected hard examples of each split and how they are emphasised; what MLflow and the report record.

    A :class:`kdflow.stream.StreamingSource` reads :attr:`mode`, :meth:`factors` and :meth:`extra_rows`."""

    mode: str
    factor: float
    classes: str
    fraction: float
    rare_classes: tuple[int, ...] | None  # None: classes "all"
    candidate_rows: int
    eligible_rows: int
    candidate_mean_entropy: float
    selected: dict[str, np.ndarray] = field(repr=False)  # split -> selected ids
    entropy: np.ndarray = field(repr=False)  # of the selected rows, highest first
    by_class: dict[int, int] = field(default_factory=dict)

    @property
    def selected_rows(self) -> int:
        """How many rows were selected (each counted once)."""
        return int(sum(len(ids) for ids in self.selected.values()))

    @property
    def mean_entropy(self) -> float:
        """Mean teacher entropy (nats) of the selected rows; NaN when none."""
        return float(self.entropy.mean()) if len(self.entropy) else float("nan")

    def factors(self, split: str, ids: np.ndarray) -> np.ndarray:
        """Per row of ``ids`` (of ``split``): ``factor`` for a selected row, 1 otherwise (float64)."""
        chosen = self.selected.get(split)
        out = np.ones(len(ids), dtype=np.float64)
        if chosen is not None and len(chosen):
            out[pd.Index(ids).isin(chosen)] = self.factor
        return out

    def extra_rows(self) -> int:
        """Rows oversampling adds to every epoch: ``selected * (factor - 1)`` (0 in mode weight)."""
        return self.selected_rows * (int(self.factor) - 1) if self.mode == "oversample" else 0

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics (``hard_examples_*``; the mode is the param ``hard_examples.mode``)."""
        return {
            "hard_examples_selected_rows": float(self.selected_rows),
            "hard_examples_mean_entropy": self.mean_entropy,
            "hard_examples_min_selected_entropy": float(self.entropy.min()) if len(self.entropy) else float("nan"),
            "hard_examples_candidate_rows": float(self.candidate_rows),
            "hard_examples_eligible_rows": float(self.eligible_rows),
            "hard_examples_candidate_mean_entropy": self.candidate_mean_entropy,
            "hard_examples_extra_rows_per_epoch": float(self.extra_rows()),
        }

    def as_dict(self) -> dict[str, Any]:
        """The report's ``training.hard_examples`` section and MLflow's ``hard_examples/selection.json``."""
        nan_free = {k: (None if v != v else v) for k, v in self.metrics().items()}
        return {
            "mode": self.mode,
            "factor": self.factor,
            "classes": self.classes,
            "fraction": self.fraction,
            "rare_classes": list(self.rare_classes) if self.rare_classes is not None else None,
            "entropy_temperature": 1.0,
            "selected_rows": self.selected_rows,
            "mean_entropy": nan_free["hard_examples_mean_entropy"],
            "min_selected_entropy": nan_free["hard_examples_min_selected_entropy"],
            "candidate_rows": self.candidate_rows,
            "eligible_rows": self.eligible_rows,
            "candidate_mean_entropy": nan_free["hard_examples_candidate_mean_entropy"],
            "extra_rows_per_epoch": self.extra_rows(),
            "by_split": {name: len(ids) for name, ids in self.selected.items()},
            "by_class": {str(c): n for c, n in sorted(self.by_class.items())},
        }

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"hard examples: {self.selected_rows} of {self.eligible_rows} eligible rows "
            f"({self.candidate_rows} candidates, classes {self.classes}) by teacher entropy at T=1, mean "
            f"{self.mean_entropy:.4f} nats (candidates {self.candidate_mean_entropy:.4f}); mode {self.mode}, "
            f"factor {self.factor:g}"
        )


def select_hard_examples(
    cfg: HardExamplesConfig,
    candidates: Mapping[str, Candidates],
    train_labels: np.ndarray | None,
    num_classes: int,
) -> HardExampleSelection:
    """Select the top ``cfg.fraction`` of the eligible candidate rows by teacher entropy (module docstring, steps
    2-3). ``candidates`` maps split names to their rows; ``train_labels`` (the train split's labels) decide the
    rare classes when ``cfg.classes`` is ``rare``."""
    names = [n for n in SPLIT_ORDER if n in candidates] + sorted(n for n in candidates if n not in SPLIT_ORDER)
    if not names or sum(len(candidates[n].ids) for n in names) == 0:
        raise ConfigError(f"hard_examples: no candidate rows in the splits {list(cfg.splits)} (empty or absent)")
    entropy = np.concatenate([np.asarray(candidates[n].entropy, np.float64) for n in names])
    classes = np.concatenate([np.asarray(candidates[n].classes) for n in names])
    split_of = np.concatenate([np.full(len(candidates[n].ids), i) for i, n in enumerate(names)])
    row_of = np.concatenate([np.arange(len(candidates[n].ids)) for n in names])
    rare: tuple[int, ...] | None = None
    eligible = None
    if cfg.classes == "rare":
        if train_labels is None:
            raise ValueError("hard_examples.classes rare needs the train split's labels")
        rare = rare_classes(train_labels, num_classes, cfg.rare_share)
        eligible = np.isin(classes, rare)
        if not rare:
            log.warning(
                "hard examples: no class is below rare_share %g of the train labels; none selected", cfg.rare_share
            )
    chosen = top_fraction(entropy, cfg.fraction, eligible)
    selected = {
        n: np.asarray(candidates[n].ids)[np.sort(row_of[chosen[split_of[chosen] == i]])] for i, n in enumerate(names)
    }
    by_class = {int(c): int(k) for c, k in zip(*np.unique(classes[chosen], return_counts=True))}
    return HardExampleSelection(
        mode=cfg.mode,
        factor=float(cfg.factor),
        classes=cfg.classes,
        fraction=cfg.fraction,
        rare_classes=rare,
        candidate_rows=len(entropy),
        eligible_rows=int(len(entropy) if eligible is None else eligible.sum()),
        candidate_mean_entropy=float(entropy.mean()),
        selected=selected,
        entropy=entropy[chosen],
        by_class=by_class,
    )


def scan_store(stores: Sequence[LogitStore], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, entropy, top class)`` of one split from its stored logits, one store per teacher (combined at T=1
    with ``weights``), shard by shard (memory: one shard per teacher), every checksum verified."""
    readers = [store.iter_shards() for store in stores]
    ids_out, entropy_out, top_out = [], [], []
    for shards in zip(*readers, strict=True):
        ids = shards[0][0]
        per_teacher = []
        for store, (shard_ids, logits) in zip(stores, shards):
            pos = pd.Index(shard_ids).get_indexer(pd.Index(ids))
            if (pos < 0).any():
                raise LogitStoreError(f"{store.uri}: shard rows differ from the first teacher's store's")
            per_teacher.append(np.asarray(logits, np.float32)[pos])
        z = combine_logits(per_teacher, weights, 1.0)
        ids_out.append(ids)
        entropy_out.append(teacher_entropy(z))
        top_out.append(z.argmax(axis=1))
    if not ids_out:
        return np.array([]), np.array([]), np.array([], dtype=np.int64)
    return np.concatenate(ids_out), np.concatenate(entropy_out), np.concatenate(top_out)


def select_from_stores(
    cfg: HardExamplesConfig,
    stores: Mapping[str, Sequence[LogitStore]],
    weights: Sequence[float],
    num_classes: int,
    labels: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> HardExampleSelection:
    """:func:`select_hard_examples` over the splits of ``cfg.splits`` found in ``stores`` (split -> one logit
    store per teacher), entropies read from the stores (:func:`scan_store`). ``labels`` maps labeled splits to
    ``(ids, labels)``: their rows' class is the label, and ``labels["train"]`` decides the rare classes."""
    candidates = {}
    for name in cfg.splits:
        if name not in stores:
            continue
        ids, entropy, top = scan_store(stores[name], weights)
        classes = top
        if name in labels:
            known_ids, known = labels[name]
            pos = pd.Index(known_ids).get_indexer(pd.Index(ids))
            if (pos < 0).any():
                raise LogitStoreError(f"{name}: {int((pos < 0).sum())} stored row(s) are not in the split's labels")
            classes = np.asarray(known)[pos]
        candidates[name] = Candidates(ids, entropy, classes)
    train = labels.get("train")
    return select_hard_examples(cfg, candidates, train[1] if train is not None else None, num_classes)


def hard_example_source(
    x: np.ndarray,
    y: np.ndarray,
    teacher_logits: np.ndarray,
    cfg: HardExamplesConfig,
    num_classes: int,
) -> tuple[ArraySource, HardExampleSelection]:
    """In-memory rows with the hard examples emphasised: labeled rows (``y >= 0``) are split ``train``, unlabeled
    ones (``y = -1``) ``transfer``; row ``i``'s id is ``i``. Entropy and classes from ``teacher_logits`` (one
    teacher, T=1), rare classes from the labeled rows. ``oversample``: the source holds each selected row
    ``factor`` times; ``weight``: it carries per-row weights."""
    y = np.asarray(y)
    labeled = y >= 0
    entropy = teacher_entropy(teacher_logits)
    top = np.asarray(teacher_logits).argmax(axis=1)
    rows = {"train": np.flatnonzero(labeled), "transfer": np.flatnonzero(~labeled)}
    candidates = {
        name: Candidates(idx, entropy[idx], y[idx] if name == "train" else top[idx])
        for name, idx in rows.items()
        if name in cfg.splits and len(idx)
    }
    selection = select_hard_examples(cfg, candidates, y[labeled], num_classes)
    factors = np.ones(len(y))
    for idx in selection.selected.values():
        factors[idx] = selection.factor
    if cfg.mode == "oversample":
        keep = oversample_indices(factors)
        return ArraySource(x[keep], y[keep], np.asarray(teacher_logits)[keep]), selection
    return ArraySource(x, y, teacher_logits, weights=factors), selection


def train_with_hard_examples(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    teacher_logits: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    train_cfg: TrainConfig,
    hard_cfg: HardExamplesConfig,
    num_classes: int,
    teacher_val_logits: np.ndarray | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> tuple[TrainResult, HardExampleSelection]:
    """ "KD with hard examples" on in-memory arrays: :func:`kdflow.train.train_classifier` (labels -1 =
    unlabeled transfer rows, ``teacher_logits`` aligned with ``x_train``) on :func:`hard_example_source`'s rows.
    ``hard_cfg.enabled`` is not consulted (calling this is enabling it). Returns the training result and the selection."""
    source, selection = hard_example_source(x_train, y_train, teacher_logits, hard_cfg, num_classes)
    log.info("%s", selection.describe())
    result = fit(model, source, x_val, y_val, train_cfg, teacher_val_logits, on_epoch, progress)
    return result, selection
