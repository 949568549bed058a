"""Reading a dataset's files (a file, a directory of parquet files, a glob) and comparing their schemas."""

from __future__ import annotations

import fnmatch
import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.data import DataError, read_frame
from kdflow.store import StoreError, open_store, split_uri


@dataclass
class SplitFrames:
    """The files of one dataset as read: ``frames`` per file URI; ``error`` if a file could not be read."""

    name: str
    uri: str
    labeled: bool
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    error: str | None = None

    def frame(self) -> pd.DataFrame:
        """All files concatenated in file order (row numbers 0..n-1)."""
        frames = list(self.frames.values())
        return frames[0].reset_index(drop=True) if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def expand_uri(uri: str, endpoint_url: str | None = None) -> list[str]:
    """The files a dataset URI names: one file, a local directory (its ``*.parquet``), a glob over file
    names (local or ``s3://``), or an ``s3://`` prefix ending in ``/`` (its ``*.parquet``), sorted."""
    if not uri.startswith("s3://"):
        path = uri.removeprefix("file://")
        if Path(path).is_dir():
            return sorted(str(p) for p in Path(path).glob("*.parquet"))
        return sorted(glob.glob(path)) if glob.has_magic(path) else [uri]
    if uri.endswith("/"):
        uri += "*.parquet"
    root, pattern = split_uri(uri)
    if not glob.has_magic(pattern):
        return [uri]
    try:
        keys = [k for k in open_store(root, endpoint_url=endpoint_url).list() if "/" not in k]
    except StoreError as exc:
        raise DataError(f"dataset URI {uri}: cannot list files ({exc})") from exc
    sep = "" if root.endswith("/") else "/"
    return [f"{root}{sep}{k}" for k in sorted(fnmatch.filter(keys, pattern))]


def read_split(name: str, uri: str, labeled: bool, endpoint_url: str | None = None) -> SplitFrames:
    """Read every file of one dataset; a missing, empty or corrupt file is recorded (with kdflow.data's
    message), not raised, so it joins the other failures in one report."""
    split = SplitFrames(name=name, uri=uri, labeled=labeled)
    try:
        files = expand_uri(uri, endpoint_url)
        if not files:
            raise DataError(f"dataset file not found or unreadable: {uri} (no file matches)")
        for file_uri in files:
            split.frames[file_uri] = read_frame(file_uri, endpoint_url)
    except DataError as exc:
        split.error = str(exc)
    return split


def column_kind(series: pd.Series) -> str:
    """A column's logical type for schema comparison: integer, float, bool, string, datetime,
    ``list<float>``/``list<integer>``/..., or ``object``. Width (int32 vs int64) is not drift."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "integer"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_string_dtype(series) and not pd.api.types.is_object_dtype(series):
        return "string"
    valid = series.dropna()
    if valid.empty:
        return "null"
    first = valid.iloc[0]
    if isinstance(first, (np.ndarray, list, tuple)):
        arr = np.asarray(first)
        inner = {"b": "bool", "i": "integer", "u": "integer", "f": "float"}.get(arr.dtype.kind, "object")
        return f"list<{'string' if arr.dtype.kind in 'US' else inner}>"
    if isinstance(first, str):
        return "string"
    return type(first).__name__


def frame_schema(df: pd.DataFrame, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Column name -> :func:`column_kind`, in column order."""
    return {c: column_kind(df[c]) for c in df.columns if c not in ignore}


def schema_drift(reference: dict[str, str], other: dict[str, str]) -> list[tuple[str, str]]:
    """``(column, description)`` for each column added, removed or re-typed in ``other`` vs ``reference``."""
    out = [(c, f"column {c!r} added") for c in other if c not in reference]
    out += [(c, f"column {c!r} removed") for c in reference if c not in other]
    out += [
        (c, f"column {c!r} re-typed from {reference[c]} to {other[c]}")
        for c in reference
        if c in other and reference[c] != other[c]
    ]
    return out
