"""Teacher-logit store: raw teacher logits, sharded, fp16, checksummed, with a manifest written last.

Layout under an object store (``<key>`` from :func:`store_key`)::

    <key>/shard-00000.npz      ids (n,) and logits (n, C) float16
    <key>/shard-00000.sha256   SHA-256 of the shard bytes (written after the shard: resume marker)
    <key>/manifest.json        written last; a store without it is incomplete and never read

Raw logits (not softened) are stored so any later temperature applies exactly. Values outside
``[-clip, clip]`` are clipped (and counted) before the fp16 cast, whose range ends at 65504.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from kdflow import __version__
from kdflow.store import ObjectStore, StoreError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class LogitStoreError(RuntimeError):
    """A logit store is incomplete, corrupt or does not belong to the expected teacher and data."""


@dataclass
class ShardInfo:
    """One shard's object key, row count and SHA-256."""

    key: str
    rows: int
    sha256: str


@dataclass
class Manifest:
    """What a complete logit store holds and where it came from."""

    teacher_uri: str
    teacher_name: str
    teacher_version: str
    data_fingerprint: str
    dataset: str
    num_rows: int
    num_classes: int
    dtype: str = "float16"
    mode: str = "dense"
    clip_value: float | None = None
    clipped_values: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    created_at: float = 0.0
    kdflow_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        """Manifest as pretty JSON bytes."""
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Manifest":
        """Parse a manifest written by :meth:`to_json`."""
        data = json.loads(raw)
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return cls(**data)


def store_key(teacher_name: str, teacher_version: str | int, data_fingerprint: str) -> str:
    """``logits/<teacher>/v<version>/<fingerprint[:32]>``: one store per teacher version and dataset content."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", teacher_name)
    return f"logits/{safe}/v{teacher_version}/{data_fingerprint[:32]}"


def teacher_profile_key(teacher_name: str, teacher_version: str | int) -> str:
    """Where the teacher's size/latency profile is kept, beside its logit stores."""
    return store_key(teacher_name, teacher_version, "x").rsplit("/", 1)[0] + "/teacher_profile.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode_shard(ids: np.ndarray, logits: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, ids=ids, logits=logits.astype(np.float16))
    return buf.getvalue()


