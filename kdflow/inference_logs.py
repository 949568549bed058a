"""Production inference logs: one Parquet row per prediction, partitioned by UTC date in an object store.

Format (`kdflow-inference-logs`, the reference):

`<root>/date=YYYY-MM-DD/part-<uuid>.parquet`: one row per prediction, the date being the UTC date of
`timestamp`. `<root>` is a local directory, `file://` or `s3://bucket/prefix` (`kdflow.store`).

| column | type | meaning |
|---|---|---|
| `timestamp` | timestamp[us, tz=UTC] | when the prediction was served |
| `request_id` | string | unique per prediction; the join key of late labels |
| `model_name` | string | registered model name of the served model |
| `model_version` | string | its registered version |
| `x` | list<float32> | the input features (fixed width d) |
| `probabilities` | list<float32> | calibrated student probabilities (length C) |
| `teacher_logits` | list<float32>, nullable | raw teacher logits, for the shadow-scored sample only |
| `label` | int64, nullable | the true class when known at serving time |
| `answered_by` | string, nullable | who gave the answer: `student`, or `teacher` (the confidence fallback); null: student |
| `latency_ms` | float64, nullable | server time from accepting the request to its answer, per request (null: not measured) |

The last two columns are optional: parts written without them read back as null. `model_version` is the student
version that served the row (under a champion/challenger split, the challenger's rows carry its version).

Labels usually arrive later. They are written as separate files
`<root>/labels/date=YYYY-MM-DD/part-<uuid>.parquet` with `request_id` (string), `label` (int64) and
`label_timestamp` (timestamp[us, tz=UTC]), partitioned by the UTC date of `label_timestamp`, and joined
on read by `request_id`: a label file overrides the inline label (null or not), and the latest
`label_timestamp` wins when a request was labeled twice (the frame read back carries `label_timestamp`,
null for inline labels). Every object is written with one atomic put, so
a reader never sees half a part; a window with a missing date partition is an error unless asked otherwise.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdflow.data import DataError
from kdflow.store import ObjectStore, StoreError, open_store

LOG_SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("x", pa.list_(pa.float32())),
        ("probabilities", pa.list_(pa.float32())),
        ("teacher_logits", pa.list_(pa.float32())),
        ("label", pa.int64()),
        ("answered_by", pa.string()),
        ("latency_ms", pa.float64()),
    ]
)
ANSWERED_BY = ("student", "teacher")
LABEL_SCHEMA = pa.schema(
    [("request_id", pa.string()), ("label", pa.int64()), ("label_timestamp", pa.timestamp("us", tz="UTC"))]
)
REQUIRED_COLUMNS = ("timestamp", "request_id", "model_name", "model_version", "x", "probabilities")
LABELS_PREFIX = "labels/"
_PART = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/part-[^/]+\.parquet$")


class InferenceLogError(DataError):
    """Inference logs are missing, unreadable or off-format; the message names the root, file, column or date."""


# ------------------------------------------------------------------------------------------ writing


def _utc(timestamps: Any) -> pd.DatetimeIndex:
    """Timestamps (datetimes, numpy datetime64, strings) as a UTC index; naive values are taken as UTC."""
    ts = pd.DatetimeIndex(pd.to_datetime([timestamps] if np.ndim(timestamps) == 0 else timestamps))
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _arrow_utc(ts: pd.DatetimeIndex) -> pa.Array:
    """A UTC index as Arrow ``timestamp[us, UTC]`` (from its UTC values: no tz-dropping ``.values`` conversion)."""
    return pa.array(ts.tz_convert(None).as_unit("us").to_numpy(), pa.timestamp("us", tz="UTC"))


def _list_array(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An (n, k) float matrix as a list<float32> array; rows where ``valid`` is False become null."""
    n, k = matrix.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel())
    mask = None if valid is None else pa.array(~valid)
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def _parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as zstd-compressed Parquet bytes (one object, written with one atomic put)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _date_key(prefix: str, day: date) -> str:
    """A new part key ``<prefix>date=YYYY-MM-DD/part-<uuid>.parquet``."""
    return f"{prefix}date={day.isoformat()}/part-{uuid.uuid4().hex}.parquet"


