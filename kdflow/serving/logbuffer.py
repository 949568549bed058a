"""The scoring server's inference log: an in-memory buffer, a background flusher, and a local spill directory.

The request path only appends a :class:`LogBatch` to a list (under a lock held for the append): it never waits
on storage. A flusher thread writes the buffered rows as parts of the inference-log format
(:mod:`kdflow.inference_logs`: ``<logs.root>/date=YYYY-MM-DD/part-<uuid>.parquet``) every ``flush_rows`` rows or
``flush_seconds`` seconds, and :meth:`LogBuffer.close` writes the rest (the server's SIGTERM path).

A part whose write fails (S3 down, a full disk at the root) is written, same key and same bytes, under the spill
directory ``<spill_dir>/<sha256(logs.root)[:12]>/`` instead, and every flush first re-uploads what is spilled
(then deletes the local copy): an accepted row is never lost, and a part uploaded twice (a crash between the
upload and the delete) lands on the same key, so it is never duplicated. Spilled parts left by an earlier
process are uploaded by the next one with the same root.

Refused requests are recorded, one JSON line each, under ``<logs.root>/rejected/date=YYYY-MM-DD/``: outside
the ``date=`` partitions the log readers scan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import orjson

from kdflow.inference_logs import InferenceLogWriter
from kdflow.store import LocalStore, ObjectStore, S3Store, open_store

REJECTED_PREFIX = "rejected/"

log = logging.getLogger(__name__)


@dataclass
class LogBatch:
    """The rows of one request: ``x`` (n, d), the student's calibrated ``probs`` (n, C), who answered each row,
    the version that served them, and ``teacher_logits`` (n, C) for shadow-scored rows (None: none)."""

    timestamp: float  # seconds since the epoch, when the request was accepted
    request_ids: list[str]
    version: str
    x: np.ndarray
    probs: np.ndarray
    answered_by: list[str]
    latency_ms: float
    teacher_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.request_ids)


def log_store(root: str, endpoint_url: str | None) -> ObjectStore:
    """The store of ``root``; on S3 with few retries and short timeouts, so an outage spills in seconds."""
    parsed = urlparse(root)
    if parsed.scheme != "s3":
        return open_store(root, endpoint_url=endpoint_url)
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=3, read_timeout=20),
    )
    return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint, client=client)


class SpillingStore(ObjectStore):
    """``primary`` for every operation, except that a failed :meth:`put` writes to ``spill`` instead."""

    def __init__(self, primary: ObjectStore, spill: LocalStore):
        self.primary = primary
        self.spill = spill
        self.uri = primary.uri
        self.spilled = 0

    def put(self, key: str, data: bytes) -> None:
        try:
            self.primary.put(key, data)
        except Exception as exc:  # StoreError from S3, OSError from a local root
            self.spill.put(key, data)
            self.spilled += 1
            log.warning("log write failed, spilled to %s: %s", self.spill.url(key), exc)

    def get(self, key: str) -> bytes:
        return self.primary.get(key)

    def exists(self, key: str) -> bool:
        return self.primary.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.primary.list(prefix)

    def delete(self, key: str) -> None:
        self.primary.delete(key)

    def size(self, key: str) -> int:
        return self.primary.size(key)

    def upload_spilled(self) -> int:
        """Re-upload every spilled part to the primary store (same key), deleting each local copy after its
        upload; stops at the first failure. Returns how many were uploaded."""
        done = 0
        for key in self.spill.list():
            try:
                self.primary.put(key, self.spill.get(key))
            except Exception as exc:  # still down: retried at the next flush
                log.warning("%d spilled part(s) still pending; %s", len(self.spill.list()), exc)
                break
            self.spill.delete(key)
            done += 1
        if done:
            log.info("uploaded %d spilled part(s) to %s", done, self.primary.uri)
        return done

    def pending(self) -> int:
        """Spilled parts not yet uploaded."""
        return len(self.spill.list())


def spill_root(spill_dir: str, root: str) -> Path:
    """The spill directory of one log root: ``<spill_dir>/<first 12 hex of sha256(root)>``."""
    return Path(spill_dir) / hashlib.sha256(root.encode()).hexdigest()[:12]


class LogBuffer:
    """Buffered inference-log rows of one served model name, flushed by a background thread."""

    def __init__(
        self,
        root: str,
        model_name: str,
        spill_dir: str,
        flush_rows: int,
        flush_seconds: float,
        endpoint_url: str | None = None,
    ):
        self.root = root
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.store = SpillingStore(log_store(root, endpoint_url), LocalStore(spill_root(spill_dir, root)))
        self.writer = InferenceLogWriter(root, model_name, "", endpoint_url=endpoint_url)
        self.writer.store = self.store
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._batches: list[LogBatch] = []
        self._rows = 0
        self._rejected: list[dict] = []
        self.rows_written = 0
        self.spill_pending = self.store.pending()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request path
    def append(self, batch: LogBatch) -> None:
        """Buffer one request's rows (no I/O); wakes the flusher once ``flush_rows`` rows wait."""
        with self._lock:
            self._batches.append(batch)
            self._rows += len(batch)
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    def reject(self, status: int, error: str, path: str, body_bytes: int) -> None:
        """Record a refused request (no I/O here)."""
        record = {"timestamp": datetime.now(timezone.utc).isoformat(), "status": status, "error": error,
                  "path": path, "body_bytes": body_bytes}  # fmt: skip
        with self._lock:
            self._rejected.append(record)

    @property
    def depth(self) -> int:
        """Rows waiting in memory."""
        return self._rows

    # ------------------------------------------------------------------ flusher
    def flush(self) -> int:
        """Write every buffered row (one part per UTC date, spilled on failure) and the rejection records, after
        re-uploading spilled parts. Returns the rows written."""
        with self._flush_lock:
            self.store.upload_spilled()
            with self._lock:
                batches, self._batches, self._rows = self._batches, [], 0
                rejected, self._rejected = self._rejected, []
            rows = sum(len(b) for b in batches)
            if batches:
                for version in sorted({b.version for b in batches}):
                    self._log(version, [b for b in batches if b.version == version])
                self.writer.flush()  # a failed put spills: it raises only when the spill directory fails too
                self.rows_written += rows
            if rejected:
                self._write_rejected(rejected)
            self.spill_pending = self.store.pending()
            return rows

    def _log(self, version: str, batches: list[LogBatch]) -> None:
        n = [len(b) for b in batches]
        num_classes = batches[0].probs.shape[1]
        teacher = None
        if any(b.teacher_logits is not None for b in batches):
            teacher = np.concatenate(
                [
                    b.teacher_logits if b.teacher_logits is not None else np.full((len(b), num_classes), np.nan)
                    for b in batches
                ]
            )
        self.writer.log(
            np.concatenate([b.x for b in batches]),
            np.concatenate([b.probs for b in batches]),
            np.repeat(np.array([b.timestamp for b in batches]) * 1e9, n).astype("datetime64[ns]"),
            request_ids=[r for b in batches for r in b.request_ids],
            teacher_logits=teacher,
            answered_by=[a for b in batches for a in b.answered_by],
            latency_ms=np.repeat([b.latency_ms for b in batches], n),
            model_version=version,
        )

    def _write_rejected(self, records: list[dict]) -> None:
        by_day: dict[str, list[dict]] = {}
        for r in records:
            by_day.setdefault(r["timestamp"][:10], []).append(r)
        for day, rs in by_day.items():
            key = f"{REJECTED_PREFIX}date={day}/part-{uuid.uuid4().hex}.jsonl"
            self.store.put(key, b"".join(orjson.dumps(r) + b"\n" for r in rs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception as exc:  # the rows stay in the writer and go with the next flush
                log.error("log flush failed (will retry): %s", exc)
                time.sleep(1.0)

    def start(self) -> None:
        """Start the flusher thread (it first uploads parts spilled by an earlier process)."""
        self._thread = threading.Thread(target=self._run, name="kdflow-log-flusher", daemon=True)
        self._thread.start()

    def close(self) -> int:
        """Stop the flusher and write everything still buffered. Returns the rows of the final flush."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        return self.flush()
