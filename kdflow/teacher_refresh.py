"""Refreshing the teacher on recent labeled traffic: the domain side of ``flows/teacher_refresh.py``.

When the teacher itself has degraded on production traffic, distilling again only copies its errors: the teacher
must learn the new regime first. The flow reads the labeled rows of the last ``teacher_refresh.window_days``,
splits them by a seeded hash of their ids (:func:`split_recent`) into a training part, a validation slice and a
held-out slice that neither the champion teacher nor the refreshed one trains on, mixes a replay sample of the
teacher's original data into the training and validation parts (:func:`replay_mix`; experience replay against
catastrophic forgetting, Rolnick et al. 2019), fine-tunes the champion's weights or trains its architecture from
scratch (:func:`refresh_model`), and gates the result (:func:`judge_refresh`). Like every library module this one
never imports Prefect; the tasks in ``tasks/teacher_refresh.py`` wrap these functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from torch import nn

from kdflow import registry
from kdflow.config import ConfigError, ModelSpec, TeacherConfig, TeacherRefreshConfig, TrainConfig, load_config
from kdflow.data import DataError, Dataset
from kdflow.lifecycle import hash_fraction
from kdflow.metrics import accuracy
from kdflow.models import build_model
from kdflow.train import predict_logits

FLOW_TAG = "teacher-refresh"  # the MLflow run's kdflow.flow tag
OUTCOME_TAG = f"{registry.TAG_PREFIX}refresh_outcome"
REASON_TAG = f"{registry.TAG_PREFIX}refresh_reason"
TEACHER_TAG = f"{registry.TAG_PREFIX}teacher"  # the refreshed teacher's registered name, on the run
PROMOTED, REFUSED, SKIPPED = "promoted", "refused", "skipped"
ACTED = (PROMOTED, REFUSED)  # outcomes of a refresh that trained: only these start the refresh cool-down


def champion_teacher_uri(teacher_uri: str) -> str:
    """The registered teacher's name, from ``teacher_uri``; it must name the ``@champion`` alias (a pinned
    version would keep every later distillation on the old teacher, so a refresh could not take effect)."""
    suffix = f"@{registry.CHAMPION}"
    if not teacher_uri.endswith(suffix):
        raise ConfigError(
            f"teacher_uri {teacher_uri!r}: a teacher refresh needs the teacher named by its champion alias "
            f"(models:/<name>{suffix}), so the retrained student distils from the refreshed version"
        )
    return teacher_uri.removeprefix("models:/").removesuffix(suffix)


def with_mode(cfg: TeacherRefreshConfig, mode: str | None) -> TeacherRefreshConfig:
    """``cfg`` with ``mode`` (validated again: ``retrain`` needs ``teacher_config``); ``None``: ``cfg``."""
    if mode is None:
        return cfg
    try:
        return TeacherRefreshConfig.model_validate({**cfg.model_dump(), "mode": mode})
    except ValidationError as exc:
        raise ConfigError(f"teacher_refresh with mode {mode!r}: {exc.errors()[0]['msg']}") from None


def teacher_spec(path: str | None, name: str) -> tuple[ModelSpec | None, TrainConfig]:
    """The architecture and ``train`` section of the teacher config at ``path``, whose ``registry_name`` must be
    ``name`` (the teacher being refreshed); without a path, no architecture and the teacher default ``train``."""
    if path is None:
        return None, TeacherConfig.model_fields["train"].default
    cfg = load_config(path, TeacherConfig)
    if cfg.registry_name != name:
        raise ConfigError(
            f"teacher_refresh.teacher_config {path}: registry_name is {cfg.registry_name!r}, expected {name!r} "
            "(the model behind teacher_uri)"
        )
    return cfg.model, cfg.train


@dataclass
class RefreshSplit:
    """The recent labeled rows: trained on, validated on (best epoch), held out for the gate."""

    train: Dataset
    val: Dataset
    holdout: Dataset


def _subset(ds: Dataset, mask: np.ndarray, name: str) -> Dataset:
    return Dataset(name, ds.uri, ds.ids[mask], ds.x[mask], None if ds.y is None else ds.y[mask])


def split_recent(recent: Dataset, holdout_fraction: float, val_fraction: float, seed: int) -> RefreshSplit:
    """Split by :func:`hash_fraction` of the ids: ``u < holdout_fraction`` held out, the next
    ``val_fraction * (1 - holdout_fraction)`` validation, the rest training."""
    u = hash_fraction(recent.ids, seed)
    holdout = u < holdout_fraction
    val = ~holdout & (u < holdout_fraction + val_fraction * (1.0 - holdout_fraction))
    return RefreshSplit(
        _subset(recent, ~holdout & ~val, "refresh_train"),
        _subset(recent, val, "refresh_val"),
        _subset(recent, holdout, "refresh_holdout"),
    )


def replay_rows(recent_rows: int, replay_fraction: float, available: int) -> int:
    """Rows of old data so that they are ``replay_fraction`` of the mix: ``round(n * f / (1 - f))`` for ``n``
    recent rows, at most ``available``."""
    return min(available, int(round(recent_rows * replay_fraction / (1.0 - replay_fraction))))


def replay_mix(recent: Dataset, old: Dataset, replay_fraction: float, seed: int) -> tuple[Dataset, int]:
    """``recent`` plus a seeded sample (without replacement) of ``old``: the mix and the number of old rows."""
    n = replay_rows(len(recent), replay_fraction, len(old))
    pick = np.sort(np.random.default_rng(seed).choice(len(old), size=n, replace=False))
    ids = np.concatenate([[f"recent:{i}" for i in recent.ids.tolist()], [f"replay:{i}" for i in old.ids[pick]]])
    mixed = Dataset(
        f"{recent.name}+replay",
        f"{recent.uri} + {n} rows of {old.uri}",
        ids.astype(str),
        np.concatenate([recent.x, old.x[pick]]).astype(np.float32),
        np.concatenate([recent.y, old.y[pick]]).astype(np.int64),
    )
    return mixed, n


@dataclass
class RefreshData:
    """What a refresh trains on (recent + replay), validates on (best epoch; recent + replay) and gates on (the
    held-out recent slice), with the row counts recorded as lineage."""

    train: Dataset
    val: Dataset
    holdout: Dataset
    rows: dict[str, int]


def prepare_refresh_data(
    recent: Dataset, old_train: Dataset, old_val: Dataset, cfg: TeacherRefreshConfig
) -> RefreshData:
    """:func:`split_recent` the recent labeled rows, then :func:`replay_mix` old training rows into the training
    part and old validation rows into the validation part (``cfg.replay_fraction`` of each mix)."""
    split = split_recent(recent, cfg.holdout_fraction, cfg.val_fraction, cfg.seed)
    if not len(split.train) or not len(split.holdout):
        raise DataError(
            f"{recent.uri}: {len(recent)} labeled rows leave {len(split.train)} to train on and "
            f"{len(split.holdout)} held out; raise teacher_refresh.min_labeled_rows"
        )
    train, replay_train = replay_mix(split.train, old_train, cfg.replay_fraction, cfg.seed)
    val, replay_val = replay_mix(split.val, old_val, cfg.replay_fraction, cfg.seed + 1)
    if not len(val):
        raise DataError(f"{recent.uri}: no validation rows (teacher_refresh.val_fraction and replay_fraction are 0)")
    rows = {
        "recent_labeled": len(recent),
        "recent_train": len(split.train),
        "recent_val": len(split.val),
        "holdout": len(split.holdout),
        "replay_train": replay_train,
        "replay_val": replay_val,
    }
    return RefreshData(train, val, split.holdout, rows)


def refresh_train_config(cfg: TeacherRefreshConfig, base: TrainConfig) -> TrainConfig:
    """The optimisation settings: ``base`` (the teacher config's ``train``, else the teacher default) with the
    refresh's seed and no checkpoints; ``finetune`` also takes ``finetune_epochs`` and ``finetune_lr``."""
    update: dict[str, Any] = {"seed": cfg.seed, "checkpoint_every_epochs": None, "max_steps": None}
    if cfg.mode == "finetune":
        update.update(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)
    return TrainConfig.model_validate({**base.model_dump(), **update})


def refresh_model(
    mode: str, parent: nn.Module, spec: ModelSpec | None, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """What is trained: the parent teacher itself (``finetune``; a freshly loaded copy, trained in place) or a new
    model of ``spec``'s architecture (``retrain``)."""
    if mode == "finetune":
        return parent
    if spec is None:
        raise ConfigError("teacher_refresh.mode retrain needs teacher_refresh.teacher_config")
    return build_model(spec.arch, spec.args, input_shape, num_classes)


@dataclass(frozen=True)
class RefreshVerdict:
    """The refresh gate: the new and the champion teacher on the held-out recent slice and on the old test split."""

    promote: bool
    reason: str
    holdout_accuracy: float
    champion_holdout_accuracy: float
    test_accuracy: float
    champion_test_accuracy: float

    def metrics(self) -> dict[str, float]:
        """What the gate logs to the MLflow run."""
        return {k: float(v) for k, v in asdict(self).items() if k != "reason"}

    def tags(self) -> dict[str, object]:
        """The version tags: the promotion's SLA record (``kdflow.sla_passed``) is the gate's verdict, and the
        teacher-health reference (``kdflow.reference_accuracy``, :mod:`kdflow.teacher_health`) is the held-out
        recent accuracy: what the refreshed teacher does on the regime it was refreshed for, so the health signal
        compares later traffic with that regime, not with the old test split."""
        return {
            "reference_accuracy": self.holdout_accuracy,
            "sla_passed": self.promote,
            "gate_promote": self.promote,
            "gate_reason": self.reason[: registry.MAX_REASON_CHARS],
            "test_accuracy": self.test_accuracy,
            "holdout_accuracy": self.holdout_accuracy,
            "gate_champion_holdout_accuracy": self.champion_holdout_accuracy,
            "gate_champion_accuracy": self.champion_test_accuracy,
        }


def judge_refresh(
    holdout: tuple[float, float], test: tuple[float, float], min_improvement: float, max_forgetting: float
) -> RefreshVerdict:
    """Promote iff on the held-out recent slice ``new - champion > min_improvement`` (strict: 0 means strictly
    better) AND on the old regime's test split ``new >= champion - max_forgetting`` (the forgetting guard);
    ``holdout`` and ``test`` are (new, champion) accuracies."""
    (new_h, champ_h), (new_t, champ_t) = holdout, test
    problems = []
    if not new_h - champ_h > min_improvement + 1e-12:
        problems.append(
            f"held-out recent accuracy {new_h:.4f} is not above the champion's {champ_h:.4f} "
            f"by more than min_improvement {min_improvement}"
        )
    if new_t + 1e-12 < champ_t - max_forgetting:
        problems.append(
            f"forgetting: old-regime test accuracy {new_t:.4f} is below the champion's {champ_t:.4f} "
            f"by more than max_forgetting {max_forgetting}"
        )
    reason = (
        "refused: " + "; ".join(problems)
        if problems
        else f"promoted: held-out recent accuracy {new_h:.4f} vs champion {champ_h:.4f}; "
        f"old-regime test accuracy {new_t:.4f} vs champion {champ_t:.4f} (max_forgetting {max_forgetting})"
    )
    return RefreshVerdict(not problems, reason, new_h, champ_h, new_t, champ_t)


def score_refresh(
    model: nn.Module, champion: nn.Module, holdout: Dataset, test: Dataset, cfg: TeacherRefreshConfig
) -> RefreshVerdict:
    """Score both teachers on ``holdout`` and ``test`` and :func:`judge_refresh`."""
    pair = [
        tuple(accuracy(predict_logits(m, ds.x), ds.y) for m in (model, champion)) for ds in (holdout, test)
    ]  # fmt: skip
    return judge_refresh(pair[0], pair[1], cfg.min_improvement, cfg.max_forgetting)


def lineage_tags(
    parent: registry.ModelRef,
    window: tuple[datetime, datetime],
    rows: dict[str, int],
    cfg: TeacherRefreshConfig,
    as_of: datetime,
    reason: str,
    run_id: str,
) -> dict[str, object]:
    """Where a refreshed teacher came from (version tags, ``kdflow.`` prefixed by :func:`registry.tag_version`)."""
    return {
        "refresh_parent_version": parent.version,
        "refresh_window": [window[0].isoformat(), window[1].isoformat()],
        "refresh_rows": rows,
        "refresh_mode": cfg.mode,
        "refresh_as_of": as_of.isoformat(),
        "refresh_reason": reason,
        "refresh_replay_fraction": cfg.replay_fraction,
        "run_id": run_id,
    }


def register_refreshed(
    model: nn.Module, example: np.ndarray, name: str, run_id: str, tags: dict[str, object]
) -> tuple[str, str]:
    """Register ``model`` from ``run_id`` as a version of ``name`` (idempotent:
    :func:`kdflow.registry.register_run_model`), tag it and alias it ``challenger``. Returns (model URI, version)."""
    model_uri, version, _ = registry.register_run_model(model, example, name, run_id)
    registry.tag_version(name, version, tags)
    registry.ensure_alias(name, registry.CHALLENGER, version, reason="refreshed teacher", actor="teacher-refresh")
    return model_uri, version


def record_outcome(run_id: str, outcome: str, reason: str, metrics: dict[str, float]) -> None:
    """Tag the refresh's MLflow run with its outcome and reason and log ``metrics`` (NaN skipped)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, OUTCOME_TAG, outcome)
    client.set_tag(run_id, REASON_TAG, reason[:5000])
    for key, value in metrics.items():
        if value == value:
            client.log_metric(run_id, key, float(value))


def last_acted_refresh(experiment: str, teacher: str, before: datetime) -> datetime | None:
    """The ``as_of`` of the last refresh of ``teacher`` before ``before`` that trained a teacher (outcome
    :data:`ACTED`: promoted or refused by the gate), from the teacher-refresh runs in the MLflow experiment
    ``experiment``; None when there is none. A skipped refresh (too few labeled rows) and a failed one do not
    count, so they start no cool-down: the next check may try again once the labels have arrived."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`kdflow.flow` = '{FLOW_TAG}' AND tags.`{TEACHER_TAG}` = '{teacher}'"
    )
    times = [
        datetime.fromisoformat(r.data.tags["kdflow.as_of"])
        for r in runs
        if r.data.tags.get(OUTCOME_TAG) in ACTED and "kdflow.as_of" in r.data.tags
    ]
    return max((t for t in times if t < before), default=None)


@dataclass
class Phases:
    """Wall time of each phase of a refresh (seconds), in order: what the benchmark reports as its cost."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (added to, if the phase runs twice)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """``phase_<name>_seconds`` for MLflow, and the total."""
        out = {f"phase_{k}_seconds": v for k, v in self.seconds.items()}
        out["refresh_seconds"] = sum(self.seconds.values())
        return out


def refresh_window(as_of: datetime, window_days: int, since: datetime | None) -> tuple[datetime, datetime]:
    """``[start, as_of)``: the last ``window_days`` before ``as_of``, starting no earlier than ``since`` (the drift
    episode the refresh answers): a teacher refitted across a sudden shift would learn the old regime again."""
    start = as_of - timedelta(days=window_days)
    return (max(start, since) if since is not None and since < as_of else start), as_of


def refresh_dir(output_dir: str, as_of: datetime) -> Path:
    """Where a refresh at ``as_of`` writes the labeled traffic it validates: ``<output_dir>/teacher_refresh/<as_of>``."""
    return Path(output_dir).resolve() / "teacher_refresh" / f"{as_of:%Y%m%dT%H%M%S}"
