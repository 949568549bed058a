"""Teacher tasks: resolve the registered teacher, precompute its logits once (one task per shard), read them back."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from torch import nn

from kdflow import metrics, registry
from kdflow.config import DistillConfig, StoreConfig
from kdflow.data import Dataset
from kdflow.ensemble import combine_logits, teacher_weights
from kdflow.logits import (LogitStore, PrecomputeStats, ShardJob, ShardPlan, ShardResult, StoreSpec, compute_shard,
                           finalize_shards, plan_shards, teacher_profile_key)
from kdflow.registry import ModelRef, resolve
from kdflow.store import open_store
from kdflow.train import predict_logits
from kdflow.validation import validate_teacher_logits
from tasks.preflight import retry_unless_permanent


@task(name="resolve-teacher", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def resolve_teacher(uri: str) -> ModelRef:
    """Resolve the teacher's ``models:/`` URI to a registered version (pinned for the rest of the run)."""
    ref = resolve(uri)
    get_run_logger().info("teacher %s -> %s version %s", uri, ref.name, ref.version)
    return ref


def store_spec(cfg: DistillConfig, teacher: ModelRef, name: str, ds: Dataset) -> StoreSpec:
    """What split ``name``'s logit store is computed from: teacher version, data, shard size, clip and top-k."""
    return StoreSpec(teacher_uri=teacher.uri, teacher_name=teacher.name, teacher_version=str(teacher.version),
                     data_fingerprint=ds.fingerprint, dataset=name, rows_per_shard=cfg.store.rows_per_shard,
                     clip_value=cfg.train.teacher_logit_clip, top_k=cfg.store.top_k)


def logit_stores(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset]) -> dict[str, LogitStore]:
    """One logit store per split, keyed by teacher version, that split's data fingerprint and the settings that
    change the stored values (:func:`kdflow.logits.store_key`)."""
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)
    return {name: LogitStore(store, store_spec(cfg, teacher, name, ds).key) for name, ds in datasets.items()}


def task_runner_for(store: StoreConfig):
    """The task runner for per-shard precomputation: threads by default, a local Dask cluster on request."""
    if store.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": store.workers, "threads_per_worker": 1, "processes": True})
    return ThreadPoolTaskRunner(max_workers=store.workers)


@functools.lru_cache(maxsize=2)
def _teacher_model(tracking_uri: str, ref: ModelRef) -> nn.Module:
    """The teacher, loaded once per process (each Dask worker loads its own copy)."""
    registry.configure_tracking(tracking_uri)
    return registry.load_torch_model(ref)


@dataclass
class LogitPlan:
    """Per split, what :func:`kdflow.logits.plan_shards` found; and whether the teacher profile is missing."""

    splits: dict[str, ShardPlan] = field(default_factory=dict)
    need_profile: bool = False

    @property
    def jobs(self) -> list[tuple[str, ShardJob]]:
        """Every shard still to compute, as (split, job)."""
        return [(name, job) for name, plan in self.splits.items() for job in plan.jobs]


@dataclass
class TeacherOutputs:
    """What the precompute step did per split, the teacher's size/speed profile, and whether it loaded the teacher."""

    stats: dict[str, PrecomputeStats]
    store_uris: dict[str, str]
    profile: dict[str, float]
    teacher_loaded: bool


@task(name="plan-teacher-logits", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_permanent,
      cache_policy=NO_CACHE)
def plan_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset]) -> LogitPlan:
    """:func:`kdflow.logits.plan_shards` per split: reuse a complete store, else keep the shards an interrupted
    run left valid and list the rest."""
    stores = logit_stores(cfg, teacher, datasets)
    plan = LogitPlan(splits={name: plan_shards(stores[name], store_spec(cfg, teacher, name, ds), ds.ids)
                             for name, ds in datasets.items()})
    plan.need_profile = not open_store(cfg.store.root, cfg.store.endpoint_url).exists(
        teacher_profile_key(teacher.name, teacher.version))
    get_run_logger().info(
        "teacher logits: %d split(s) reused, %d shard(s) to compute, %d kept from an earlier run",
        sum(p.reused is not None for p in plan.splits.values()), len(plan.jobs),
        sum(len(p.kept) for p in plan.splits.values()))
    return plan


@task(name="compute-logit-shard", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_permanent,
      cache_policy=NO_CACHE)
def compute_logit_shard(cfg: DistillConfig, teacher: ModelRef, spec: StoreSpec, job: ShardJob, ids: np.ndarray,
                        x: np.ndarray) -> ShardResult:
    """:func:`kdflow.logits.compute_shard` on one shard's rows (``ids``, ``x``), independent of every other shard."""
    model = _teacher_model(cfg.mlflow.tracking_uri, teacher)
    ls = LogitStore(open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url), spec.key)
    return compute_shard(ls, spec, job, ids, functools.partial(predict_logits, model, x))


@task(name="finalize-teacher-logits", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_permanent,
      cache_policy=NO_CACHE)
