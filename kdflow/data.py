"""Datasets as Parquet files: an ``id`` column, the features, and ``label`` where labeled.

Features are either one fixed-length float array column (default ``x``) or named numeric columns.
Files are addressed by local path, ``file://`` or ``s3://`` URI (read through :mod:`kdflow.store`).

Duties: this module reads files and converts frames; it holds no rule on their content. :func:`read_frame`
fails only on a file it cannot read at all (missing, empty, not Parquet); every rule on what a dataset holds
(columns, ids, feature kind, width and finiteness, labels, row counts, cross-split checks) is one expectation of
the Great Expectations suites in :mod:`kdflow.validation`, which run first in every flow. :func:`dataset_from_frame`
converts a frame that passed them.
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

    def head(self, n: int) -> np.ndarray:
        """Features of the first ``min(n, len)`` rows."""
        return self.x[:n]

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


def _features(df: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Stack the feature column(s) of a validated frame into a float32 (n, d) array."""
    if spec.columns:
        return df[spec.columns].to_numpy(dtype=np.float32)
    values = df[spec.column].to_numpy()
    if len(values) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(values).astype(np.float32)


def dataset_from_frame(df: pd.DataFrame, name: str, uri: str, cfg: DataConfig, labeled: bool) -> Dataset:
    """Convert a frame that passed validation (:func:`kdflow.validation.validate_data`) to a :class:`Dataset`.

    No checks of its own: every rule on the content lives in the validation suites. A frame that skipped them
    and cannot be converted is one :class:`DataError` naming the file and pointing at validation."""
    try:
        ids = df[cfg.id_column].to_numpy()
        if ids.dtype.kind not in "iu":
            ids = ids.astype(str)
        x = _features(df, cfg.features)
        if cfg.features.shape:
            x = x.reshape(len(x), *cfg.features.shape)
        y = df[cfg.label_column].to_numpy(dtype=np.int64) if labeled else None
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(
            f"{uri}: {name} cannot be converted to arrays ({type(exc).__name__}: {exc}); "
            "validate it first (kdflow.validation.validate_data names what is wrong)"
        ) from exc
    return Dataset(name=name, uri=uri, ids=ids, x=x, y=y)


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
    ``recent``, ``recent_labeled``, ``recent_val``), all with one feature shape. Reads like a ``dict[str, Dataset]``; the
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
    def selection(self) -> Dataset:
        """What the student's best epoch, temperature and cascade threshold are chosen on: a retrain's recent
        labeled rows set aside for it (``recent_val``, the traffic it will serve), else the validation split."""
        return self._splits.get("recent_val", self.val)

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


def datasets_from_frames(
    frames: Mapping[str, pd.DataFrame], uris: Mapping[str, str], labeled: Mapping[str, bool], cfg: DataConfig
) -> Datasets:
    """Build every validated split (:func:`dataset_from_frame`) into one :class:`Datasets`; a split whose
    feature shape differs from the others' is an error naming every split's shape."""
    return Datasets(
        {name: dataset_from_frame(frame, name, uris[name], cfg, labeled[name]) for name, frame in frames.items()}
    )
