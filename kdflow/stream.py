"""Training input as a stream: Parquet row groups joined by id with teacher-logit shards, shuffled
across shards through a bounded buffer, so peak memory does not grow with the number of rows.

Each *chunk* is one Parquet row group of one file of a split (a split may be several files: a directory,
a glob or an ``s3://`` prefix, read in the same sorted order as validation and fingerprinting). Per epoch the chunk order is shuffled; chunks are read
``buffer_chunks`` at a time, their rows permuted together, and yielded as batches. A chunk's logits come
from the (at most two or three) logit shards covering its row range, checksum-verified on read, and are
joined by id — never assumed to be in row order. Memory is bounded by ``buffer_chunks`` row groups plus
a small cache of decoded shards. With several teachers each split has one store per teacher; their
logits are joined by id separately and merged by ``combine`` (:func:`kdflow.ensemble.combine_logits`).
"""

from __future__ import annotations

import bisect
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdflow.config import DataConfig
from kdflow.data import DataError
from kdflow.logits import LogitStore, LogitStoreError, Manifest
from kdflow.store import open_store, split_uri
from kdflow.validation import expand_uri

# (x, y, z) — or (x, y, z, w) when the source carries per-row loss weights (hard examples, kdflow.hard_examples)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | tuple[torch.Tensor, ...]


class RowEmphasis(Protocol):
    """Chosen rows emphasised in training (:class:`kdflow.hard_examples.HardExampleSelection`): in ``mode``
    ``oversample`` each row appears ``factors(split, ids)`` times per epoch; in ``weight`` the factors are yielded
    as a fourth batch element, the per-row loss weights. ``extra_rows()``: rows oversampling adds per epoch."""

    mode: str

    def factors(self, split: str, ids: np.ndarray) -> np.ndarray: ...

    def extra_rows(self) -> int: ...