def finalize_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset], plan: LogitPlan,
                            results: list[tuple[str, ShardResult]], seconds: float) -> TeacherOutputs:
    """:func:`kdflow.logits.finalize_shards` per split (manifest written last), and the teacher's size/latency
    profile once."""
    stores = logit_stores(cfg, teacher, datasets)
    stats = {name: finalize_shards(stores[name], store_spec(cfg, teacher, name, datasets[name]), split_plan,
                                   [r for split, r in results if split == name], seconds)
             for name, split_plan in plan.splits.items()}
    store = open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url)
    key = teacher_profile_key(teacher.name, teacher.version)
    if plan.need_profile:
        ev = cfg.evaluation
        model = _teacher_model(cfg.mlflow.tracking_uri, teacher)
        profile = metrics.profile(model, datasets["test"].x, ev.latency_batches, ev.throughput_batch_size, ev.throughput_batches)
        store.put(key, json.dumps(profile, indent=2).encode())
    else:
        profile = json.loads(store.get(key))
    logger = get_run_logger()
    for name, st in stats.items():
        logger.info("%s logits at %s: %s (%d of %d shards computed, %d kept, %d rows, %d values clipped)",
                    name, stores[name].uri, "reused" if st.reused else "computed", st.shards_computed,
                    st.shards_total, st.shards_kept, st.rows_computed, st.clipped_values)
    return TeacherOutputs(stats=stats, store_uris={n: s.uri for n, s in stores.items()}, profile=profile,
                          teacher_loaded=bool(plan.jobs) or plan.need_profile)


def precompute_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset]) -> TeacherOutputs:
    """Plan, compute the missing shards as independent tasks (in parallel under the flow's task runner),
    then finalize: the steps of :meth:`kdflow.logits.LogitStore.precompute`, one task each. Called from a flow
    body; the teacher is loaded only if some shard or its profile is missing."""
    start = time.perf_counter()
    plan = plan_teacher_logits(cfg, teacher, datasets)
    futures = []
    for name, job in plan.jobs:
        ds = datasets[name]
        futures.append((name, compute_logit_shard.submit(cfg, teacher, store_spec(cfg, teacher, name, ds), job,
                                                         ds.ids[job.rows], ds.x[job.rows])))
    results = [(name, f.result()) for name, f in futures]
    return finalize_teacher_logits(cfg, teacher, datasets, plan, results, time.perf_counter() - start)


@task(name="load-teacher-logits", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_permanent,
      cache_policy=NO_CACHE)
def load_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: dict[str, Dataset],
                        splits: tuple[str, ...] = ("val", "test")) -> dict[str, np.ndarray]:
    """Read the small evaluation splits' stored logits into memory, verifying checksums, provenance and ids
    (joined by id), then their shape and finiteness. Training splits are streamed by the trainer instead."""
    stores = logit_stores(cfg, teacher, datasets)
    logits = {}
    for n in splits:
        ds = datasets[n]
        logits[n] = stores[n].read_aligned(ds.ids, teacher.version, ds.fingerprint)
        # finite, rows x classes: a teacher with the wrong number of classes is named here, before training
        validate_teacher_logits(logits[n], len(ds), cfg.data.num_classes, name=f"{n} teacher logits",
                                uri=stores[n].uri, ids=ds.ids).raise_for_failures()
    return logits


@dataclass
class TeacherEnsemble:
    """The teachers as one: weights, combined evaluation-split logits and the combined size/speed profile.

    ``train_logits`` are combined at the training temperature (what the student is trained towards, used for
    the validation soft loss); ``eval_logits`` at T=1 (teacher accuracy, flip rate, teacher ECE). One teacher:
    both are its own logits."""

    teachers: list[ModelRef]
    weights: list[float]
    val_accuracies: list[float]
    train_logits: dict[str, np.ndarray]
    eval_logits: dict[str, np.ndarray]
    profile: dict[str, float]

    def describe(self) -> list[dict[str, object]]:
        """Per teacher: URI, version, weight and validation accuracy (for tags and the report)."""
        return [{"uri": t.uri, "version": t.version, "weight": w, "val_accuracy": a}
                for t, w, a in zip(self.teachers, self.weights, self.val_accuracies)]


def _combined_profile(profiles: list[dict[str, float]]) -> dict[str, float]:
    """Serving every teacher for one request: parameters and latencies add, throughputs combine harmonically."""
    if len(profiles) == 1:
        return dict(profiles[0])
    out = {k: float(sum(p[k] for p in profiles)) for k in profiles[0] if k != "throughput"}
    out["throughput"] = 1.0 / sum(1.0 / p["throughput"] for p in profiles)
    return out


@task(name="combine-teachers", cache_policy=NO_CACHE)
def combine_teachers(cfg: DistillConfig, teachers: list[ModelRef], logits: list[dict[str, np.ndarray]],
                     profiles: list[dict[str, float]], datasets: dict[str, Dataset]) -> TeacherEnsemble:
    """Weight the teachers (uniform, or by validation accuracy) and combine their stored evaluation logits
    (:func:`kdflow.ensemble.combine_logits`)."""
    val = datasets["val"]
    accs = [metrics.accuracy(z["val"], val.y) for z in logits]
    weights = teacher_weights(cfg.teacher_weighting, accs).tolist()
    t = cfg.train.temperature
    ensemble = TeacherEnsemble(
        teachers=list(teachers), weights=weights, val_accuracies=accs,
        train_logits={n: combine_logits([z[n] for z in logits], weights, t) for n in logits[0]},
        eval_logits={n: combine_logits([z[n] for z in logits], weights, 1.0) for n in logits[0]},
        profile=_combined_profile(profiles))
    if len(teachers) > 1:
        get_run_logger().info("%d teachers combined (%s): %s", len(teachers), cfg.teacher_weighting,
                              ", ".join(f"{t.name} v{t.version} w={w:.3f} val_acc={a:.4f}"
                                        for t, w, a in zip(teachers, weights, accs)))
    return ensemble
