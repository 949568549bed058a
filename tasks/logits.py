"""Teacher tasks: resolve the registered teacher, precompute its logits once (one task per shard), read them back,
combine several teachers."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Mapping

import numpy as np
from prefect import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from torch import nn

from kdflow import registry
from kdflow.config import DistillConfig, StoreConfig, TeacherWeighting
from kdflow.data import DataError, Dataset
from kdflow.device import resolve_device, score_logits
from kdflow.ensemble import TeacherEnsemble, TeacherLogits
from kdflow.ensemble import combine_teachers as combine_teacher_logits
from kdflow.logits import LogitStore, ShardJob, ShardResult, StoreSpec, compute_shard
from kdflow.precompute import (
    LogitPlan,
    TeacherOutputs,
    finalize_logits,
    logit_stores,
    plan_logits,
    read_eval_logits,
    store_spec,
)
from kdflow.registry import ModelRef, resolve
from kdflow.rowgroups import AnySplit, ParquetSplit, RowSource, read_rows, shard_source, split_layout
from kdflow.store import StoreError, open_store
from tasks import kdflow_task
from tasks.preflight import retry_unless_permanent

__all__ = [
    "LogitPlan",
    "TeacherOutputs",
    "combine_teachers",
    "compute_logit_shard",
    "compute_logit_shard_from_parquet",
    "finalize_teacher_logits",
    "load_teacher_logits",
    "logit_stores",
    "plan_teacher_logits",
    "precompute_teacher_logits",
    "resolve_teacher",
    "task_runner_for",
    "worker_read_layouts",
]

store_retries = {"retries": 1, "retry_delay_seconds": 2, "retry_condition_fn": retry_unless_permanent}


@kdflow_task(name="resolve-teacher", retries=2, retry_delay_seconds=2)
def resolve_teacher(uri: str, tracking_uri: str) -> ModelRef:
    """Resolve the teacher's ``models:/`` URI to a registered version (pinned for the rest of the run) in the
    registry at ``tracking_uri`` (never MLflow's default, which would be a ``mlflow.db`` in the working directory)."""
    registry.configure_tracking(tracking_uri)
    ref = resolve(uri)
    get_run_logger().info("teacher %s -> %s version %s", uri, ref.name, ref.version)
    return ref


def task_runner_for(store: StoreConfig):
    """The task runner for per-shard precomputation: threads by default; on request Dask, on the existing cluster
    at ``store.cluster_address`` or else a local cluster of ``store.workers`` processes."""
    if store.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if store.cluster_address:
            return DaskTaskRunner(address=store.cluster_address)
        import dask

        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which fixes glibc's mmap threshold: every
        # scoring batch's buffers were mapped and unmapped again, the teacher ~2x slower (bench/logits_dask.py).
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
        return DaskTaskRunner(cluster_kwargs={"n_workers": store.workers, "threads_per_worker": 1, "processes": True})
    return ThreadPoolTaskRunner(max_workers=store.workers)


def shard_resources(store: StoreConfig) -> contextlib.AbstractContextManager:
    """Under ``store.task_runner: dask``, tasks submitted inside need ``store.worker_resources`` of their Dask
    worker (``dask.annotate``); otherwise a no-op."""
    if store.task_runner != "dask" or not store.worker_resources:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources=dict(store.worker_resources))


@functools.lru_cache(maxsize=4)
def _teacher_model(tracking_uri: str, ref: ModelRef, device: str = "cpu") -> nn.Module:
    """The teacher on ``device``, loaded once per process and device (each Dask worker loads its own copy)."""
    registry.configure_tracking(tracking_uri)
    return registry.load_torch_model(ref).to(device)


@kdflow_task(name="plan-teacher-logits", **store_retries)
def plan_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: Mapping[str, AnySplit]) -> LogitPlan:
    """:func:`kdflow.precompute.plan_logits`: reuse a complete store, else keep the shards an interrupted run
    left valid and list the rest."""
    plan = plan_logits(cfg, teacher, datasets)
    get_run_logger().info(
        "teacher logits: %d split(s) reused, %d shard(s) to compute, %d kept from an earlier run",
        sum(p.reused is not None for p in plan.splits.values()),
        len(plan.jobs),
        sum(len(p.kept) for p in plan.splits.values()),
    )
    return plan


@kdflow_task(name="compute-logit-shard", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_permanent)
def compute_logit_shard(
    cfg: DistillConfig, teacher: ModelRef, spec: StoreSpec, job: ShardJob, ids: np.ndarray, x: np.ndarray
) -> ShardResult:
    """:func:`kdflow.logits.compute_shard` on one shard's rows (``ids``, ``x``), independent of every other shard,
    the teacher scored on ``cfg.device`` (:func:`kdflow.device.score_logits`)."""
    device = resolve_device(cfg.device)
    model = _teacher_model(cfg.mlflow.tracking_uri, teacher, str(device))
    ls = LogitStore(open_store(cfg.store.root, endpoint_url=cfg.store.endpoint_url), spec.key)
    score = functools.partial(score_logits, model, x, device, cfg.store.score_batch_size, cfg.store.autocast)
    return compute_shard(ls, spec, job, ids, score, str(device))


@kdflow_task(
    name="compute-logit-shard-from-parquet", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_permanent
)
def compute_logit_shard_from_parquet(
    cfg: DistillConfig, teacher: ModelRef, spec: StoreSpec, job: ShardJob, source: RowSource
) -> ShardResult:
    """:func:`compute_logit_shard` on rows this task reads itself from the split's Parquet row groups
    (:func:`kdflow.rowgroups.read_rows`: S3 ranged reads, no full copy): on a Dask worker nothing but the shard's
    location travels from the flow, and the shard goes straight from the worker to the store."""
    ids, x = read_rows(source, cfg.data)
    return compute_logit_shard.fn(cfg, teacher, spec, job, ids, x)


