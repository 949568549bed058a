"""Datasets as Parquet files: an ``id`` column, the features, and ``label`` where labeled.

Features are either one fixed-length float array column (default ``x``) or named numeric columns.
Files are addressed by local path, ``file://`` or ``s3://`` URI (read through :mod:`kdflow.store`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.config import DataConfig, FeatureSpec
from kdflow.store import StoreError, open_store, split_uri


class DataError(ValueError):
    """A dataset file is missing, unreadable or does not match the expected schema."""


@dataclass
class Dataset:
    """One split in memory: ``ids`` (n,), ``x`` float32 (n, *shape), ``y`` int64 (n,) or ``None``."""

    name: str
    uri: str
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample feature shape."""
        return tuple(self.x.shape[1:])

    @property
    def fingerprint(self) -> str:
        """SHA-256 over ids, features (float32) and labels: identical content gives an identical key."""
        h = hashlib.sha256()
        if self.ids.dtype.kind in "iu":
            h.update(b"int-ids")
            h.update(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        else:
            h.update(b"str-ids")
            h.update("\n".join(map(str, self.ids)).encode())
        h.update(repr(self.x.shape).encode())
        h.update(np.ascontiguousarray(self.x, dtype="<f4").tobytes())
        if self.y is not None:
            h.update(b"labels")
            h.update(np.ascontiguousarray(self.y, dtype="<i8").tobytes())
        return h.hexdigest()


def read_frame(uri: str, endpoint_url: str | None = None) -> pd.DataFrame:
    """Read one Parquet file (path, file:// or s3://) into a DataFrame; errors name the file."""
    root, key = split_uri(uri)
    try:
        raw = open_store(root, endpoint_url=endpoint_url).get(key)
    except StoreError as exc:
        raise DataError(f"dataset file not found or unreadable: {uri} ({exc})") from exc
    if not raw:
        raise DataError(f"{uri}: file is empty (0 bytes)")
    try:
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise DataError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def _features(df: pd.DataFrame, spec: FeatureSpec, uri: str) -> np.ndarray:
    """Stack the feature column(s) into a float32 (n, d) array with schema errors that name the column."""
    if spec.columns:
        missing = [c for c in spec.columns if c not in df.columns]
        if missing:
            raise DataError(f"{uri}: missing feature column(s) {missing}; found columns {list(df.columns)}")
        bad = [c for c in spec.columns if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]
        if bad:
            kinds = {c: str(df[c].dtype) for c in bad}
            raise DataError(f"{uri}: feature column(s) must be numeric, found {kinds}")
        return df[spec.columns].to_numpy(dtype=np.float32)
    col = spec.column
    if col not in df.columns:
        raise DataError(f"{uri}: missing feature column {col!r}; found columns {list(df.columns)}")
    values = df[col].to_numpy()
    if len(values) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if any(v is None for v in values):
        n = sum(v is None for v in values)
        raise DataError(f"{uri}: feature column {col!r} has {n} null row(s)")
    lengths = np.fromiter((len(v) if hasattr(v, "__len__") and not isinstance(v, str) else -1 for v in values),
                          dtype=np.int64, count=len(values))
    if (lengths < 0).any():
        raise DataError(f"{uri}: feature column {col!r} must hold float arrays, found {type(values[int(np.argmax(lengths < 0))]).__name__}")
    if lengths.min() != lengths.max():
        common = int(np.bincount(lengths).argmax())
        bad = np.flatnonzero(lengths != common)
        raise DataError(
            f"{uri}: feature column {col!r} has arrays of different lengths: expected {common}, "
            f"found {sorted(set(lengths[bad].tolist()))[:5]} in {len(bad)} row(s)"
        )
    try:
        return np.stack(values).astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{uri}: feature column {col!r} is not numeric: {exc}") from exc


def dataset_from_frame(df: pd.DataFrame, name: str, uri: str, cfg: DataConfig, labeled: bool) -> Dataset:
    """Convert a frame to a :class:`Dataset`, checking schema, finiteness, width and label range."""
    if cfg.id_column not in df.columns:
        raise DataError(f"{uri}: missing id column {cfg.id_column!r}; found columns {list(df.columns)}")
    if len(df) < cfg.min_rows:
        raise DataError(f"{uri}: {len(df)} row(s), expected at least {cfg.min_rows}")
    ids = df[cfg.id_column].to_numpy()
    if pd.isna(df[cfg.id_column]).any():
        raise DataError(f"{uri}: id column {cfg.id_column!r} has {int(pd.isna(df[cfg.id_column]).sum())} null value(s)")
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise DataError(f"{uri}: id column {cfg.id_column!r} has {int(dup.sum())} duplicated id(s), e.g. {ids[dup][:3].tolist()}")
    if ids.dtype.kind not in "iu":
        ids = ids.astype(str)
    x = _features(df, cfg.features, uri)
    bad_rows = ~np.isfinite(x).all(axis=1)
    if bad_rows.any():
        raise DataError(f"{uri}: {int(bad_rows.sum())} row(s) with NaN or infinite features, e.g. ids {ids[bad_rows][:3].tolist()}")
    if cfg.features.shape:
        width = int(np.prod(cfg.features.shape))
        if x.shape[1] != width:
            raise DataError(f"{uri}: feature width {x.shape[1]}, expected {width} for shape {cfg.features.shape}")
        x = x.reshape(len(x), *cfg.features.shape)
    y = None
    if labeled:
        col = cfg.label_column
        if col not in df.columns:
            raise DataError(f"{uri}: missing label column {col!r}")
        labels = df[col]
        if labels.isna().any():
            raise DataError(f"{uri}: label column {col!r} has {int(labels.isna().sum())} null value(s)")
        if not pd.api.types.is_integer_dtype(labels):
            raise DataError(f"{uri}: label column {col!r} must be integer, found {labels.dtype}")
        y = labels.to_numpy(dtype=np.int64)
        out = (y < 0) | (y >= cfg.num_classes)
        if out.any():
            raise DataError(
                f"{uri}: {int(out.sum())} label(s) outside [0, {cfg.num_classes}), e.g. {sorted(set(y[out].tolist()))[:5]}"
            )
    return Dataset(name=name, uri=uri, ids=ids, x=x, y=y)


def load_dataset(name: str, uri: str, cfg: DataConfig, labeled: bool = True, endpoint_url: str | None = None) -> Dataset:
    """Read and check one split."""
    return dataset_from_frame(read_frame(uri, endpoint_url), name, uri, cfg, labeled)


def to_frame(ids: np.ndarray, x: np.ndarray, y: np.ndarray | None = None, feature_column: str = "x") -> pd.DataFrame:
    """A frame in kdflow's layout: ``id``, an array feature column and optionally ``label``."""
    frame = pd.DataFrame({"id": ids, feature_column: list(np.asarray(x, dtype=np.float32).reshape(len(x), -1))})
    if y is not None:
        frame["label"] = np.asarray(y, dtype=np.int64)
    return frame


def write_parquet(df: pd.DataFrame, path: str | Path, row_group_size: int = 8192) -> Path:
    """Write a frame as Parquet, creating the parent directory. Row groups of ``row_group_size`` rows let the
    trainer stream a large file with bounded memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, row_group_size=row_group_size)
    return path


class Datasets(Mapping[str, Dataset]):
    """The validated splits of one run by name (``train``, ``val``, ``test`` and the optional ``transfer``,
    ``recent``, ``recent_labeled``), all with one feature shape. Reads like a ``dict[str, Dataset]``; the
    splits every flow needs are attributes."""

    def __init__(self, splits: Mapping[str, Dataset]) -> None:
        self._splits = dict(splits)
        shapes = {name: ds.input_shape for name, ds in self._splits.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"feature shapes differ between splits: {shapes}")

    def __getitem__(self, name: str) -> Dataset:
        return self._splits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._splits)

    def __len__(self) -> int:
        return len(self._splits)

    def __repr__(self) -> str:
        return f"Datasets({', '.join(f'{n}={len(d)}' for n, d in self._splits.items())})"

    @property
    def train(self) -> Dataset:
        """The labeled training split."""
        return self._splits["train"]

    @property
    def val(self) -> Dataset:
        """The labeled validation split (early stopping, calibration, teacher weights)."""
        return self._splits["val"]

    @property
    def test(self) -> Dataset:
        """The labeled test split (evaluation, the gate)."""
        return self._splits["test"]

    @property
    def recent_labeled(self) -> Dataset | None:
        """Recent labeled production traffic (a retrain), else ``None``."""
        return self._splits.get("recent_labeled")

    @property
    def reference(self) -> Dataset:
        """What the student's reference profile describes (what drift checks compare production with): the
        recent labeled traffic a retrained student serves, else the validation split."""
        return self.recent_labeled if self.recent_labeled is not None else self.val

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-sample feature shape shared by every split."""
        return next(iter(self._splits.values())).input_shape

    def fingerprints(self) -> dict[str, str]:
        """Content fingerprint of each split, by name (store keys, checkpoints, provenance)."""
        return {name: ds.fingerprint for name, ds in self._splits.items()}


def datasets_from_frames(frames: Mapping[str, pd.DataFrame], uris: Mapping[str, str], labeled: Mapping[str, bool],
                         cfg: DataConfig) -> Datasets:
    """Build every validated split (:func:`dataset_from_frame`) into one :class:`Datasets`; a split whose
    feature shape differs from the others' is an error naming every split's shape."""
    return Datasets({name: dataset_from_frame(frame, name, uris[name], cfg, labeled[name])
                     for name, frame in frames.items()})