class InferenceLogWriter:
    """Buffers predictions and writes them as one Parquet part per UTC date on :meth:`flush`."""

    def __init__(self, root: str, model_name: str, model_version: str | int, endpoint_url: str | None = None):
        self.root = root
        self.model_name = str(model_name)
        self.model_version = str(model_version)
        self.store: ObjectStore = open_store(root, endpoint_url=endpoint_url)
        self._batches: list[pa.Table] = []

    def log(
        self,
        x: np.ndarray,
        probs: np.ndarray,
        timestamps: Any,
        request_ids: Sequence[str] | None = None,
        teacher_logits: np.ndarray | None = None,
        shadow_mask: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        answered_by: Sequence[str | None] | None = None,
        latency_ms: np.ndarray | None = None,
        model_version: str | None = None,
    ) -> list[str]:
        """Buffer n predictions; returns their request ids (uuid4 hex when not given).

        ``x`` (n, d) features, ``probs`` (n, C) calibrated probabilities, ``timestamps`` n instants (or one for
        all). ``teacher_logits`` (n, C): rows with NaN (or ``shadow_mask`` False) are stored as null.
        ``labels`` (n,): negative values mean unknown (null). ``answered_by`` (n,): ``student``/``teacher``/None;
        ``latency_ms`` (n,): NaN means not measured. ``model_version`` overrides the writer's version for these
        rows (a server whose champion moved keeps one writer)."""
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        probs = np.asarray(probs, dtype=np.float32)
        n = len(x)
        if probs.ndim != 2 or len(probs) != n:
            raise ValueError(f"probs must have shape (n={n}, C), got {probs.shape}")
        ts = _utc(timestamps)
        if len(ts) == 1 and n != 1:
            ts = ts.repeat(n)
        if len(ts) != n:
            raise ValueError(f"{len(ts)} timestamps for {n} rows")
        ids = [uuid.uuid4().hex for _ in range(n)] if request_ids is None else [str(r) for r in request_ids]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} request ids for {n} rows")
        if teacher_logits is None:
            teacher = pa.nulls(n, LOG_SCHEMA.field("teacher_logits").type)
        else:
            logits = np.asarray(teacher_logits, dtype=np.float32).reshape(n, -1)
            valid = ~np.isnan(logits).any(axis=1)
            if shadow_mask is not None:
                valid &= np.asarray(shadow_mask, dtype=bool)
            teacher = _list_array(np.nan_to_num(logits), valid)
        if labels is None:
            label = pa.nulls(n, pa.int64())
        else:
            y = np.asarray(labels, dtype=np.int64)
            label = pa.array(y, mask=y < 0)
        if answered_by is None:
            answered = pa.nulls(n, pa.string())
        else:
            answered_list = [None if a is None else str(a) for a in answered_by]
            unknown = sorted({a for a in answered_list if a is not None and a not in ANSWERED_BY})
            if len(answered_list) != n or unknown:
                raise ValueError(
                    f"answered_by must hold {n} values from {ANSWERED_BY} or None, got {unknown or len(answered_list)}"
                )
            answered = pa.array(answered_list, pa.string())
        if latency_ms is None:
            latency = pa.nulls(n, pa.float64())
        else:
            lat = np.asarray(latency_ms, dtype=np.float64).reshape(-1)
            if len(lat) != n:
                raise ValueError(f"{len(lat)} latencies for {n} rows")
            latency = pa.array(lat, mask=np.isnan(lat))
        version = self.model_version if model_version is None else str(model_version)
        self._batches.append(
            pa.Table.from_arrays(
                [
                    _arrow_utc(ts),
                    pa.array(ids, pa.string()),
                    pa.array([self.model_name] * n, pa.string()),
                    pa.array([version] * n, pa.string()),
                    _list_array(x),
                    _list_array(probs),
                    teacher,
                    label,
                    answered,
                    latency,
                ],
                schema=LOG_SCHEMA,
            )
        )
        return ids

    def flush(self) -> list[str]:
        """Write the buffered rows, one part per UTC date (atomic put each); returns the object URLs."""
        if not self._batches:
            return []
        table = pa.concat_tables(self._batches)
        days = pc.strftime(table["timestamp"], format="%Y-%m-%d").to_numpy(zero_copy_only=False)
        urls = []
        for day in sorted(set(days)):
            part = table.filter(pa.array(days == day)).sort_by([("timestamp", "ascending")])
            key = _date_key("", date.fromisoformat(day))
            self.store.put(key, _parquet_bytes(part))
            urls.append(self.store.url(key))
        self._batches.clear()
        return urls

    def __enter__(self) -> InferenceLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.flush()


def write_labels(
    root: str, request_ids: Sequence[str], labels: Sequence[int], at: Any, endpoint_url: str | None = None
) -> list[str]:
    """Write late labels (one part per UTC date of ``at``, one instant or one per row); returns the URLs."""
    store = open_store(root, endpoint_url=endpoint_url)
    ids = [str(r) for r in request_ids]
    y = np.asarray(labels, dtype=np.int64)
    ts = _utc(at)
    ts = ts.repeat(len(ids)) if len(ts) == 1 else ts
    if not len(ids) == len(y) == len(ts):
        raise ValueError(f"{len(ids)} request ids, {len(y)} labels and {len(ts)} timestamps must match")
    table = pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(y), _arrow_utc(ts)], schema=LABEL_SCHEMA)
    days = np.asarray(ts.strftime("%Y-%m-%d"))
    urls = []
    for day in sorted(set(days)):
        key = _date_key(LABELS_PREFIX, date.fromisoformat(day))
        store.put(key, _parquet_bytes(table.filter(pa.array(days == day))))
        urls.append(store.url(key))
    return urls


