"""The first step of every flow that writes: its output locations are checked writable before any work, and
the retry condition shared by the tasks that touch object stores (a permanent store error is never retried)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from kdflow.config_base import ConfigError
from kdflow.device import resolve_device
from kdflow.preflight import PreflightError, check_writable, output_locations
from kdflow.store import PermanentStoreError
from tasks import kdflow_task


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run unless its exception, or one it wraps, is a
    :class:`PermanentStoreError` or :class:`PreflightError` (missing bucket, rejected credentials: a retry
    would only repeat the same answer and delay the error)."""
    try:
        state.result()
    except BaseException as exc:  # the task's own exception, re-raised by result()
        seen: set[int] = set()
        e: BaseException | None = exc
        while e is not None and id(e) not in seen:
            if isinstance(e, (PermanentStoreError, PreflightError, ConfigError)):
                return False
            seen.add(id(e))
            e = e.__cause__ or e.__context__
    return True


@kdflow_task(name="check-outputs-writable")
def check_outputs(cfg: Any, outputs: tuple[str, ...], device: bool = False) -> list[str]:
    """Write and delete a probe at each of ``outputs`` of ``cfg`` (``store``, ``reports``, ``mlflow``, ``logs``;
    see :func:`kdflow.preflight.output_locations`): stop the flow with ONE :class:`PreflightError` naming every
    location that is not writable, before validation and before any teacher or training compute; with ``device``
    (flows that score or train), resolve ``cfg.device`` too (:func:`kdflow.device.resolve_device`: CUDA asked for
    where there is none is one ConfigError)."""
    locations = output_locations(cfg, outputs)
    check_writable(locations)
    logger = get_run_logger()
    if device:
        logger.info("device: %s resolves to %s", cfg.device, resolve_device(cfg.device))
    for loc in locations:
        logger.info("writable: %s %s", loc.label, loc.uri)
    return [loc.uri for loc in locations]
