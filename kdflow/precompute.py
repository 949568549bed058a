"""A run's teacher logits: one logit store per split and teacher (:mod:`kdflow.logits`), planned, finalized and
read back for the flows. Computing the missing shards is left to the caller (the flows run one task per shard)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from kdflow import metrics
from kdflow.config import DistillConfig
from kdflow.data import Dataset
from kdflow.device import check_autocast, score_logits
from kdflow.ensemble import TeacherLogits
from kdflow.logits import (
    LogitStore,
    LogitStoreError,
    PrecomputeStats,
    ShardJob,
    ShardPlan,
    ShardResult,
    StoreSpec,
    finalize_shards,
    plan_shards,
    teacher_profile_key,
)
from kdflow.registry import ModelRef
from kdflow.rowgroups import AnySplit
from kdflow.store import open_store
from kdflow.validation import validate_teacher_logits


def store_spec(cfg: DistillConfig, teacher: ModelRef, name: str, ds: AnySplit) -> StoreSpec:
    """What split ``name``'s logit store is computed from: teacher version, data, shard size, clip and top-k."""
    return StoreSpec(
        teacher_uri=teacher.uri,
        teacher_name=teacher.name,
        teacher_version=str(teacher.version),
        data_fingerprint=ds.fingerprint,
        dataset=name,
        rows_per_shard=cfg.store.rows_per_shard,
        clip_value=cfg.train.teacher_logit_clip,
        top_k=cfg.store.top_k,
        autocast=cfg.store.autocast,
    )


def logit_stores(cfg: DistillConfig, teacher: ModelRef, datasets: Mapping[str, AnySplit]) -> dict[str, LogitStore]:
    """One logit store per split, keyed by teacher version, that split's data fingerprint and the settings that
    change the stored values (:func:`kdflow.logits.store_key`)."""
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)
    return {name: LogitStore(store, store_spec(cfg, teacher, name, ds).key) for name, ds in datasets.items()}


@dataclass
class LogitPlan:
    """Per split, what :func:`kdflow.logits.plan_shards` found; and whether the teacher profile is missing."""

    splits: dict[str, ShardPlan] = field(default_factory=dict)
    need_profile: bool = False

    @property
    def jobs(self) -> list[tuple[str, ShardJob]]:
        """Every shard still to compute, as (split, job)."""
        return [(name, job) for name, plan in self.splits.items() for job in plan.jobs]

    @property
    def teacher_needed(self) -> bool:
        """Whether the teacher must be loaded: some shard or its profile is missing."""
        return bool(self.jobs) or self.need_profile


@dataclass
class TeacherOutputs:
    """What the precompute step did per split, the teacher's size/speed profile, and whether it loaded the teacher."""

    stats: dict[str, PrecomputeStats]
    store_uris: dict[str, str]
    profile: dict[str, float]
    teacher_loaded: bool


def plan_logits(cfg: DistillConfig, teacher: ModelRef, datasets: Mapping[str, AnySplit]) -> LogitPlan:
    """:func:`kdflow.logits.plan_shards` per split: reuse a complete store, else keep the shards an interrupted
    run left valid and list the rest; and whether the teacher's profile is stored yet."""
    stores = logit_stores(cfg, teacher, datasets)
    return LogitPlan(
        splits={
            name: plan_shards(stores[name], store_spec(cfg, teacher, name, ds), ds.ids) for name, ds in datasets.items()
        },
        need_profile=not open_store(cfg.store.root, cfg.store.endpoint_url).exists(
            teacher_profile_key(teacher.name, teacher.version)
        ),
    )


