"""Teacher tasks: resolve the registered teacher, precompute its logits once, read them back."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from kdflow.config import DistillConfig
from kdflow.data import Dataset
from kdflow import metrics
from kdflow.logits import LogitStore, PrecomputeStats, store_key, teacher_profile_key
from kdflow.registry import ModelRef, load_torch_model, resolve
from kdflow.store import open_store
from kdflow.train import predict_logits


@task(name="resolve-teacher", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def resolve_teacher(uri: str) -> ModelRef:
    """Resolve the teacher's ``models:/`` URI to a registered version (pinned for the rest of the run)."""
    ref = resolve(uri)
    get_run_logger().info("teacher %s -> %s version %s", uri, ref.name, ref.version)
    return ref


def logit_stores(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset]) -> dict[str, LogitStore]:
    """One logit store per split, keyed by teacher version and that split's data fingerprint."""
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)
    return {name: LogitStore(store, store_key(teacher.name, teacher.version, ds.fingerprint)) for name, ds in datasets.items()}


@dataclass
class TeacherOutputs:
    """What the precompute step did per split, the teacher's size/speed profile, and whether it loaded the teacher."""

    stats: dict[str, PrecomputeStats]
    store_uris: dict[str, str]
    profile: dict[str, float]
    teacher_loaded: bool


@task(name="precompute-teacher-logits", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def precompute_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset]) -> TeacherOutputs:
    """Store the teacher's logits for every split unless a complete store exists. The teacher is loaded only
    if some split (or its one-off size/latency profile) is missing: a re-run never runs the teacher."""
    logger = get_run_logger()
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)
    stores = logit_stores(cfg, teacher, datasets)
    todo = [n for n, s in stores.items() if not s.is_complete_for(teacher.version, datasets[n].fingerprint)]
    profile_key = teacher_profile_key(teacher.name, teacher.version)
    need_profile = not store.exists(profile_key)
    model = load_torch_model(teacher) if (todo or need_profile) else None
    stats: dict[str, PrecomputeStats] = {}
    for name, ls in stores.items():
        ds = datasets[name]
        with tqdm(total=len(ds), desc=f"teacher logits {name}", unit="row", leave=False) as bar:
            stats[name] = ls.precompute(
                ds.ids,
                (lambda rows, x=ds.x: predict_logits(model, x[rows])),
                teacher_uri=teacher.uri, teacher_name=teacher.name, teacher_version=teacher.version,
                data_fingerprint=ds.fingerprint, dataset=name, rows_per_shard=cfg.store.rows_per_shard,
                clip_value=cfg.train.teacher_logit_clip, progress=bar.update,
            )
        s = stats[name]
        logger.info("%s logits at %s: %s (%d rows computed, %d clipped)", name, ls.uri,
                    "reused" if s.reused else "computed", s.rows_computed, s.clipped_values)
    if need_profile:
        ev = cfg.evaluation
        profile = metrics.profile(model, datasets["test"].x, ev.latency_batches, ev.throughput_batch_size, ev.throughput_batches)
        store.put(profile_key, json.dumps(profile, indent=2).encode())
    else:
        profile = json.loads(store.get(profile_key))
    return TeacherOutputs(stats=stats, store_uris={n: s.uri for n, s in stores.items()}, profile=profile, teacher_loaded=model is not None)


@task(name="load-teacher-logits", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset]) -> dict[str, np.ndarray]:
    """Read every split's stored logits, verifying checksums, provenance and ids (joined by id)."""
    stores = logit_stores(cfg, teacher, datasets)
    return {n: stores[n].read_aligned(ds.ids, teacher.version, ds.fingerprint) for n, ds in datasets.items()}
