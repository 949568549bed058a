"""A shard's rows read where the shard is computed: straight from the split's Parquet row groups.

The process that plans a precomputation reads only each file's Parquet footer (:func:`split_layout`: row-group
sizes) and gives every shard a :class:`RowSource` — which files and which rows of each — instead of the rows'
arrays. Whoever computes the shard (a Dask worker) reads just the row groups that cover those rows
(:func:`read_rows`): on S3 through ranged GETs of the store layer (:meth:`kdflow.store.ObjectStore.read_range`),
never a full copy of the file, so a worker's memory and disk are bounded by one shard's rows. The arrays match
:func:`kdflow.data.dataset_from_frame` (ids, float32 features in the configured shape).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdflow.config import DataConfig
from kdflow.data import DataError, Dataset
from kdflow.store import ObjectStore, StoreError, open_store, split_uri
from kdflow.validation import expand_uri


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over one stored object, each read one ranged GET (counted in ``bytes_read``)."""

    def __init__(self, store: ObjectStore, key: str):
        super().__init__()
        self.store, self.key = store, key
        self.length = store.size(key)
        self.pos = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        want = min(len(buffer), self.length - self.pos)
        if want <= 0:
            return 0
        data = self.store.read_range(self.key, self.pos, want)
        buffer[: len(data)] = data
        self.pos += len(data)
        self.bytes_read += len(data)
        return len(data)