# ------------------------------------------------------------------------------------------ reading


def _partitions(store: ObjectStore, prefix: str = "") -> dict[date, list[str]]:
    """Part keys by date under ``prefix`` (``""`` for logs, ``labels/`` for labels)."""
    out: dict[date, list[str]] = {}
    for key in store.list(prefix):
        m = _PART.match(key[len(prefix) :])
        if m:
            out.setdefault(date.fromisoformat(m.group(1)), []).append(key)
    return out


def list_dates(root: str, endpoint_url: str | None = None) -> list[date]:
    """The UTC dates that have at least one log part under ``root``, sorted."""
    return sorted(_partitions(open_store(root, endpoint_url=endpoint_url)))


def _check_type(url: str, name: str, actual: pa.DataType) -> None:
    """Raise if a column's Arrow type cannot hold the format's type (names the file and column)."""
    expected = LOG_SCHEMA.field(name).type if name in LOG_SCHEMA.names else LABEL_SCHEMA.field(name).type
    if pa.types.is_timestamp(expected):
        ok = pa.types.is_timestamp(actual)
    elif pa.types.is_string(expected):
        ok = pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_null(actual)
    elif pa.types.is_integer(expected):
        ok = pa.types.is_integer(actual) or pa.types.is_null(actual)
    elif pa.types.is_floating(expected):
        ok = pa.types.is_floating(actual) or pa.types.is_integer(actual) or pa.types.is_null(actual)
    else:  # list<float32>
        ok = pa.types.is_null(actual) or (
            (pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_fixed_size_list(actual))
            and pa.types.is_floating(actual.value_type)
        )
    if not ok:
        raise InferenceLogError(f"{url}: column {name!r} must be {expected}, found {actual}")


