"""Promotion and rollback of ``champion`` as Prefect tasks, serialized per model by a global concurrency limit.

Every promotion of model ``<name>`` holds the one slot of the Prefect global concurrency limit
``kdflow-promote-<name>`` (limit 1, created on first use) while :func:`kdflow.registry.promote` reads the
champion, re-checks the SLA record, moves the alias and records the event. Any flow run on any machine
talking to the same Prefect API is serialized this way; the library itself stays Prefect-free and only
receives the slot as its ``lock``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run, task_run

from kdflow import registry
from tasks import kdflow_task

LOCK_PREFIX = "kdflow-promote-"
ACQUIRE_TIMEOUT_S = 300.0  # waiting longer than this for another promotion means something is stuck
LEASE_DURATION_S = 300.0  # Prefect renews the lease while the slot is held; it frees the slot if we die


def lock_name(name: str) -> str:
    """The global concurrency limit that serializes promotions of model ``name`` (Prefect-safe characters)."""
    return LOCK_PREFIX + re.sub(r"[/%&><]", "-", name)


def ensure_promotion_limit(name: str) -> str:
    """Create the limit ``kdflow-promote-<name>`` (1 slot, active) if absent; repair it if changed. Returns its name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = lock_name(name)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1, active=True))
                return limit
            except ObjectAlreadyExists:  # another promotion created it first
                existing = client.read_global_concurrency_limit_by_name(limit)
        if existing.limit != 1 or not existing.active:  # anything else would let two promotions interleave
            client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(limit=1, active=True))
    return limit


@contextlib.contextmanager
def promotion_slot(name: str, timeout_seconds: float = ACQUIRE_TIMEOUT_S) -> Iterator[None]:
    """Hold the single slot of ``kdflow-promote-<name>`` (strict: a missing limit is an error, never a no-op)."""
    from prefect.concurrency.sync import concurrency

    with concurrency(
        ensure_promotion_limit(name),
        occupy=1,
        strict=True,
        timeout_seconds=timeout_seconds,
        lease_duration=LEASE_DURATION_S,
    ):
        yield


def run_actor(actor: str) -> tuple[str, str | None]:
    """``actor`` with the flow name and run id appended when called inside a flow run; and that run id."""
    run_id = flow_run.get_id()
    if not run_id:
        return actor, None
    return f"{actor} (flow {flow_run.get_flow_name()}, run {flow_run.get_name()} {run_id})", str(run_id)


def _not_a_refusal(task, task_run, state) -> bool:
    """Retry only transient failures: a RegistryError (SLA refusal, unknown version) will not change."""
    try:
        state.result()
    except registry.RegistryError:
        return False
    except Exception:
        return True
    return True


@kdflow_task(name="promote-version", retries=2, retry_delay_seconds=2, retry_condition_fn=_not_a_refusal)
def promote_version(
    name: str, version: str, reason: str, actor: str, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Make ``version`` champion of ``name`` under the model's promotion limit (SLA re-checked inside it).

    Idempotent under retries: the event carries this task run's id (the same across Prefect's retries) as its
    ``request``; a retry finds it and records nothing new, completing the alias move if the first attempt
    failed between recording and moving (:func:`kdflow.registry.promote`)."""
    if tracking_uri:
        registry.configure_tracking(tracking_uri)
    who, run_id = run_actor(actor)
    request = task_run.get_id()
    result = registry.promote(
        name,
        version,
        reason,
        who,
        lock=promotion_slot(name),
        flow_run=run_id,
        request=str(request) if request else None,
    )
    get_run_logger().info(
        "%s: champion %s -> %s%s",
        name,
        result.previous,
        result.version,
        "" if result.changed else " (already champion: recorded no-op)",
    )
    return {
        "name": name,
        "version": result.version,
        "previous": result.previous,
        "changed": result.changed,
        "event": result.event.key,
    }


@kdflow_task(name="rollback-champion", retries=0)
def rollback_champion(name: str, reason: str, actor: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Move ``champion`` of ``name`` back to the champion before it, under the model's promotion limit.

    No retries: a retried rollback whose first attempt had succeeded would roll back one step too far."""
    if tracking_uri:
        registry.configure_tracking(tracking_uri)
    who, run_id = run_actor(actor)
    result = registry.rollback(name, reason, who, lock=promotion_slot(name), flow_run=run_id)
    get_run_logger().info("%s: champion rolled back %s -> %s", name, result.previous, result.version)
    return {
        "name": name,
        "version": result.version,
        "previous": result.previous,
        "changed": result.changed,
        "event": result.event.key,
    }