def open_parquet(uri: str, endpoint_url: str | None = None, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """``uri`` (path, ``file://`` or ``s3://``) as a :class:`pyarrow.parquet.ParquetFile` that reads only what it
    is asked for: local files directly, S3 objects by ranged GETs (the footer's last 64 KiB first, then one GET per
    row group read: ``pre_buffer`` coalesces its column chunks, so a row group read in any order costs its own
    bytes, not a read-ahead buffer's). ``metadata``: the file's footer when already read (it is not read again)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pq.ParquetFile(parsed.path if parsed.scheme else uri, metadata=metadata, pre_buffer=True)
    root, key = split_uri(uri)
    return pq.ParquetFile(
        _RangeFile(open_store(root, endpoint_url=endpoint_url), key), metadata=metadata, pre_buffer=True
    )


@dataclass(frozen=True)
class FileRows:
    """Rows ``[start, stop)`` of one Parquet file of a split (file-local row numbers)."""

    uri: str
    start: int
    stop: int


@dataclass(frozen=True)
class RowSource:
    """Where one shard's rows are: pieces of the split's files, in order; ``first_id``/``last_id`` are the
    shard's first and last ids as the planner saw them (checked on read: the data did not change underneath)."""

    parts: tuple[FileRows, ...]
    endpoint_url: str | None
    first_id: object = None
    last_id: object = None

    @property
    def rows(self) -> int:
        """Rows this source covers."""
        return sum(p.stop - p.start for p in self.parts)


def split_layout(uri: str, endpoint_url: str | None = None) -> list[tuple[str, int]]:
    """``(file uri, rows)`` of each file of the split at ``uri``, in the order validation reads them: only the
    Parquet footers are read. A :class:`DataError` names a file that cannot be read."""
    layout = []
    for file_uri in expand_uri(uri, endpoint_url):
        try:
            layout.append((file_uri, open_parquet(file_uri, endpoint_url).metadata.num_rows))
        except (OSError, StoreError, pa.ArrowException) as exc:
            raise DataError(f"{file_uri}: cannot read its Parquet footer ({type(exc).__name__}: {exc})") from exc
    return layout


def shard_source(
    layout: list[tuple[str, int]], start: int, stop: int, endpoint_url: str | None, ids: np.ndarray | None = None
) -> RowSource:
    """The :class:`RowSource` of split-wide rows ``[start, stop)`` over ``layout`` (:func:`split_layout`);
    ``ids`` (the split's ids, optional) give the first and last id to check on read."""
    parts, offset = [], 0
    for file_uri, rows in layout:
        lo, hi = max(start, offset), min(stop, offset + rows)
        if lo < hi:
            parts.append(FileRows(file_uri, lo - offset, hi - offset))
        offset += rows
    first = last = None
    if ids is not None and stop > start:
        first, last = ids[start].item(), ids[stop - 1].item()
    return RowSource(tuple(parts), endpoint_url, first, last)


def table_arrays(table: pa.Table, cfg: DataConfig, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, x)`` of a table in the data's layout, as :func:`kdflow.data.dataset_from_frame` builds them."""
    ids = table.column(cfg.id_column).to_numpy()
    if ids.dtype.kind not in "iu":
        ids = ids.astype(str)
    if cfg.features.columns:
        x = np.column_stack([table.column(c).to_numpy().astype(np.float32, copy=False) for c in cfg.features.columns])
    else:
        col = table.column(cfg.features.column).combine_chunks()
        if not isinstance(col, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
            raise DataError(f"{where}: feature column {cfg.features.column!r} is not an array column")
        x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(ids), -1)
    if cfg.features.shape:
        x = x.reshape(len(ids), *cfg.features.shape)
    return ids, x


def _row_groups(part: FileRows, pf: pq.ParquetFile) -> list[tuple[int, int, int]]:
    """``(row group, first row, stop row)`` within each group of ``pf`` that overlaps ``part``'s rows."""
    meta, out, row = pf.metadata, [], 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        lo, hi = max(part.start, row), min(part.stop, row + n)
        if lo < hi:
            out.append((g, lo - row, hi - row))
        row += n
    if part.stop > row:
        raise DataError(f"{part.uri}: holds {row} rows, the shard needs rows up to {part.stop}")
    return out


def file_chunks(
    uri: str, endpoint_url: str | None, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """The rows of one Parquet file as tables of whole consecutive row groups, each of at most ``chunk_rows`` rows
    unless one row group alone is larger (``columns``: only those that exist, all when None). A file without row
    groups gives one empty table, so its schema is still seen."""
    pf = open_parquet(uri, endpoint_url)
    if columns is not None:
        columns = [c for c in columns if c in pf.schema_arrow.names]
    meta = pf.metadata
    if meta.num_row_groups == 0:
        yield pf.schema_arrow.empty_table().select(columns) if columns is not None else pf.schema_arrow.empty_table()
        return
    groups: list[int] = []
    rows = 0

    def read() -> pa.Table:  # one group at a time: read_row_groups decodes them in parallel, ~2x the peak
        return pa.concat_tables([pf.read_row_group(g, columns=columns) for g in groups])

    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if groups and rows + n > chunk_rows:
            yield read()
            groups, rows = [], 0
        groups.append(g)
        rows += n
    yield read()


def _tables(source: RowSource, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """``(file uri, table)`` of each row group piece ``source`` covers, in order: one row group read at a time."""
    for part in source.parts:
        pf = open_parquet(part.uri, source.endpoint_url)
        for group, lo, hi in _row_groups(part, pf):
            yield part.uri, pf.read_row_group(group, columns=columns).slice(lo, hi - lo)


def _check_ends(source: RowSource, ids: np.ndarray) -> None:
    """A :class:`DataError` when the ids at either end of ``source`` are not the ones the planner saw."""
    if source.first_id is not None and (ids[0].item() != source.first_id or ids[-1].item() != source.last_id):
        raise DataError(
            f"{source.parts[0].uri}: rows read have ids {ids[0]}..{ids[-1]}, planned {source.first_id}..{source.last_id}"
            " (the data changed after it was validated)"
        )


def read_rows(source: RowSource, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, x)`` of every row ``source`` covers, read one Parquet row group at a time into one preallocated
    array (peak memory: the shard's rows plus one row group); a :class:`DataError` when the ids at either end
    are not the ones the planner saw (the data changed since it was validated)."""
    columns = [cfg.id_column] + (cfg.features.columns or [cfg.features.column])
    ids_parts: list[np.ndarray] = []
    x: np.ndarray | None = None
    pos = 0
    for uri, table in _tables(source, columns):
        ids, rows = table_arrays(table, cfg, uri)
        del table
        if x is None:
            x = np.empty((source.rows, *rows.shape[1:]), dtype=np.float32)
        x[pos : pos + len(rows)] = rows
        ids_parts.append(ids)
        pos += len(rows)
    if x is None:
        raise DataError(f"no rows to read for {source}")
    ids = np.concatenate(ids_parts)
    _check_ends(source, ids)
    return ids, x


def read_ids(source: RowSource, id_column: str) -> np.ndarray:
    """The ids of every row ``source`` covers (only the id column is read), as :func:`table_arrays` gives them."""
    parts = [table.column(id_column).to_numpy() for _, table in _tables(source, [id_column])]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ids if ids.dtype.kind in "iu" else ids.astype(str)


class SplitIds:
    """The id column of a :class:`ParquetSplit`, read on demand: ``len(ids)``, ``ids[a:b]`` and ``ids[i]`` read
    just the row groups holding those rows (what planning a precomputation asks of a split's ids)."""

    def __init__(self, split: ParquetSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: slice | int) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("split ids are read by contiguous ranges only")
            if stop <= start:
                return np.zeros(0, dtype=np.int64)
            return read_ids(self.split.source(start, stop), self.split.data.id_column)
        i = key + len(self) if key < 0 else key
        if not 0 <= i < len(self):
            raise IndexError(f"row {key} of a split of {len(self)} rows")
        return self[i : i + 1][0]


@dataclass(frozen=True)
class ParquetSplit:
    """A validated split left in its Parquet files (local or S3) and never held whole: its layout (rows per file,
    from the footers), content fingerprint and feature shape (computed chunk by chunk,
    :func:`kdflow.validation.chunked.validate_out_of_core`), rows read on demand. Stands in for a
    :class:`kdflow.data.Dataset` wherever a precomputation plans, scores or checks a split."""

    name: str
    uri: str
    labeled: bool
    layout: tuple[tuple[str, int], ...]
    endpoint_url: str | None
    data: DataConfig
    input_shape: tuple[int, ...]
    fingerprint: str

    def __len__(self) -> int:
        return sum(rows for _, rows in self.layout)

    @property
    def ids(self) -> SplitIds:
        """The split's ids, read on demand."""
        return SplitIds(self)

    def source(self, start: int, stop: int) -> RowSource:
        """Where rows ``[start, stop)`` are (:func:`shard_source`)."""
        return shard_source(list(self.layout), start, stop, self.endpoint_url)

    def head(self, n: int) -> np.ndarray:
        """Features of the first ``min(n, len)`` rows."""
        return read_rows(self.source(0, min(n, len(self))), self.data)[1]


AnySplit = Dataset | ParquetSplit  # a split in memory, or one left in its Parquet files (data.out_of_core)
