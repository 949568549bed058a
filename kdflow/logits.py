"""Teacher-logit store: raw teacher logits, sharded, fp16, checksummed, with a manifest written last.

Layout under an object store (``<key>`` from :func:`store_key`)::

    <key>/shard-00000.npz      ids (n,) and logits (n, C) float16
    <key>/shard-00000.sha256   JSON: SHA-256 of the shard bytes, rows, clipped count, clip and top-k
                               (written after the shard: the resume marker)
    <key>/manifest.json        written last; a store without it is incomplete and never read

The key names the teacher version, the data fingerprint and every setting that changes the stored values
(dtype, clip, top-k), so a changed setting never reuses old logits.

A precomputation is three steps, the one implementation both :meth:`LogitStore.precompute` and the Prefect
tasks in ``tasks/logits.py`` call: :func:`plan_shards` (reuse a complete store, else keep the shards an
interrupted run left valid), :func:`compute_shard` per missing shard (independent, parallelizable) and
:func:`finalize_shards` (write the manifest last).

Raw logits (not softened) are stored so any later temperature applies exactly. Values outside
``[-clip, clip]`` are clipped (and counted) before the fp16 cast, whose range ends at 65504.

``topk`` mode (for many-class teachers) stores, per row, the k largest log-probabilities at T=1 (fp16)
and their class indices (uint16). Reading reconstructs full log-probabilities with the missing mass
``1 - sum(top-k probs)`` spread uniformly over the other ``C - k`` classes ("uniform" rule). The top-k
log-probabilities differ from the raw logits by a per-row constant, so softmax at any T is exact on the
kept classes up to that rule.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from kdflow import __version__
from kdflow.store import ObjectStore, StoreError

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)
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
    top_k: int | None = None
    missing_mass_rule: str | None = None
    autocast: str = "none"  # the teacher's scoring precision (kdflow.device.score_logits)
    autocast_check: dict | None = None  # stored vs fp32 logits on a sample (kdflow.device.AutocastCheck.as_dict)
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


def store_key(
    teacher_name: str,
    teacher_version: str | int,
    data_fingerprint: str,
    top_k: int | None = None,
    clip_value: float | None = 50.0,
    autocast: str = "none",
) -> str:
    """``logits/<teacher>/v<version>/<fingerprint[:32]>-f16-clip<c>`` (``-f16u16-clip<c>-top<k>`` in top-k mode:
    fp16 log-probs and uint16 class indices): one store per teacher version,
    dataset content and every setting that changes the stored values (dtype, clip, top-k), so changing any of
    them computes a new store instead of silently reusing old logits. ``clip<c>`` is ``repr(float(c))`` (exact)
    or ``noclip``; teacher scoring under autocast adds ``-bf16``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", teacher_name)
    clip = "noclip" if clip_value is None else f"clip{float(clip_value)!r}"
    values = f"f16u16-{clip}-top{top_k}" if top_k else f"f16-{clip}"
    precision = "" if autocast == "none" else f"-{autocast}"
    return f"logits/{safe}/v{teacher_version}/{data_fingerprint[:32]}-{values}{precision}"


def teacher_profile_key(teacher_name: str, teacher_version: str | int) -> str:
    """Where the teacher's size/latency profile is kept, beside its logit stores."""
    return store_key(teacher_name, teacher_version, "x").rsplit("/", 1)[0] + "/teacher_profile.json"


def shard_name(index: int) -> str:
    """Object name of shard ``index``."""
    return f"shard-{index:05d}.npz"


def marker_name(index: int) -> str:
    """Object name of shard ``index``'s checksum marker (JSON: sha256, rows, clipped)."""
    return f"shard-{index:05d}.sha256"


