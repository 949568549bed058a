"""Derived feature columns for GX (kind, length, finiteness, sampled range status), feature ranges learned
from train, and the per-feature scale comparison with train (see :mod:`kdflow.validation`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kdflow.config import FeatureSpec, ValidationConfig


@dataclass
class FeatureProfile:
    """Row-level derived columns for GX, and the well-formed finite rows as a float matrix (for ranges)."""

    derived: dict[str, Any]  # column name -> values (numpy array or pandas Categorical)
    matrix: np.ndarray  # (m, d): rows that are numeric, of the expected width and finite
    rows: np.ndarray  # (m,): their row numbers in the frame
    names: list[str]  # the d feature names: ``x[0]`` ... ``x[d-1]``, or the named columns
    width: int | None  # the expected width used
    range_column: str  # derived column that holds the sampled range status


FINITE = ["finite", "nan", "inf", "-inf"]  # categories of ``*__finite``: the row's first non-finite value


def _finite_codes(x: np.ndarray) -> np.ndarray:
    """Per row of ``x`` (n, d), an index into :data:`FINITE`: 0 when every value is finite, else the kind
    of the row's first non-finite value."""
    codes = np.zeros(len(x), dtype=np.int8)
    bad = ~np.isfinite(x)
    rows = np.flatnonzero(bad.any(axis=1))
    if len(rows):
        vals = x[rows, bad[rows].argmax(axis=1)]
        codes[rows] = np.where(np.isnan(vals), 1, np.where(vals > 0, 2, 3))
    return codes


def _categorical(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
    """A categorical column from codes (-1 = null): cheap for GX to hash, compare and count."""
    return pd.Categorical.from_codes(codes, categories=categories)


def array_kinds(values: np.ndarray) -> tuple[pd.Categorical, np.ndarray]:
    """Per row of an object column: its kind ("array" = 1-D numeric array; else e.g. "str", "null",
    "array of str") and its length (NaN unless "array"). Fast path when every row is a 1-D numeric array."""
    n = len(values)
    if (
        n
        and set(map(type, values)) == {np.ndarray}
        and {(v.dtype.kind, v.ndim) for v in values} <= {("f", 1), ("i", 1), ("u", 1)}
    ):
        return _categorical(np.zeros(n, dtype=np.int8), ["array"]), np.fromiter(map(len, values), np.float64, n)
    kinds = np.full(n, "array", dtype=object)
    lengths = np.full(n, np.nan)
    for i, v in enumerate(values):
        if isinstance(v, (list, tuple)):
            v = np.asarray(v)
        if isinstance(v, np.ndarray):
            if v.ndim == 1 and v.dtype.kind in "fiu":
                lengths[i] = v.shape[0]
            elif v.ndim != 1:
                kinds[i] = f"{v.ndim}-d array"
            else:
                kinds[i] = f"array of {'bool' if v.dtype.kind == 'b' else 'str' if v.dtype.kind in 'USO' else v.dtype}"
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            kinds[i] = "null"
        else:
            kinds[i] = type(v).__name__
    return pd.Categorical(kinds), lengths


def profile_features(df: pd.DataFrame, spec: FeatureSpec, width: int | None) -> FeatureProfile:
    """Derive the GX-checkable feature columns (see the module docstring) and collect the well-formed,
    finite rows as a matrix. ``width`` None: the most common array length is the expected one."""
    n = len(df)
    if spec.columns:
        derived: dict[str, Any] = {}
        for c in spec.columns:
            numeric = c in df.columns and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
            codes = _finite_codes(df[c].to_numpy(dtype=np.float64)[:, None]) if numeric else np.full(n, -1, np.int8)
            derived[f"{c}__finite"] = _categorical(codes, FINITE)
        x, rows = np.zeros((0, len(spec.columns))), np.zeros(0, dtype=np.int64)
        if all(f"{c}__finite" in derived and (derived[f"{c}__finite"].codes >= 0).all() for c in spec.columns):
            x = df[spec.columns].to_numpy(dtype=np.float64)
            rows = np.flatnonzero(np.isfinite(x).all(axis=1))
            x = x[rows]
        return FeatureProfile(derived, x, rows, list(spec.columns), len(spec.columns), "features__range")
    col = spec.column
    if col not in df.columns:
        return FeatureProfile({}, np.zeros((0, 0)), np.zeros(0, dtype=np.int64), [], width, f"{col}__range")
    values = df[col].to_numpy(dtype=object)
    kinds, lengths = array_kinds(values)
    arrays = np.asarray(kinds == "array")
    if width is None and arrays.any():
        width = int(np.bincount(lengths[arrays].astype(np.int64)).argmax())
    rows = np.flatnonzero(arrays & (lengths == width))
    codes = np.full(n, -1, dtype=np.int8)
    x = np.zeros((0, width or 0), dtype=np.float32)
    if len(rows):
        x = np.stack(values if len(rows) == n else values[rows])  # (m, width), the file's dtype (float32)
        codes[rows] = _finite_codes(x)
        keep = codes[rows] == 0
        if not keep.all():
            x, rows = x[keep], rows[keep]
    derived = {f"{col}__kind": kinds, f"{col}__length": lengths, f"{col}__finite": _categorical(codes, FINITE)}
    return FeatureProfile(derived, x, rows, [f"{col}[{i}]" for i in range(x.shape[1])], width, f"{col}__range")


@dataclass
class FeatureRanges:
    """Per-feature accepted ``[low, high]``, learned from a reference (train) and widened by a margin."""

    names: list[str]
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def learn(cls, names: list[str], matrix: np.ndarray, margin: float) -> "FeatureRanges | None":
        """Min/max of each column of ``matrix`` (finite rows), each side widened by ``margin`` x span
        (x max(|value|, 1) for a constant feature). None for an empty matrix."""
        if matrix.size == 0:
            return None
        lo, hi = matrix.min(axis=0).astype(np.float64), matrix.max(axis=0).astype(np.float64)
        pad = margin * np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1.0))
        return cls(list(names), lo - pad, hi + pad)

    def status(self, matrix: np.ndarray) -> np.ndarray:
        """Per row: "in range", or the first feature outside its range, e.g. ``x[3]=9.1 > 4.2``."""
        out = np.full(len(matrix), "in range", dtype=object)
        outside = (matrix < self.low) | (matrix > self.high)
        for r in np.flatnonzero(outside.any(axis=1)):
            j = int(outside[r].argmax())
            v, below = matrix[r, j], matrix[r, j] < self.low[j]
            out[r] = f"{self.names[j]}={v:.4g} {'<' if below else '>'} {self.low[j] if below else self.high[j]:.4g}"
        return out

    def as_dict(self) -> dict[str, list[float]]:
        """``{name: [low, high]}`` for the report."""
        return {n: [float(lo), float(hi)] for n, lo, hi in zip(self.names, self.low, self.high)}