def _decode_shard(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return npz["ids"], npz["logits"]


@dataclass
class PrecomputeStats:
    """What one :meth:`LogitStore.precompute` call did."""

    reused: bool
    shards_total: int
    shards_computed: int
    rows_computed: int
    clipped_values: int
    seconds: float


class LogitStore:
    """Teacher logits for one dataset and one teacher version at ``store/key``."""

    def __init__(self, store: ObjectStore, key: str):
        self.store = store
        self.key = key.rstrip("/")

    @property
    def uri(self) -> str:
        """Full URI of this logit store."""
        return self.store.url(self.key)

    def _k(self, name: str) -> str:
        return f"{self.key}/{name}"

    def manifest(self) -> Manifest | None:
        """The manifest, or ``None`` while the store is incomplete."""
        if not self.store.exists(self._k(MANIFEST)):
            return None
        try:
            return Manifest.from_json(self.store.get(self._k(MANIFEST)))
        except (ValueError, TypeError, KeyError) as exc:
            raise LogitStoreError(f"{self.uri}/{MANIFEST}: unreadable manifest ({exc})") from exc

    def is_complete_for(self, teacher_version: str, data_fingerprint: str) -> bool:
        """Whether a manifest exists and names this teacher version and data fingerprint."""
        m = self.manifest()
        return m is not None and m.teacher_version == str(teacher_version) and m.data_fingerprint == data_fingerprint

    def _valid_shard(self, index: int, expected_ids: np.ndarray) -> tuple[str, int] | None:
        """(sha, rows) of an already written shard whose checksum and ids verify, else ``None``."""
        shard, marker = self._k(f"shard-{index:05d}.npz"), self._k(f"shard-{index:05d}.sha256")
        if not (self.store.exists(shard) and self.store.exists(marker)):
            return None
        raw = self.store.get(shard)
        sha = _sha256(raw)
        if sha != self.store.get(marker).decode().strip():
            return None
        try:
            ids, logits = _decode_shard(raw)
        except Exception:
            return None
        if not np.array_equal(ids, expected_ids):
            return None
        return sha, len(ids)

    def precompute(
        self,
        ids: np.ndarray,
        teacher_fn: Callable[[slice], np.ndarray],
        *,
        teacher_uri: str,
        teacher_name: str,
        teacher_version: str,
        data_fingerprint: str,
        dataset: str,
        rows_per_shard: int = 8192,
        clip_value: float | None = 50.0,
        progress: Callable[[int], None] | None = None,
    ) -> PrecomputeStats:
        """Compute and store teacher logits unless a complete store for this teacher and data exists.

        ``teacher_fn(rows)`` returns float32 logits (len(rows), C) for ``ids[rows]``. Shards already
        written by an interrupted run are kept when their checksum and ids verify; only the missing or
        bad ones are recomputed. The manifest is written last.
        """
        start = time.perf_counter()
        n = len(ids)
        n_shards = max(1, -(-n // rows_per_shard))
        existing = self.manifest()
        if existing is not None:
            if existing.teacher_version == str(teacher_version) and existing.data_fingerprint == data_fingerprint:
                return PrecomputeStats(True, n_shards, 0, 0, existing.clipped_values, time.perf_counter() - start)
            raise LogitStoreError(
                f"{self.uri}: manifest is for teacher version {existing.teacher_version} / data "
                f"{existing.data_fingerprint[:12]}, expected {teacher_version} / {data_fingerprint[:12]}"
            )
        shards: list[ShardInfo] = []
        computed = rows = clipped = 0
        num_classes = None
        for i in range(n_shards):
            rows_slice = slice(i * rows_per_shard, min(n, (i + 1) * rows_per_shard))
            shard_ids = ids[rows_slice]
            key = f"shard-{i:05d}.npz"
            valid = self._valid_shard(i, shard_ids)
            if valid is None:
                logits = np.asarray(teacher_fn(rows_slice), dtype=np.float32)
                if logits.ndim != 2 or len(logits) != len(shard_ids):
                    raise LogitStoreError(f"teacher returned shape {logits.shape} for {len(shard_ids)} rows")
                if not np.isfinite(logits).all():
                    raise LogitStoreError(f"teacher produced non-finite logits for {dataset} shard {i}")
                if clip_value is not None:
                    over = np.abs(logits) > clip_value
                    clipped += int(over.sum())
                    logits = np.clip(logits, -clip_value, clip_value)
                raw = _encode_shard(shard_ids, logits)
                sha = _sha256(raw)
                self.store.put(self._k(key), raw)
                self.store.put(self._k(f"shard-{i:05d}.sha256"), sha.encode())
                computed += 1
                rows += len(shard_ids)
                num_classes = logits.shape[1]
            else:
                sha = valid[0]
            shards.append(ShardInfo(key=key, rows=len(shard_ids), sha256=sha))
            if progress:
                progress(len(shard_ids))
        if num_classes is None:
            num_classes = _decode_shard(self.store.get(self._k(shards[0].key)))[1].shape[1]
        manifest = Manifest(
            teacher_uri=teacher_uri, teacher_name=teacher_name, teacher_version=str(teacher_version),
            data_fingerprint=data_fingerprint, dataset=dataset, num_rows=n, num_classes=int(num_classes),
            clip_value=clip_value, clipped_values=clipped, shards=shards, created_at=time.time(),
        )
        self.store.put(self._k(MANIFEST), manifest.to_json())
        return PrecomputeStats(False, n_shards, computed, rows, clipped, time.perf_counter() - start)

    def iter_shards(self, manifest: Manifest | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, logits fp16)`` per shard, verifying every checksum before use."""
        manifest = manifest or self.require_manifest()
        for shard in manifest.shards:
            try:
                raw = self.store.get(self._k(shard.key))
            except StoreError as exc:
                raise LogitStoreError(f"{self.uri}: shard {shard.key} missing ({exc})") from exc
            if _sha256(raw) != shard.sha256:
                raise LogitStoreError(f"{self.uri}: shard {shard.key} failed its SHA-256 check (corrupt); refusing to use it")
            ids, logits = _decode_shard(raw)
            if len(ids) != shard.rows:
                raise LogitStoreError(f"{self.uri}: shard {shard.key} holds {len(ids)} rows, manifest says {shard.rows}")
            yield ids, logits

    def require_manifest(self) -> Manifest:
        """The manifest, or a clear error that the store is incomplete."""
        manifest = self.manifest()
        if manifest is None:
            raise LogitStoreError(f"{self.uri}: no manifest - the store is incomplete and is not trusted")
        return manifest

    def read_aligned(self, ids: np.ndarray, teacher_version: str, data_fingerprint: str) -> np.ndarray:
        """Logits (float32, len(ids) x C) joined to ``ids`` by id, after checking the manifest's provenance."""
        manifest = self.require_manifest()
        if manifest.teacher_version != str(teacher_version) or manifest.data_fingerprint != data_fingerprint:
            raise LogitStoreError(
                f"{self.uri}: manifest names teacher version {manifest.teacher_version} and data fingerprint "
                f"{manifest.data_fingerprint[:12]}, expected {teacher_version} and {data_fingerprint[:12]}"
            )
        parts = list(self.iter_shards(manifest))
        stored_ids = np.concatenate([p[0] for p in parts])
        logits = np.concatenate([p[1] for p in parts]).astype(np.float32)
        index = pd.Index(stored_ids)
        pos = index.get_indexer(pd.Index(ids))
        missing = pos < 0
        if missing.any():
            raise LogitStoreError(f"{self.uri}: {int(missing.sum())} dataset id(s) have no stored logits, e.g. {ids[missing][:3].tolist()}")
        return logits[pos]