def shard_slices(num_rows: int, rows_per_shard: int) -> list[slice]:
    """Row ranges of the shards of a dataset of ``num_rows`` rows (at least one shard)."""
    return [slice(i, min(num_rows, i + rows_per_shard)) for i in range(0, max(num_rows, 1), rows_per_shard)]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode_shard(ids: np.ndarray, logits: np.ndarray, top_k: int | None = None) -> bytes:
    """One shard as ``.npz``: ids and fp16 logits (dense) or fp16 top-k log-probs + uint16 class indices."""
    buf = io.BytesIO()
    if top_k:
        logp = logits - logits.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        index = np.argsort(-logp, axis=1, kind="stable")[:, :top_k]
        np.savez(
            buf,
            ids=ids,
            topk_logprobs=np.take_along_axis(logp, index, 1).astype(np.float16),
            topk_index=index.astype(np.uint16),
            num_classes=np.int64(logits.shape[1]),
        )
    else:
        np.savez(buf, ids=ids, logits=logits.astype(np.float16))
    return buf.getvalue()


def topk_to_logprobs(topk_logprobs: np.ndarray, topk_index: np.ndarray, num_classes: int) -> np.ndarray:
    """Full (n, C) log-probabilities from top-k ones: the missing mass ``1 - sum(exp(top-k))`` is spread
    uniformly over the ``C - k`` other classes (floored at 1e-8 per class so the log stays finite)."""
    n, k = topk_logprobs.shape
    kept = topk_logprobs.astype(np.float32)
    missing = np.clip(1.0 - np.exp(kept).sum(axis=1, keepdims=True), 0.0, 1.0)
    fill = np.log(np.maximum(missing / max(1, num_classes - k), 1e-8))
    out = np.broadcast_to(fill, (n, num_classes)).astype(np.float32).copy()
    np.put_along_axis(out, topk_index.astype(np.int64), kept, axis=1)
    return out


def _decode_shard(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, logits)``; top-k shards are expanded to full log-probabilities."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        if "logits" in npz:
            return npz["ids"], npz["logits"]
        return npz["ids"], topk_to_logprobs(npz["topk_logprobs"], npz["topk_index"], int(npz["num_classes"]))


@dataclass(frozen=True)
class StoreSpec:
    """Everything one logit store is computed from: teacher, data, shard size and the stored-value settings."""

    teacher_uri: str
    teacher_name: str
    teacher_version: str
    data_fingerprint: str
    dataset: str
    rows_per_shard: int = 8192
    clip_value: float | None = 50.0
    top_k: int | None = None
    autocast: str = "none"

    @property
    def key(self) -> str:
        """This spec's :func:`store_key`."""
        return store_key(
            self.teacher_name, self.teacher_version, self.data_fingerprint, self.top_k, self.clip_value, self.autocast
        )


@dataclass(frozen=True)
class ShardJob:
    """One shard still to compute: its index and row range in the dataset."""

    index: int
    start: int
    stop: int

    @property
    def rows(self) -> slice:
        """The shard's rows as a slice of the dataset."""
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class ShardResult:
    """One verified or freshly written shard: index, manifest entry, clipped values, device that scored it."""

    index: int
    info: ShardInfo
    clipped: int
    device: str | None = None  # None: not known (a shard kept from an earlier run)


@dataclass
class ShardPlan:
    """What :func:`plan_shards` found: a complete store (``reused``), or the shards an earlier run left valid
    (``kept``) and the ones still to compute (``jobs``)."""

    shards_total: int
    reused: Manifest | None = None
    kept: list[ShardResult] = field(default_factory=list)
    jobs: list[ShardJob] = field(default_factory=list)