@kdflow_task(name="finalize-teacher-logits", **store_retries)
def finalize_teacher_logits(
    cfg: DistillConfig,
    teacher: ModelRef,
    datasets: Mapping[str, AnySplit],
    plan: LogitPlan,
    results: list[tuple[str, ShardResult]],
    seconds: float,
) -> TeacherOutputs:
    """:func:`kdflow.precompute.finalize_logits`: each split's manifest written last, the teacher's size/latency
    profile measured once."""
    out = finalize_logits(
        cfg,
        teacher,
        datasets,
        plan,
        results,
        seconds,
        functools.partial(_teacher_model, cfg.mlflow.tracking_uri, teacher),  # on the CPU: profile, fp32 check
    )
    logger = get_run_logger()
    for name, st in out.stats.items():
        logger.info(
            "%s logits at %s: %s (%d of %d shards computed, %d kept, %d rows, %d values clipped; scored on %s)",
            name,
            out.store_uris[name],
            "reused" if st.reused else "computed",
            st.shards_computed,
            st.shards_total,
            st.shards_kept,
            st.rows_computed,
            st.clipped_values,
            ", ".join(f"{device} ({n} shards)" for device, n in sorted(st.scored_on.items())) or "-",
        )
        if st.autocast_check:
            logger.info("%s stored logits vs fp32 on the CPU: %s", name, st.autocast_check)
    return out


def precompute_teacher_logits(
    cfg: DistillConfig, teacher: ModelRef, datasets: Mapping[str, AnySplit]
) -> TeacherOutputs:
    """Plan, compute the missing shards as independent tasks (in parallel under the flow's task runner),
    then finalize: the steps of :meth:`kdflow.logits.LogitStore.precompute`, one task each. Called from a flow
    body; the teacher is loaded only if some shard or its profile is missing."""
    start = time.perf_counter()
    plan = plan_teacher_logits(cfg, teacher, datasets)
    layouts = worker_read_layouts(cfg, datasets, {name for name, _ in plan.jobs})
    futures = []
    with shard_resources(cfg.store):
        for name, job in plan.jobs:
            ds, spec = datasets[name], store_spec(cfg, teacher, name, datasets[name])
            if name in layouts:  # Dask: the worker reads the rows itself
                source = shard_source(layouts[name], job.start, job.stop, cfg.store.endpoint_url, ds.ids)
                futures.append((name, compute_logit_shard_from_parquet.submit(cfg, teacher, spec, job, source)))
            else:
                futures.append(
                    (name, compute_logit_shard.submit(cfg, teacher, spec, job, ds.ids[job.rows], ds.x[job.rows]))
                )
    results = [(name, f.result()) for name, f in futures]
    return finalize_teacher_logits(cfg, teacher, datasets, plan, results, time.perf_counter() - start)


def worker_read_layouts(
    cfg: DistillConfig, datasets: Mapping[str, AnySplit], names: set[str]
) -> dict[str, list[tuple[str, int]]]:
    """The Parquet layout (:func:`kdflow.rowgroups.split_layout`, footers only) of each split in ``names`` whose
    shard tasks read their rows themselves: every split left on disk (``data.out_of_core``), and under
    ``store.task_runner: dask`` every split whose files hold exactly its rows, so workers receive no arrays; splits
    built in memory (no such files) keep shipping their rows from the flow."""
    layouts = {n: list(datasets[n].layout) for n in names if isinstance(datasets[n], ParquetSplit)}
    if cfg.store.task_runner != "dask":
        return layouts
    for name in sorted(names - set(layouts)):
        try:
            layout = split_layout(datasets[name].uri, cfg.store.endpoint_url)
        except (DataError, StoreError):
            layout = []
        if sum(rows for _, rows in layout) == len(datasets[name]):
            layouts[name] = layout
        else:
            get_run_logger().info("%s: rows not read from Parquet by the workers (not a file split)", name)
    return layouts


@kdflow_task(name="load-teacher-logits", **store_retries)
def load_teacher_logits(cfg: DistillConfig, teacher: ModelRef, datasets: Mapping[str, Dataset]) -> TeacherLogits:
    """:func:`kdflow.precompute.read_eval_logits`: the evaluation splits' stored logits, verified (checksums,
    provenance, ids, shape, finiteness). Training splits are streamed by the trainer instead."""
    return read_eval_logits(cfg, teacher, datasets)


@kdflow_task(name="combine-teachers")
def combine_teachers(
    logits: list[TeacherLogits],
    profiles: list[dict[str, float]],
    val: Dataset,
    weighting: TeacherWeighting,
    temperature: float,
) -> TeacherEnsemble:
    """:func:`kdflow.ensemble.combine_teachers`: weight the teachers (uniform, or by validation accuracy on
    ``val``) and combine their stored evaluation logits."""
    ensemble = combine_teacher_logits(logits, profiles, val.y, weighting, temperature)
    if len(ensemble.teachers) > 1:
        get_run_logger().info(
            "%d teachers combined (%s): %s",
            len(ensemble.teachers),
            weighting,
            ", ".join(
                f"{t.name} v{t.version} w={w:.3f} val_acc={a:.4f}"
                for t, w, a in zip(ensemble.teachers, ensemble.weights, ensemble.val_accuracies)
            ),
        )
    return ensemble