def finalize_logits(
    cfg: DistillConfig,
    teacher: ModelRef,
    datasets: Mapping[str, AnySplit],
    plan: LogitPlan,
    results: Sequence[tuple[str, ShardResult]],
    seconds: float,
    load_teacher: Callable[[], nn.Module],
) -> TeacherOutputs:
    """:func:`kdflow.logits.finalize_shards` per split (manifest written last), and the teacher's size/latency
    profile on the test split, measured once (``load_teacher()``, a CPU copy) and stored, else read back.

    When a split's shards were scored under autocast or, by any process (a Dask worker with a GPU among them), on
    a GPU (each :class:`~kdflow.logits.ShardResult` says where), its stored logits are first compared with the
    teacher's fp32 CPU logits on a sample (:func:`check_stored_logits`): beyond ``store.autocast_tolerance`` the
    split is not finalized (one clear error); within it, the figures go into the manifest and the stats."""
    stores = logit_stores(cfg, teacher, datasets)
    stats = {}
    for name, split_plan in plan.splits.items():
        spec = store_spec(cfg, teacher, name, datasets[name])
        computed = [r for split, r in results if split == name]
        on_gpu = any(r.device not in (None, "cpu") for r in computed)
        check = None
        if (cfg.store.autocast != "none" or on_gpu) and split_plan.reused is None:
            check = check_stored_logits(cfg, stores[name], datasets[name], load_teacher())
        stats[name] = finalize_shards(stores[name], spec, split_plan, computed, seconds, check)
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)
    key = teacher_profile_key(teacher.name, teacher.version)
    if plan.need_profile:
        ev = cfg.evaluation
        profile = metrics.profile(
            load_teacher(),
            datasets["test"].head(ev.throughput_batch_size),  # all the profile reads
            ev.latency_batches,
            ev.throughput_batch_size,
            ev.throughput_batches,
        )
        store.put(key, json.dumps(profile, indent=2).encode())
    else:
        profile = json.loads(store.get(key))
    return TeacherOutputs(
        stats=stats,
        store_uris={n: s.uri for n, s in stores.items()},
        profile=profile,
        teacher_loaded=plan.teacher_needed,
    )


AUTOCAST_CHECK_ROWS = 4096  # rows of each split's first shard compared with fp32 CPU logits


def check_stored_logits(cfg: DistillConfig, ls: LogitStore, ds: AnySplit, teacher_cpu: nn.Module) -> dict:
    """The first :data:`AUTOCAST_CHECK_ROWS` stored rows of ``ls`` (shard 0, as written: fp16, clipped) against
    the teacher's fp32 logits on the CPU (:func:`kdflow.device.check_autocast`; top-k stores compare
    log-probabilities on the stored classes). Raises :class:`kdflow.logits.LogitStoreError` beyond
    ``store.autocast_tolerance``; returns the check as a dict."""
    ids, stored = ls.read_shard(0)
    rows = min(len(ids), AUTOCAST_CHECK_ROWS)
    stored = stored[:rows].astype(np.float32)
    reference = score_logits(teacher_cpu, ds.head(rows), torch.device("cpu"))
    clip = cfg.train.teacher_logit_clip
    if cfg.store.top_k:  # stored log-probabilities (of the clipped logits) on each row's kept classes
        ref = torch.log_softmax(torch.from_numpy(np.clip(reference, -(clip or np.inf), clip or np.inf)), 1).numpy()
        kept = np.argsort(-stored, axis=1)[:, : cfg.store.top_k]
        stored, reference, clip = np.take_along_axis(stored, kept, 1), np.take_along_axis(ref, kept, 1), None
    result = check_autocast(stored, reference, cfg.store.autocast, cfg.store.autocast_tolerance, clip)
    if not result.passed:
        raise LogitStoreError(
            f"{ls.uri}: teacher logits scored with autocast {cfg.store.autocast!r} differ from fp32 by up to "
            f"{result.max_abs_diff:.4g} on {rows} rows, beyond store.autocast_tolerance {result.tolerance:g} x "
            f"max(1, {result.max_abs_logit:.4g}); set store.autocast: none"
        )
    return result.as_dict()


EVAL_SPLITS = ("val", "test", "recent_val")  # held in memory: evaluation, calibration, model selection


def read_eval_logits(
    cfg: DistillConfig, teacher: ModelRef, datasets: Mapping[str, Dataset], splits: Sequence[str] = EVAL_SPLITS
) -> TeacherLogits:
    """Read the small evaluation splits' stored logits (of those in ``splits`` that ``datasets`` has) into memory, verifying checksums, provenance and ids
    (joined by id), then their shape and finiteness: a teacher with the wrong number of classes is named here,
    before training."""
    splits = [n for n in splits if n in datasets]
    stores = logit_stores(cfg, teacher, {n: datasets[n] for n in splits})
    logits = {}
    for n in splits:
        ds = datasets[n]
        logits[n] = stores[n].read_aligned(ds.ids, teacher.version, ds.fingerprint)
        validate_teacher_logits(
            logits[n], len(ds), cfg.data.num_classes, name=f"{n} teacher logits", uri=stores[n].uri, ids=ds.ids
        ).raise_for_failures()
    return TeacherLogits(teacher, logits)