@dataclass
class PrecomputeStats:
    """What one precomputation did: reused a complete store, or kept/computed which shards."""

    reused: bool
    shards_total: int
    shards_computed: int
    rows_computed: int
    clipped_values: int
    seconds: float
    shards_kept: int = 0
    autocast_check: dict | None = None  # stored vs fp32 logits on a sample, when the teacher ran on a GPU or bf16
    scored_on: dict[str, int] = field(default_factory=dict)  # shards computed now, by the device that scored them


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

    def existing_shard(
        self, index: int, expected_ids: Callable[[], np.ndarray], *, clip_value: float | None, top_k: int | None
    ) -> tuple[ShardInfo, int] | None:
        """(info, clipped count) of an already written shard whose checksum, ids (``expected_ids()``, read only for
        a shard that exists) and stored-value settings (clip, top-k, in its marker) verify, else ``None``."""
        shard, marker = self._k(shard_name(index)), self._k(marker_name(index))
        if not (self.store.exists(shard) and self.store.exists(marker)):
            return None
        raw = self.store.get(shard)
        try:
            meta = json.loads(self.store.get(marker))
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                ids = npz["ids"]
        except Exception:
            return None
        if _sha256(raw) != meta.get("sha256") or not np.array_equal(ids, expected_ids()):
            return None
        if meta.get("clip_value", "absent") != clip_value or meta.get("top_k", "absent") != top_k:
            return None
        return ShardInfo(key=shard_name(index), rows=len(ids), sha256=meta["sha256"]), int(meta.get("clipped", 0))

    def write_shard(
        self, index: int, ids: np.ndarray, logits: np.ndarray, clip_value: float | None = 50.0, top_k: int | None = None
    ) -> tuple[ShardInfo, int]:
        """Check, clip and store one shard, then its checksum marker (the marker is what resume trusts)."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 2 or len(logits) != len(ids):
            raise LogitStoreError(f"{self.uri}: teacher returned shape {logits.shape} for {len(ids)} rows")
        if not np.isfinite(logits).all():
            raise LogitStoreError(f"{self.uri}: teacher produced non-finite logits for shard {index}")
        if top_k is not None and not 0 < top_k < logits.shape[1]:
            raise LogitStoreError(
                f"top_k must be in [1, {logits.shape[1] - 1}] for {logits.shape[1]} classes, got {top_k}"
            )
        clipped = 0
        if clip_value is not None:
            clipped = int((np.abs(logits) > clip_value).sum())
            logits = np.clip(logits, -clip_value, clip_value)
        raw = _encode_shard(ids, logits, top_k)
        sha = _sha256(raw)
        self.store.put(self._k(shard_name(index)), raw)
        marker = {"sha256": sha, "rows": len(ids), "clipped": clipped, "clip_value": clip_value, "top_k": top_k}
        self.store.put(self._k(marker_name(index)), json.dumps(marker).encode())
        return ShardInfo(key=shard_name(index), rows=len(ids), sha256=sha), clipped

    def reusable(
        self, teacher_version: str, data_fingerprint: str, *, clip_value: float | None, top_k: int | None
    ) -> Manifest | None:
        """The manifest if this store is complete for this teacher version, data, clip and top-k; a clear
        error if it names others; ``None`` while the store is incomplete."""
        existing = self.manifest()
        if existing is None:
            return None
        if existing.teacher_version != str(teacher_version) or existing.data_fingerprint != data_fingerprint:
            raise LogitStoreError(
                f"{self.uri}: manifest is for teacher version {existing.teacher_version} / data "
                f"{existing.data_fingerprint[:12]}, expected {teacher_version} / {data_fingerprint[:12]}"
            )
        if existing.clip_value != clip_value or existing.top_k != top_k:
            raise LogitStoreError(
                f"{self.uri}: manifest holds logits stored with clip {existing.clip_value} / top_k {existing.top_k}, "
                f"expected clip {clip_value} / top_k {top_k}; use the store key of these settings (store_key)"
            )
        return existing

    def write_manifest(
        self,
        shards: list[ShardInfo],
        clipped: int,
        *,
        teacher_uri: str,
        teacher_name: str,
        teacher_version: str,
        data_fingerprint: str,
        dataset: str,
        clip_value: float | None,
        top_k: int | None,
        autocast: str = "none",
        autocast_check: dict | None = None,
    ) -> Manifest:
        """Write the manifest last, marking the store complete."""
        num_classes = _decode_shard(self.store.get(self._k(shards[0].key)))[1].shape[1]
        manifest = Manifest(
            teacher_uri=teacher_uri,
            teacher_name=teacher_name,
            teacher_version=str(teacher_version),
            data_fingerprint=data_fingerprint,
            dataset=dataset,
            num_rows=sum(s.rows for s in shards),
            num_classes=int(num_classes),
            clip_value=clip_value,
            clipped_values=clipped,
            shards=shards,
            created_at=time.time(),
            dtype="float16" if not top_k else "float16+uint16",
            mode="topk" if top_k else "dense",
            top_k=top_k,
            missing_mass_rule="uniform" if top_k else None,
            autocast=autocast,
            autocast_check=autocast_check,
        )
        self.store.put(self._k(MANIFEST), manifest.to_json())
        return manifest

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
        top_k: int | None = None,
    ) -> PrecomputeStats:
        """Compute and store teacher logits unless a complete store for this teacher and data exists.

        ``teacher_fn(rows)`` returns float32 logits (len(rows), C) for ``ids[rows]``. This only sequences
        :func:`plan_shards`, :func:`compute_shard` per missing shard and :func:`finalize_shards` - the same
        functions the Prefect flows run as one task each (``tasks/logits.py``).
        """
        spec = StoreSpec(
            teacher_uri=teacher_uri,
            teacher_name=teacher_name,
            teacher_version=str(teacher_version),
            data_fingerprint=data_fingerprint,
            dataset=dataset,
            rows_per_shard=rows_per_shard,
            clip_value=clip_value,
            top_k=top_k,
        )
        start = time.perf_counter()
        plan = plan_shards(self, spec, ids)
        results = [
            compute_shard(self, spec, job, ids[job.rows], functools.partial(teacher_fn, job.rows)) for job in plan.jobs
        ]
        return finalize_shards(self, spec, plan, results, time.perf_counter() - start)

    def iter_shards(self, manifest: Manifest | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, logits fp16)`` per shard, verifying every checksum before use."""
        manifest = manifest or self.require_manifest()
        for shard in manifest.shards:
            try:
                raw = self.store.get(self._k(shard.key))
            except StoreError as exc:
                raise LogitStoreError(f"{self.uri}: shard {shard.key} missing ({exc})") from exc
            if _sha256(raw) != shard.sha256:
                raise LogitStoreError(
                    f"{self.uri}: shard {shard.key} failed its SHA-256 check (corrupt); refusing to use it"
                )
            ids, logits = _decode_shard(raw)
            if len(ids) != shard.rows:
                raise LogitStoreError(
                    f"{self.uri}: shard {shard.key} holds {len(ids)} rows, manifest says {shard.rows}"
                )
            yield ids, logits

    def read_shard(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, logits)`` of written shard ``index`` (before the manifest exists: the finalize checks)."""
        return _decode_shard(self.store.get(self._k(shard_name(index))))

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
            raise LogitStoreError(
                f"{self.uri}: {int(missing.sum())} dataset id(s) have no stored logits, e.g. {ids[missing][:3].tolist()}"
            )
        return logits[pos]


def plan_shards(ls: LogitStore, spec: StoreSpec, ids: np.ndarray) -> ShardPlan:
    """Step 1 of a precomputation: reuse a complete store for ``spec``, else list which shards an interrupted
    run left valid (checksum, ids and settings verify) and which must be computed."""
    slices = shard_slices(len(ids), spec.rows_per_shard)
    plan = ShardPlan(shards_total=len(slices))
    plan.reused = ls.reusable(spec.teacher_version, spec.data_fingerprint, clip_value=spec.clip_value, top_k=spec.top_k)
    if plan.reused is not None:
        return plan
    for i, rows in enumerate(slices):
        found = ls.existing_shard(i, lambda r=rows: ids[r], clip_value=spec.clip_value, top_k=spec.top_k)
        if found is None:
            plan.jobs.append(ShardJob(i, rows.start, rows.stop))
        else:
            plan.kept.append(ShardResult(i, *found))
    log.info(
        "%s: %d of %d shard(s) to compute, %d kept from an earlier run",
        ls.uri,
        len(plan.jobs),
        plan.shards_total,
        len(plan.kept),
    )
    return plan


def compute_shard(
    ls: LogitStore,
    spec: StoreSpec,
    job: ShardJob,
    ids: np.ndarray,
    teacher_fn: Callable[[], np.ndarray],
    device: str | None = None,
) -> ShardResult:
    """Step 2, once per planned job and independent of every other shard: run ``teacher_fn()`` (float32 logits
    for this shard's ``ids``, i.e. ``ids[job.rows]``, scored on ``device``), clip and store shard and marker."""
    if len(ids) != job.stop - job.start:
        raise LogitStoreError(
            f"{ls.uri}: shard {job.index} covers rows [{job.start}, {job.stop}) but got {len(ids)} ids"
        )
    info, clipped = ls.write_shard(job.index, ids, teacher_fn(), spec.clip_value, spec.top_k)
    return ShardResult(job.index, info, clipped, device)


def finalize_shards(
    ls: LogitStore,
    spec: StoreSpec,
    plan: ShardPlan,
    results: list[ShardResult],
    seconds: float,
    autocast_check: dict | None = None,
) -> PrecomputeStats:
    """Step 3: once every planned shard is stored, write the manifest (last, marking the store complete, with
    ``autocast_check`` when the caller compared stored and fp32 logits) and say what was reused, kept and
    computed."""
    if plan.reused is not None:
        reused = plan.reused
        return PrecomputeStats(
            True, plan.shards_total, 0, 0, reused.clipped_values, seconds, autocast_check=reused.autocast_check
        )
    shards = {r.index: r for r in plan.kept}
    shards.update({r.index: r for r in results})
    missing = sorted(set(range(plan.shards_total)) - set(shards))
    if missing:
        raise LogitStoreError(f"{ls.uri}: cannot finalize, {len(missing)} shard(s) not computed, e.g. {missing[:5]}")
    ordered = [shards[i] for i in range(plan.shards_total)]
    clipped = sum(r.clipped for r in ordered)
    ls.write_manifest(
        [r.info for r in ordered],
        clipped,
        teacher_uri=spec.teacher_uri,
        teacher_name=spec.teacher_name,
        teacher_version=spec.teacher_version,
        data_fingerprint=spec.data_fingerprint,
        dataset=spec.dataset,
        clip_value=spec.clip_value,
        top_k=spec.top_k,
        autocast=spec.autocast,
        autocast_check=autocast_check,
    )
    computed = {r.index for r in results}
    return PrecomputeStats(
        False,
        plan.shards_total,
        len(computed),
        sum(r.info.rows for r in results),
        clipped,
        seconds,
        shards_kept=len(plan.kept),
        autocast_check=autocast_check,
        scored_on=dict(Counter(r.device for r in results if r.device is not None)),
    )


def find_stores(store: ObjectStore, prefix: str = "logits/") -> list[str]:
    """Keys of every complete logit store (a folder holding a manifest) under ``prefix``."""
    suffix = "/" + MANIFEST
    return [k[: -len(suffix)] for k in store.list(prefix) if k.endswith(suffix)]


def verify(ls: LogitStore) -> list[str]:
    """Check every shard of a complete store against its manifest; return the problems found (empty: OK)."""
    manifest = ls.manifest()
    if manifest is None:
        return [f"{ls.uri}: no manifest (incomplete store)"]
    problems = []
    rows = 0
    for shard in manifest.shards:
        try:
            raw = ls.store.get(f"{ls.key}/{shard.key}")
        except StoreError:
            problems.append(f"{shard.key}: missing")
            continue
        if _sha256(raw) != shard.sha256:
            problems.append(f"{shard.key}: SHA-256 mismatch (corrupt)")
            continue
        ids, logits = _decode_shard(raw)
        if len(ids) != shard.rows or logits.shape != (shard.rows, manifest.num_classes):
            problems.append(f"{shard.key}: shape {logits.shape}, manifest says ({shard.rows}, {manifest.num_classes})")
        elif not np.isfinite(logits.astype(np.float32)).all():
            problems.append(f"{shard.key}: non-finite values")
        rows += shard.rows
    if rows != manifest.num_rows and not problems:
        problems.append(f"shards hold {rows} rows, manifest says {manifest.num_rows}")
    return problems


def size_bytes(ls: LogitStore) -> int:
    """Total bytes of a store's shards (as stored)."""
    manifest = ls.require_manifest()
    return sum(ls.store.size(f"{ls.key}/{s.key}") for s in manifest.shards)