def _read_part(store: ObjectStore, key: str, schema: pa.Schema, required: Sequence[str]) -> pa.Table:
    """One part read, checked against ``schema`` and cast to it (absent optional columns become null)."""
    url = store.url(key)
    try:
        table = pq.read_table(io.BytesIO(store.get(key)))
    except StoreError as exc:
        raise InferenceLogError(f"{url}: unreadable ({exc})") from exc
    except Exception as exc:  # pyarrow raises several types for truncated or corrupt files
        raise InferenceLogError(f"{url}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    for name in required:
        if name not in table.column_names:
            raise InferenceLogError(f"{url}: missing required column {name!r}; found columns {table.column_names}")
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(len(table), f.type))
            continue
        col = table[f.name]
        _check_type(url, f.name, col.type)
        columns.append(col.cast(f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _matrix(column: pa.ChunkedArray, what: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    """A list<float32> column as an (n, k) float32 matrix (NaN rows for nulls) and its validity mask."""
    arr = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)[valid]
    if len(lengths) and lengths.min() != lengths.max():
        raise InferenceLogError(
            f"{root}: column {what!r} holds arrays of different lengths "
            f"{sorted(set(lengths.tolist()))[:5]}; the format needs a fixed width"
        )
    width = int(lengths[0]) if len(lengths) else 0
    out = np.full((len(arr), width), np.nan, dtype=np.float32)
    if valid.any() and width:
        out[valid] = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return out, valid


def _as_utc(value: date | datetime) -> datetime:
    """A date (its midnight) or datetime as an aware UTC datetime; naive datetimes are taken as UTC."""
    if not isinstance(value, datetime):
        return datetime.combine(value, time(), tzinfo=timezone.utc)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass
class LogWindow:
    """Inference logs of ``[start, end)`` joined with their late labels, plus numpy views of the columns.

    ``x`` (n, d) float32, ``probs`` (n, C) float32, ``labels`` (n,) int64 with -1 where unknown,
    ``teacher_logits`` (n, C) float32 with NaN rows where not shadow-scored."""

    root: str
    start: datetime
    end: datetime
    frame: pd.DataFrame
    x: np.ndarray
    probs: np.ndarray
    teacher_logits: np.ndarray
    shadow_mask: np.ndarray
    labels: np.ndarray
    dates: list[date] = field(default_factory=list)
    missing_dates: list[date] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def label_mask(self) -> np.ndarray:
        """Rows whose label is known."""
        return self.labels >= 0

    @property
    def request_ids(self) -> np.ndarray:
        """The request ids, in row order."""
        return self.frame["request_id"].to_numpy(dtype=str)

    @property
    def model_versions(self) -> np.ndarray:
        """The version that served each row (``model_version``), as strings."""
        return self.frame["model_version"].astype(str).to_numpy(dtype=str)

    @property
    def answered_by(self) -> np.ndarray:
        """Who answered each row: ``student``, ``teacher`` or None (not recorded), as an object array."""
        return np.array([a if isinstance(a, str) else None for a in self.frame["answered_by"]], dtype=object)

    @property
    def latency_ms(self) -> np.ndarray:
        """Each row's server latency in ms, NaN where not measured."""
        return pd.to_numeric(self.frame["latency_ms"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def read_window(
    root: str,
    start: date | datetime,
    end: date | datetime,
    endpoint_url: str | None = None,
    require_all_partitions: bool = True,
    labels_as_of: date | datetime | None = None,
) -> LogWindow:
    """Read the predictions with ``start <= timestamp < end`` (UTC) and join their late labels.

    Every date partition in the window must exist (:class:`InferenceLogError` naming the root and the missing
    dates) unless ``require_all_partitions=False``: then the missing dates are recorded on the result.
    ``labels_as_of`` ignores labels that arrived at or after that instant (to replay the past honestly)."""
    t0, t1 = _as_utc(start), _as_utc(end)
    if t1 <= t0:
        raise InferenceLogError(f"{root}: empty log window [{t0.isoformat()}, {t1.isoformat()})")
    store = open_store(root, endpoint_url=endpoint_url)
    wanted = [
        t0.date() + timedelta(days=i) for i in range(((t1 - timedelta(microseconds=1)).date() - t0.date()).days + 1)
    ]
    parts = {d: [k for k in store.list(f"date={d.isoformat()}/") if _PART.match(k)] for d in wanted}
    missing = [d for d in wanted if not parts[d]]
    if missing and require_all_partitions:
        shown = ", ".join(d.isoformat() for d in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InferenceLogError(
            f"{store.uri}: {len(missing)} missing log partition(s) in [{t0.date()}, {t1.date()}): date={shown}"
        )
    tables = [_read_part(store, k, LOG_SCHEMA, REQUIRED_COLUMNS) for d in wanted for k in parts[d]]
    table = pa.concat_tables(tables) if tables else LOG_SCHEMA.empty_table()
    ts = table["timestamp"]
    table = table.filter(pc.and_(pc.greater_equal(ts, pa.scalar(t0, ts.type)), pc.less(ts, pa.scalar(t1, ts.type))))
    table = table.sort_by([("timestamp", "ascending"), ("request_id", "ascending")])
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    dup = frame["request_id"].duplicated()
    if dup.any():
        raise InferenceLogError(
            f"{store.uri}: {int(dup.sum())} duplicated request_id(s) in the window, "
            f"e.g. {frame.loc[dup, 'request_id'].head(3).tolist()}"
        )
    frame = _join_labels(store, frame, t0, None if labels_as_of is None else _as_utc(labels_as_of))
    x, _ = _matrix(table["x"], "x", store.uri)
    probs, _ = _matrix(table["probabilities"], "probabilities", store.uri)
    teacher, shadow = _matrix(table["teacher_logits"], "teacher_logits", store.uri)
    if not shadow.any():
        teacher = np.full((len(frame), probs.shape[1]), np.nan, dtype=np.float32)
    labels = frame["label"].fillna(-1).to_numpy(dtype=np.int64)
    return LogWindow(
        root=store.uri,
        start=t0,
        end=t1,
        frame=frame,
        x=x,
        probs=probs,
        teacher_logits=teacher,
        shadow_mask=shadow,
        labels=labels,
        dates=[d for d in wanted if parts[d]],
        missing_dates=missing,
    )


def _join_labels(store: ObjectStore, frame: pd.DataFrame, since: datetime, as_of: datetime | None) -> pd.DataFrame:
    """Join label files dated on or after ``since`` (labels arrive after the prediction) by request id."""
    frame["label_timestamp"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    keys = [
        k
        for d, ks in _partitions(store, LABELS_PREFIX).items()
        if d >= since.date() and (as_of is None or d <= as_of.date())
        for k in ks
    ]
    if not keys or frame.empty:
        return frame
    late = pa.concat_tables([_read_part(store, k, LABEL_SCHEMA, LABEL_SCHEMA.names) for k in keys]).to_pandas()
    if as_of is not None:
        late = late[late["label_timestamp"] < as_of]
    late = late.sort_values("label_timestamp", kind="stable").drop_duplicates("request_id", keep="last")
    late = late.set_index("request_id")
    joined = frame["request_id"].map(late["label"])
    has = joined.notna().to_numpy()
    if not has.any():  # e.g. every label arrived after ``as_of``
        return frame
    frame.loc[has, "label"] = joined[has].astype("int64")
    frame.loc[has, "label_timestamp"] = frame.loc[has, "request_id"].map(late["label_timestamp"])
    return frame