def deterministic_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample of ``min(n, size)`` rows (all rows when ``n <= size``)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def add_range_status(
    profile: FeatureProfile,
    ranges: FeatureRanges,
    n_rows: int,
    sample_size: int,
    seed: int,
    sample: np.ndarray | None = None,
) -> int:
    """Fill ``profile.derived[range_column]`` with the range status of a deterministic sample of the
    well-formed rows (null elsewhere, so GX counts only sampled rows); returns the sample size. ``sample``:
    positions in ``profile.rows`` to check instead (a chunk's share of a split-wide sample)."""
    codes = np.full(n_rows, -1, dtype=np.int32)
    categories: list[str] = ["in range"]
    if sample is None:
        sample = deterministic_sample(len(profile.rows), sample_size, seed)
    if len(sample) and ranges.names == profile.names:
        sampled_codes, uniques = pd.factorize(ranges.status(profile.matrix[sample]))
        codes[profile.rows[sample]] = sampled_codes
        categories = [str(u) for u in uniques] or categories
    profile.derived[profile.range_column] = _categorical(codes, categories)
    return len(sample)


@dataclass
class FeatureMoments:
    """Per-feature mean, standard deviation and kurtosis of a (sampled) feature matrix, for the scale check."""

    names: list[str]
    n: int
    mean: np.ndarray
    sd: np.ndarray
    kurtosis: np.ndarray  # m4 / m2^2 (3 for a normal feature); 1 where the feature is constant

    @classmethod
    def of(cls, names: list[str], matrix: np.ndarray) -> "FeatureMoments | None":
        """Moments of each column of ``matrix`` (float64 arithmetic); None below 2 rows."""
        if matrix.ndim != 2 or len(matrix) < 2:
            return None
        x = np.asarray(matrix, dtype=np.float64)
        mean = x.mean(axis=0)
        squares = np.square(x - mean)
        m2 = squares.mean(axis=0)
        m4 = np.square(squares, out=squares).mean(axis=0)
        kurtosis = np.where(m2 > 0, m4 / np.where(m2 > 0, m2, 1.0) ** 2, 1.0)
        return cls(list(names), len(x), mean, np.sqrt(m2 * len(x) / (len(x) - 1)), np.maximum(kurtosis, 1.0))


