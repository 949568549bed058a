"""Prefect tasks: thin wrappers around kdflow library calls (retries, logging, artifacts).

Every task is declared with :func:`kdflow_task`, Prefect's ``task`` with this project's defaults."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from kdflow.redact import install_log_redaction

# Every task and flow run log passes through this filter first: URIs with passwords and credential values are masked
# before Prefect ships the record to its API (and the UI).
install_log_redaction()


def kdflow_task(**kwargs: Any) -> Any:
    """``prefect.task(**kwargs)`` with ``cache_policy=NO_CACHE`` unless given: a task's inputs (models, arrays,
    datasets) are neither hashable cheaply nor meant to be cached across runs; each run recomputes or reuses
    what the stores hold. Use as ``@kdflow_task(name="...", retries=1)``."""
    kwargs.setdefault("cache_policy", NO_CACHE)
    return task(**kwargs)
