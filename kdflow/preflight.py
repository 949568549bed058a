"""Fail before compute: check that every location a flow will write is writable, before it starts.

A flow's first step writes and deletes a small probe object at each output location (the logit store, the
report folder, the MLflow artifact root, the inference-log root) through the same code path the flow uses
(:mod:`kdflow.store`), and stops with ONE :class:`PreflightError` listing every location that is not writable
and why: a missing bucket, rejected or insufficient credentials, a path that is not a directory, permission
denied. Without it a run computes the teacher's logits over every split and only then finds the bucket missing.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kdflow.store import (
    ACCESS_DENIED,
    REJECTED_CREDENTIALS,
    LocalStore,
    PermanentStoreError,
    S3Store,
    StoreError,
    open_store,
)

log = logging.getLogger(__name__)

PROBE_PREFIX = ".kdflow-preflight-"  # a dot name: LocalStore.list never shows it
OUTPUTS = ("store", "reports", "mlflow", "logs")


class PreflightError(StoreError):
    """One or more output locations are not writable; ``problems`` holds ``(location, reason)`` pairs."""

    def __init__(self, problems: list[tuple[Location, str]]):
        self.problems = problems
        listed = "; ".join(f"{loc.label} {loc.uri}: {why}" for loc, why in problems)
        super().__init__(f"{len(problems)} output location(s) not writable; stopped before any compute: {listed}")


@dataclass(frozen=True)
class Location:
    """An output location: the config key it comes from, its URI (local path, ``file://`` or ``s3://``) and,
    for S3, the endpoint (``None``: the boto3 default and ``AWS_ENDPOINT_URL*``)."""

    label: str
    uri: str
    endpoint_url: str | None = None


def output_locations(cfg: Any, outputs: Iterable[str]) -> list[Location]:
    """The locations of ``outputs`` in a distill or teacher config: ``store`` (``store.root``), ``reports``
    (``output_dir``), ``mlflow`` (``mlflow.artifact_location``; skipped when unset or not a local path or
    ``s3://``, e.g. ``mlflow-artifacts:`` served by a tracking server) and ``logs`` (``logs.root``)."""
    out: list[Location] = []
    for name in outputs:
        if name == "store":
            out.append(Location("store.root", cfg.store.root, cfg.store.endpoint_url))
        elif name == "reports":
            out.append(Location("output_dir", cfg.output_dir))
        elif name == "logs":
            out.append(Location("logs.root", cfg.logs.root, cfg.logs.endpoint_url))
        elif name == "mlflow":
            where = cfg.mlflow.artifact_location
            scheme = urlparse(where).scheme if where else None
            if where and (scheme in ("", "file", "s3") or (len(scheme or "") == 1 and os.name == "nt")):
                # MLflow's S3 artifact repository reads its endpoint from MLFLOW_S3_ENDPOINT_URL.
                out.append(Location("mlflow.artifact_location", where, os.environ.get("MLFLOW_S3_ENDPOINT_URL")))
            else:
                log.info("preflight: mlflow.artifact_location %r is not checked (not a local path or s3://)", where)
        else:
            raise ValueError(f"unknown output {name!r}: expected one of {', '.join(OUTPUTS)}")
    return out


def _local_reason(root: Path, exc: OSError) -> str:
    """Why a local directory could not be written, in words."""
    node = root
    while not node.exists() and node != node.parent:
        node = node.parent
    if node.exists() and not node.is_dir():
        return f"not a directory: {node} is a file"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or root}"
    if exc.errno == errno.EROFS:
        return f"read-only file system: {exc.filename or root}"
    return f"{type(exc).__name__}: {exc}"


def _s3_reason(store: S3Store, exc: StoreError) -> str:
    """Why an S3 location could not be written, in words (the full error stays in the log)."""
    code = exc.code if isinstance(exc, PermanentStoreError) else ""
    at = f" at {store.client.meta.endpoint_url}"
    if code == "NoSuchBucket":
        return f"bucket {store.bucket!r} does not exist{at} (NoSuchBucket)"
    check = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile boto3 uses"
    if code == "NoCredentials":
        return f"no usable AWS credentials found for{at}; {check}"
    if code in REJECTED_CREDENTIALS:
        return f"the credentials were rejected{at} ({code}); {check}"
    if code in ACCESS_DENIED:
        return f"access denied{at} ({code}): the credentials may not write to bucket {store.bucket!r}"
    return str(exc)


def probe(location: Location) -> str | None:
    """Write and delete a small probe object at ``location``; ``None`` if that worked, else why not.

    A probe that was written but cannot be deleted is only logged: no flow deletes from its outputs."""
    try:
        store = open_store(location.uri, endpoint_url=location.endpoint_url)
    except StoreError as exc:
        return str(exc)
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    created = _missing_dirs(store.root) if isinstance(store, LocalStore) else []
    try:
        try:
            store.put(key, b"kdflow preflight probe\n")
        except OSError as exc:  # LocalStore writes straight to the file system
            return _local_reason(store.root, exc) if isinstance(store, LocalStore) else f"{type(exc).__name__}: {exc}"
        except StoreError as exc:
            log.debug("preflight: %s %s: %s", location.label, location.uri, exc)
            return _s3_reason(store, exc) if isinstance(store, S3Store) else str(exc)
        try:
            store.delete(key)
        except (OSError, StoreError) as exc:
            log.warning(
                "preflight: wrote %s but could not delete it (%s); the flows do not delete, so this is not an error",
                store.url(key),
                exc,
            )
        return None
    finally:
        for d in created:  # deepest first; the flow creates them again when it writes
            try:
                d.rmdir()
            except OSError:
                break


def _missing_dirs(root: Path) -> list[Path]:
    """``root`` and those of its parents that do not exist yet, deepest first (the probe removes them again,
    so a flow that stops later, e.g. on invalid data, leaves no empty output folders behind)."""
    missing = []
    node = root
    while not node.exists() and node != node.parent:
        missing.append(node)
        node = node.parent
    return missing


def check_writable(locations: Iterable[Location]) -> None:
    """Probe every location (all of them, not just up to the first failure) and raise ONE
    :class:`PreflightError` naming each unwritable one and why; return ``None`` when all are writable."""
    problems = [(loc, why) for loc in locations if (why := probe(loc)) is not None]
    if problems:
        raise PreflightError(problems)