@dataclass
class ScaleDifference:
    """One feature whose location or spread differs from train's beyond the configured limits."""

    feature: str
    mean: float
    train_mean: float
    sd: float
    train_sd: float
    mean_shift: float  # |mean - train mean| / pooled sd
    mean_limit: float  # max(max_mean_shift, scale_z x its standard error)
    log_sd_ratio: float  # |ln(sd / train sd)|, sds floored
    log_sd_limit: float  # max(max_log_sd_ratio, scale_z x its standard error)

    @property
    def severity(self) -> float:
        """How far past its limit the worse statistic is (> 1 for every reported difference)."""
        return max(self.mean_shift / self.mean_limit, self.log_sd_ratio / self.log_sd_limit)

    def describe(self) -> str:
        """e.g. ``x[3]: sd 9.8 vs train 0.98 (|ln sd ratio| 2.30, allowed <= 0.69)``."""
        parts = []
        if self.log_sd_ratio > self.log_sd_limit:
            parts.append(
                f"sd {self.sd:.4g} vs train {self.train_sd:.4g} "
                f"(|ln sd ratio| {self.log_sd_ratio:.2f}, allowed <= {self.log_sd_limit:.2f})"
            )
        if self.mean_shift > self.mean_limit:
            parts.append(
                f"mean {self.mean:.4g} vs train {self.train_mean:.4g} "
                f"(standardized mean difference {self.mean_shift:.2f}, allowed <= {self.mean_limit:.2f})"
            )
        return f"{self.feature}: " + "; ".join(parts)


def scale_differences(train: FeatureMoments, other: FeatureMoments, config: ValidationConfig) -> list[ScaleDifference]:
    """The features of ``other`` whose mean or spread differs from train's, most severe first.

    Two-sided per feature: the standardized mean difference ``|mean - mean_t| / sqrt((sd^2 + sd_t^2) / 2)``
    and ``|ln(sd / sd_t)|``, each against ``max(threshold, scale_z x standard error)``. Standard errors:
    ``sqrt(1/n + 1/n_t)`` for the mean difference, ``sqrt((kurtosis_t - 1) / 4 x (1/n + 1/n_t))`` for the log sd
    ratio (the delta method; a normal feature's kurtosis is 3), so a small split or a heavy-tailed feature
    (a pixel that is rarely non-zero) is not failed on sampling noise. Sds are floored at ``scale_sd_floor``
    times train's root-mean-square feature sd."""
    if train.names != other.names:
        return []
    floor = max(config.scale_sd_floor * float(np.sqrt(np.mean(train.sd**2))), 1e-12)
    sd_t, sd_o = np.maximum(train.sd, floor), np.maximum(other.sd, floor)
    pooled = np.maximum(np.sqrt((train.sd**2 + other.sd**2) / 2), floor)
    mean_shift = np.abs(other.mean - train.mean) / pooled
    log_ratio = np.abs(np.log(sd_o / sd_t))
    inv_n = 1.0 / other.n + 1.0 / train.n
    mean_limit = max(config.max_mean_shift, config.scale_z * float(np.sqrt(inv_n)))
    log_limit = np.maximum(config.max_log_sd_ratio, config.scale_z * np.sqrt((train.kurtosis - 1.0) / 4.0 * inv_n))
    out = [
        ScaleDifference(
            train.names[j],
            float(other.mean[j]),
            float(train.mean[j]),
            float(other.sd[j]),
            float(train.sd[j]),
            float(mean_shift[j]),
            mean_limit,
            float(log_ratio[j]),
            float(log_limit[j]),
        )
        for j in np.flatnonzero((mean_shift > mean_limit) | (log_ratio > log_limit))
    ]
    return sorted(out, key=lambda d: -d.severity)
