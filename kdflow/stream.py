"""Training input as a stream: Parquet row groups joined by id with teacher-logit shards, shuffled
across shards through a bounded buffer, so peak memory does not grow with the number of rows.

Each *chunk* is one Parquet row group of one file of a split (a split may be several files: a directory,
a glob or an ``s3://`` prefix, read in the same sorted order as validation and fingerprinting). Per epoch the chunk order is shuffled; chunks are read
``buffer_chunks`` at a time, their rows permuted together, and yielded as batches. A chunk's logits come
from the (at most two or three) logit shards covering its row range, checksum-verified on read, and are
joined by id — never assumed to be in row order. Memory is bounded by ``buffer_chunks`` row groups plus
a small cache of decoded shards. With several teachers each split has one store per teacher; their
logits are joined by id separately and merged by ``combine`` (:func:`kdflow.ensemble.combine_logits`).

Remote data is never copied: a file on S3 is read through ranged GETs of just its footer and the row groups a
buffer needs (:func:`kdflow.rowgroups.open_parquet`), so no disk is used and memory stays bounded. While the
training step consumes one buffer, ``readers`` background threads read the chunks (row groups and their logit
shards) of the next ``prefetch`` buffers, several at once: a remote store's per-request latency is paid in
parallel, and the step does not wait on storage as long as those reads keep up with training. The next epoch's
first chunks are read while the last buffer of an epoch trains: its order is drawn from a copy of the shuffling
generator, and used only if the generator is in that very state when the epoch starts. The batches are the same
with or without prefetching (chunks are consumed in order and every random draw stays on the consuming thread).
Peak memory: ``(prefetch + 1) * buffer_chunks`` row groups plus ``shard_cache`` decoded shards per teacher.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from kdflow.config import DataConfig
from kdflow.logits import LogitStore, LogitStoreError, Manifest
from kdflow.rowgroups import open_parquet, table_arrays
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


@dataclass(frozen=True)
class _Part:
    name: str
    paths: tuple[str, ...]  # the split's files (paths or URIs), in the order their rows were fingerprinted and stored
    footers: tuple[pq.FileMetaData, ...]  # each file's Parquet footer, read once
    stores: tuple[LogitStore, ...]  # one per teacher
    labeled: bool
    manifests: tuple[Manifest, ...]
    row_starts: tuple[tuple[int, ...], ...]  # per file: the split-wide index of each row group's first row
    shard_starts: tuple[tuple[int, ...], ...]  # per teacher: the split-wide index of each shard's first row


@dataclass
class _NextEpoch:
    """Reads of an epoch's first chunks, started during the previous epoch's last buffer."""

    state: torch.Tensor  # the shuffling generator's state the epoch's order was drawn for
    order: list[int]  # its first chunks
    futures: list[Future]

    def cancel(self) -> None:
        """Drop the reads: cancel those not started, wait for those running."""
        for future in self.futures:
            future.cancel()
        wait(self.futures)


class StreamingSource:
    """Stream (features, label or -1, teacher logits) from Parquet files and their logit stores.

    ``parts`` are ``(split name, data URI, logit store(s), labeled)``; with several teachers give one store
    per teacher (in the order of ``teacher_version``) and a ``combine`` that merges their logits. ``emphasis``
    (hard examples) repeats or weights chosen rows (:class:`RowEmphasis`): a repeated row's copies are shuffled
    with the rest of its buffer. ``prefetch``: buffers read ahead, by ``readers`` background threads (0: every
    chunk read on the consuming thread when due)."""

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
        prefetch: int = 2,
        readers: int = 4,
    ):
        if prefetch < 0 or readers < 1:
            raise ValueError(f"prefetch must be >= 0 and readers >= 1, got {prefetch} and {readers}")
        self.data = data
        self.endpoint_url = endpoint_url
        self.buffer_chunks = buffer_chunks
        self.shard_cache = shard_cache
        self.prefetch = prefetch
        self.readers = readers
        self._lock = threading.Lock()  # guards the two caches below: readers run on several threads
        self._idle: OrderedDict[str, list[pq.ParquetFile]] = OrderedDict()  # open files not being read, by path
        self._pool: ThreadPoolExecutor | None = None  # the readers, started on first use, stopped by close()
        self._next: _NextEpoch | None = None
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
            paths = expand_uri(uri, endpoint_url)
            footers = tuple(self._footer(path) for path in paths)
            starts, row = [], 0
            for meta in footers:
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
            self.parts.append(
                _Part(name, tuple(paths), footers, stores, labeled, manifests, tuple(starts), shard_starts)
            )
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
        in-memory :class:`ArraySource`: for training input that fits on a GPU (read by the ``readers`` threads)."""
        parts = list(self._read_in_order(list(range(len(self.chunks)))))
        cols = [np.concatenate([p[c] for p in parts]) for c in range(len(parts[0]))]
        return ArraySource(*cols)

    @contextlib.contextmanager
    def _parquet(self, path: str, footer: pq.FileMetaData | None = None) -> Iterator[pq.ParquetFile]:
        """``path`` open for one reader at a time (a local file's handle or an S3 object's ranged reader, its footer
        reused when known): an idle one when there is, else a new one; afterwards it is idle again, and the
        least recently used beyond ``readers + 1`` idle files are closed."""
        with self._lock:
            pf = self._idle[path].pop() if path in self._idle else None
            if path in self._idle and not self._idle[path]:
                del self._idle[path]
        if pf is None:
            pf = open_parquet(path, self.endpoint_url, footer)
        try:
            yield pf
        finally:
            with self._lock:
                self._idle.setdefault(path, []).append(pf)
                self._idle.move_to_end(path)
                while sum(map(len, self._idle.values())) > self.readers + 1:
                    oldest = next(iter(self._idle))
                    self._idle[oldest].pop(0).close()
                    if not self._idle[oldest]:
                        del self._idle[oldest]

    def _footer(self, path: str) -> pq.FileMetaData:
        with self._parquet(path) as pf:
            return pf.metadata

    def _shard(self, part: int, teacher: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        key = (part, teacher, index)
        with self._lock:
            if key in self._shards:
                self._shards.move_to_end(key)
                return self._shards[key]
        p = self.parts[part]
        manifest = p.manifests[teacher]
        ids, logits = next(p.stores[teacher].iter_shards(replace(manifest, shards=[manifest.shards[index]])))
        shard = (ids, logits.astype(np.float32))
        with self._lock:  # two readers may have fetched the same shard: either copy serves
            self._shards[key] = shard
            while len(self._shards) > self.shard_cache * len(p.stores):
                self._shards.popitem(last=False)
        return shard

    def _read_chunk(self, part_index: int, file_index: int, group: int) -> tuple[np.ndarray, ...]:
        part = self.parts[part_index]
        path = part.paths[file_index]
        cfg = self.data
        columns = [cfg.id_column] + (cfg.features.columns or [cfg.features.column])
        if part.labeled:
            columns.append(cfg.label_column)
        with self._parquet(path, part.footers[file_index]) as pf:
            table = pf.read_row_group(group, columns=columns)
        ids, x = table_arrays(table, cfg, path)
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

    def _readers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="kdflow-prefetch")
        return self._pool

    def _read_in_order(self, order: list[int], started: list[Future] | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        """The chunks ``order`` names, in that order (``started``: reads of its first chunks already submitted).
        With ``prefetch``, the reader threads read the next ``prefetch * buffer_chunks`` chunks while the caller
        uses the current ones; an error reading ahead is raised here, when its chunk is due, and once the iterator
        is closed (early too) none of its reads is still running."""
        if self.prefetch == 0:
            yield from (self._read_chunk(*self.chunks[i]) for i in order)
            return
        pool = self._readers()
        pending: deque[Future] = deque(started or [])
        upcoming = iter(order[len(pending) :])
        ahead = self.prefetch * self.buffer_chunks
        pending.extend(
            pool.submit(self._read_chunk, *self.chunks[i])
            for i in itertools.islice(upcoming, max(0, ahead - len(pending)))
        )
        try:
            while pending:
                chunk = pending.popleft().result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append(pool.submit(self._read_chunk, *self.chunks[following]))
                yield chunk
        finally:
            for future in pending:
                future.cancel()
            wait(pending)

    def _read_next_epoch_ahead(self, generator: torch.Generator) -> None:
        """Start reading the next epoch's first chunks, in the order a copy of ``generator`` (in its state after
        this epoch's last draw) gives."""
        state = generator.get_state()
        peek = torch.Generator()
        peek.set_state(state)
        order = torch.randperm(len(self.chunks), generator=peek).tolist()[: self.prefetch * self.buffer_chunks]
        pool = self._readers()
        self._next = _NextEpoch(state, order, [pool.submit(self._read_chunk, *self.chunks[i]) for i in order])

    def _started_reads_for(self, state: torch.Tensor, order: list[int]) -> list[Future] | None:
        """The reads started for this epoch during the last one, if they were for the generator ``state`` this
        epoch started from and its ``order``; else they are dropped."""
        nxt, self._next = self._next, None
        if nxt is None:
            return None
        if torch.equal(nxt.state, state) and order[: len(nxt.order)] == nxt.order:
            return nxt.futures
        nxt.cancel()
        return None

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch: chunk order shuffled, ``buffer_chunks`` chunks mixed at a time, batches yielded."""
        state = generator.get_state()
        order = torch.randperm(len(self.chunks), generator=generator).tolist()
        started = self._started_reads_for(state, order)
        carry: list[tuple[torch.Tensor, ...]] = []
        consumed = 0
        with contextlib.closing(self._read_in_order(order, started)) as reading:
            for parts in iter(lambda: list(itertools.islice(reading, self.buffer_chunks)), []):
                # columns x, y, z (and w: per-row weights); rows permuted together
                cols = [torch.from_numpy(np.concatenate([p[c] for p in parts])) for c in range(len(parts[0]))]
                perm = torch.randperm(len(cols[0]), generator=generator)
                consumed += len(parts)
                if consumed == len(order) and self.prefetch:  # this epoch's last draw: the next order is known
                    self._read_next_epoch_ahead(generator)
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
        """Stop the reader threads (dropping reads started for an epoch that did not come) and close the files."""
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for files in self._idle.values():
                for pf in files:
                    pf.close()
            self._idle.clear()