class ArraySource:
    """In-memory training rows ``x``, labels ``y`` (-1: unlabeled), optional teacher logits ``z`` and optional
    per-row loss ``weights`` (then batches are ``(x, y, z, w)``)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, weights: np.ndarray | None = None):
        self.x = torch.tensor(np.asarray(x), dtype=torch.float32)
        self.y = torch.tensor(np.asarray(y), dtype=torch.long)
        self.z = torch.tensor(np.asarray(z), dtype=torch.float32) if z is not None else None
        self.w = torch.tensor(np.asarray(weights), dtype=torch.float32) if weights is not None else None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        """Teacher-logit columns per row (0 without logits)."""
        return int(self.z.shape[1]) if self.z is not None else 0

    def to(self, device: torch.device) -> ArraySource:
        """This source with every tensor on ``device`` (resident training input)."""
        moved = ArraySource.__new__(ArraySource)
        for name in ("x", "y", "z", "w"):
            value = getattr(self, name)
            setattr(moved, name, value.to(device) if value is not None else None)
        return moved

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of shuffled batches (the permutation drawn from ``generator`` on the CPU)."""
        perm = torch.randperm(len(self.x), generator=generator)
        if self.x.device.type != "cpu":
            perm = perm.to(self.x.device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            batch = (self.x[idx], self.y[idx], (self.z[idx] if self.z is not None else None))
            yield batch if self.w is None else (*batch, self.w[idx])


def local_copy(uri: str, endpoint_url: str | None, cache_dir: Path) -> Path:
    """A local path for ``uri``: itself when local, else a one-off download into ``cache_dir``."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    root, key = split_uri(uri)
    target = cache_dir / f"{abs(hash(uri))}-{key}"
    if not target.exists():
        target.write_bytes(open_store(root, endpoint_url=endpoint_url).get(key))
    return target


@dataclass(frozen=True)
class _Part:
    name: str
    paths: tuple[Path, ...]  # the split's files, in the order their rows were fingerprinted and stored
    stores: tuple[LogitStore, ...]  # one per teacher
    labeled: bool
    manifests: tuple[Manifest, ...]
    row_starts: tuple[tuple[int, ...], ...]  # per file: the split-wide index of each row group's first row
    shard_starts: tuple[tuple[int, ...], ...]  # per teacher: the split-wide index of each shard's first row


class StreamingSource:
    """Stream (features, label or -1, teacher logits) from Parquet files and their logit stores.

    ``parts`` are ``(split name, data URI, logit store(s), labeled)``; with several teachers give one store
    per teacher (in the order of ``teacher_version``) and a ``combine`` that merges their logits. ``emphasis``
    (hard examples) repeats or weights chosen rows (:class:`RowEmphasis`): a repeated row's copies are shuffled
    with the rest of its buffer."""

    def __init__(
        self,
        parts: list[tuple[str, str, LogitStore | Sequence[LogitStore], bool]],
        data: DataConfig,
        teacher_version: str | Sequence[str],
        fingerprints: dict[str, str],
        endpoint_url: str | None = None,
        buffer_chunks: int = 4,
        shard_cache: int = 4,
        combine: Callable[[list[np.ndarray]], np.ndarray] | None = None,
        emphasis: RowEmphasis | None = None,
    ):
        self._tmp = tempfile.TemporaryDirectory(prefix="kdflow-stream-")
        self.data = data
        self.buffer_chunks = buffer_chunks
        self.shard_cache = shard_cache
        versions = (
            [str(teacher_version)] if isinstance(teacher_version, (str, int)) else [str(v) for v in teacher_version]
        )
        if len(versions) > 1 and combine is None:
            raise ValueError("several teachers need a combine function")
        self.combine = combine
        self.emphasis = emphasis
        self.parts: list[_Part] = []
        self.chunks: list[tuple[int, int, int]] = []  # (part index, file index, row group)
        self._shards: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        for name, uri, stores, labeled in parts:
            stores = (stores,) if isinstance(stores, LogitStore) else tuple(stores)
            if len(stores) != len(versions):
                raise ValueError(f"{name}: {len(stores)} logit store(s) for {len(versions)} teacher(s)")
            manifests = tuple(store.require_manifest() for store in stores)
            for store, manifest, version in zip(stores, manifests, versions):
                if manifest.teacher_version != version or manifest.data_fingerprint != fingerprints[name]:
                    raise LogitStoreError(
                        f"{store.uri}: manifest does not match teacher version {version} "
                        f"and the {name} data fingerprint"
                    )
            paths = [local_copy(f, endpoint_url, Path(self._tmp.name)) for f in expand_uri(uri, endpoint_url)]
            starts, row = [], 0
            for path in paths:
                meta = pq.ParquetFile(path).metadata
                file_starts = []
                for g in range(meta.num_row_groups):
                    file_starts.append(row)
                    row += meta.row_group(g).num_rows
                starts.append(tuple(file_starts))
            for store, manifest in zip(stores, manifests):
                if row != manifest.num_rows:
                    raise LogitStoreError(f"{store.uri}: {manifest.num_rows} stored rows, {uri} has {row}")
            shard_starts = tuple(
                tuple(int(v) for v in np.cumsum([0] + [s.rows for s in m.shards[:-1]])) for m in manifests
            )
            self.parts.append(_Part(name, tuple(paths), stores, labeled, manifests, tuple(starts), shard_starts))
            part = len(self.parts) - 1
            self.chunks += [(part, f, g) for f, groups in enumerate(starts) for g in range(len(groups))]
        self.num_rows = sum(p.manifests[0].num_rows for p in self.parts) + (emphasis.extra_rows() if emphasis else 0)

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_classes(self) -> int:
        """Teacher-logit columns per row."""
        return int(self.parts[0].manifests[0].num_classes)

    def to_arrays(self) -> ArraySource:
        """Every row of every chunk read once, in chunk order (oversampled rows repeated, weights kept), as one
        in-memory :class:`ArraySource`: for training input that fits on a GPU."""
        parts = [self._read_chunk(*chunk) for chunk in self.chunks]
        cols = [np.concatenate([p[c] for p in parts]) for c in range(len(parts[0]))]
        return ArraySource(*cols)

    def _shard(self, part: int, teacher: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        key = (part, teacher, index)
        if key not in self._shards:
            p = self.parts[part]
            manifest = p.manifests[teacher]
            ids, logits = next(p.stores[teacher].iter_shards(replace(manifest, shards=[manifest.shards[index]])))
            self._shards[key] = (ids, logits.astype(np.float32))
            while len(self._shards) > self.shard_cache * len(p.stores):
                self._shards.popitem(last=False)
        self._shards.move_to_end(key)
        return self._shards[key]

    def _read_chunk(self, part_index: int, file_index: int, group: int) -> tuple[np.ndarray, ...]:
        part = self.parts[part_index]
        path = part.paths[file_index]
        cfg = self.data
        columns = [cfg.id_column] + (cfg.features.columns or [cfg.features.column])
        if part.labeled:
            columns.append(cfg.label_column)
        table = pq.ParquetFile(path).read_row_group(group, columns=columns)
        ids = table.column(cfg.id_column).to_numpy()
        if cfg.features.columns:
            x = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in cfg.features.columns])
        else:
            col = table.column(cfg.features.column).combine_chunks()
            if not isinstance(col, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
                raise DataError(f"{path}: feature column {cfg.features.column!r} is not an array column")
            x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), -1)
        if cfg.features.shape:
            x = x.reshape(len(ids), *cfg.features.shape)
        y = table.column(cfg.label_column).to_numpy().astype(np.int64) if part.labeled else np.full(len(ids), -1)
        # Per teacher: the logit shards covering this row group's row range, joined by id.
        first = part.row_starts[file_index][group]
        last = first + len(ids) - 1
        per_teacher = []
        for t, starts in enumerate(part.shard_starts):
            lo, hi = bisect.bisect_right(starts, first) - 1, bisect.bisect_right(starts, last) - 1
            pieces = [self._shard(part_index, t, i) for i in range(lo, hi + 1)]
            shard_ids = np.concatenate([p[0] for p in pieces])
            pos = pd.Index(shard_ids).get_indexer(pd.Index(ids))
            if (pos < 0).any():
                raise LogitStoreError(
                    f"{part.stores[t].uri}: {int((pos < 0).sum())} id(s) of {part.name} row group "
                    f"{group} have no stored logits, e.g. {ids[pos < 0][:3].tolist()}"
                )
            per_teacher.append(np.concatenate([p[1] for p in pieces])[pos])
        z = per_teacher[0] if self.combine is None else self.combine(per_teacher)
        if self.emphasis is None:
            return x, y, z
        factors = self.emphasis.factors(part.name, ids)
        if self.emphasis.mode == "oversample":
            copies = np.repeat(np.arange(len(ids)), factors.astype(np.int64))
            return x[copies], y[copies], z[copies]
        return x, y, z, factors.astype(np.float32)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch: chunk order shuffled, ``buffer_chunks`` chunks mixed at a time, batches yielded."""
        order = torch.randperm(len(self.chunks), generator=generator).tolist()
        carry: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(order), self.buffer_chunks):
            parts = [self._read_chunk(*self.chunks[i]) for i in order[start : start + self.buffer_chunks]]
            # columns x, y, z (and w: per-row weights); rows permuted together
            cols = [torch.from_numpy(np.concatenate([p[c] for p in parts])) for c in range(len(parts[0]))]
            perm = torch.randperm(len(cols[0]), generator=generator)
            cols = [col[perm] for col in cols]
            if carry:  # rows left over from the previous buffer go first, so batches stay full
                cols = [torch.cat([left, col]) for left, col in zip(carry.pop(), cols)]
            n = len(cols[0])
            full = n - n % batch_size
            for i in range(0, full, batch_size):
                yield tuple(col[i : i + batch_size] for col in cols)
            if full < n:
                carry.append(tuple(col[full:] for col in cols))
        if carry:
            yield carry.pop()

    def close(self) -> None:
        """Remove downloaded copies."""
        self._tmp.cleanup()
