"""Data validation with Great Expectations (GX Core 1.x): the first gate of every flow.

Suites (built by the ``*_suite`` functions below, versioned by :data:`SUITE_VERSION`, named
``kdflow-<role>-v<version>``), one per dataset role:

- labeled sets (train, val, test): minimum rows; ``id`` present, non-null, unique; every feature present,
  numeric and finite (or the array column holds numeric arrays of the expected length); ``label`` present,
  non-null, integer, in ``[0, C)``; every class present in the datasets of ``require_all_classes``;
  feature ranges learned from train (checked on a deterministic sample of the other datasets);
- transfer set: the same without a label (a label column there is dropped before validation: ignored);
- production inference logs (:func:`validate_inference_logs`): timestamp, model version, features,
  probabilities of length C, finite, in [0, 1] and summing to 1 within tolerance, optional label;
- teacher logits (:func:`validate_teacher_logits`): numeric, finite, shape rows x classes (plain checks in
  the same report format: a GX context is not worth it for three checks on an array).

GX cannot check a list column, so an array feature column ``x`` is profiled row by row (deterministically,
every row) into derived columns that GX validates instead: ``x__kind`` ("array" for a 1-D numeric array,
else what the row holds, e.g. "str"), ``x__length`` (null unless a numeric array), ``x__finite`` ("finite"
or the row's first non-finite value "nan" / "inf" / "-inf"; null unless a numeric array of the expected
length) and ``x__range`` ("in range" or the first feature outside the range learned from train, e.g.
``x[3]=9.1 > 4.2``; null except on the deterministic sample of at most ``sample_size`` rows). GX skips
nulls in these column-map expectations, so each row is judged once, by the first thing wrong with it.
Cheap checks (schema, nulls, ids, labels, finiteness) run on every row; only the range check is sampled.

Two cross-split checks are plain kdflow checks in the same report (a GX expectation sees one batch, and a
per-feature expectation would cost tens of ms per feature):

- ``ids.disjoint``: train, val, test and transfer must not share ids; each pair that does is one failure on the
  later split, naming both splits, the count and a few ids. The transfer set may share ids with the splits in
  ``ValidationConfig.transfer_overlap_allowed`` (train by default: the training inputs are the classic transfer
  set). The retrain flow's ``recent`` traffic has ids of its own (hashed request ids) and is not compared.
- ``features.scale``: each split in ``scale_datasets`` against train, per feature and both ways, on the
  deterministic sample: standardized mean difference and ``|ln(sd / sd_train)|`` against thresholds that widen
  to ``scale_z`` standard errors for small or heavy-tailed samples (:func:`scale_differences`). The range check
  only asks whether a split falls inside train's range, so a train on a larger scale than the others passes it;
  this check does not. Superseded by an earlier failure on the feature column (e.g. the range check).

GX's cost is mostly per expectation (tens of ms each, whatever the rows), so a dataset gets one suite of
~15 expectations: one per-row status column per concern rather than one expectation per feature.

Schema drift (a column added, removed or re-typed) is compared between the files of one dataset (a dataset
URI may name a file, a local directory of ``*.parquet`` files, or a glob) and between each dataset and train,
and reported as such. Within a dataset it stops that dataset's suite (its files cannot form one frame);
between datasets, a column already failing an expectation is reported by that expectation, not twice.

All failures become ONE :class:`DataValidationError` naming each dataset and file, each failed expectation,
the count of offending rows and a few example values and ids. The report is written as JSON (ours and GX's
raw results), Markdown, a self-contained HTML page, and GX Data Docs: GX 1.24 renders Data Docs from an
ephemeral context (its docs site pointed at a directory of ours, ``context.build_data_docs()`` once after the
checkpoints); those pages load their CSS/JS from CDNs, hence the extra self-contained ``report.html``.
"""

from __future__ import annotations

import fnmatch
import glob
import html
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from kdflow.config import DataConfig, FeatureSpec, ValidationConfig
from kdflow.data import DataError, read_frame
from kdflow.store import StoreError, open_store, split_uri

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

SUITE_VERSION = 1
LABELED_SPLITS = ("train", "val", "test")
DISJOINT_SPLITS = ("train", "val", "test", "transfer")  # checked pairwise for shared ids
REFERENCE = "train"
_DOCS_SITE = "local_site"
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"]
NUMERIC_TYPES = INTEGER_TYPES + ["float16", "float32", "float64", "Float32", "Float64"]


class DataValidationError(DataError):
    """One or more datasets failed validation; ``report`` holds every check, the message lists the failures.

    (Constructed as ``DataValidationError(message, report)`` so it pickles: the message survives, the report
    does not cross a process boundary.)"""

    def __init__(self, message: str, report: "ValidationReport | None" = None):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------- results


@dataclass
class CheckResult:
    """One expectation (or plain check) on one dataset, as a person reads it."""

    dataset: str
    check: str                      # kdflow check id, e.g. "label.range", "schema.drift"
    expectation: str                # GX expectation type, or "kdflow.<check>" for plain checks
    column: str | None              # the dataset column concerned
    success: bool
    message: str = ""
    gx_column: str | None = None    # the column GX checked (a derived one such as ``x__finite``)
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    example_ids: list[Any] = field(default_factory=list)
    sampled: bool = False           # ran on the deterministic sample, not every row
    skipped: str | None = None      # why a failure is not reported (an earlier check on the column failed)

    @property
    def failed(self) -> bool:
        """A failure that counts (not superseded by an earlier failure on the same column)."""
        return not self.success and self.skipped is None


@dataclass
class DatasetReport:
    """Every check run on one dataset, with its files, row count and column kinds."""

    name: str
    uri: str
    files: list[str]
    rows: int | None
    suite: str | None
    checks: list[CheckResult] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """No counted failure."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        """The failures reported to the user."""
        return [c for c in self.checks if c.failed]


@dataclass
class ValidationReport:
    """The outcome of validating a set of datasets, with GX's raw results and the Data Docs directory."""

    datasets: dict[str, DatasetReport] = field(default_factory=dict)
    gx_results: list[dict[str, Any]] = field(default_factory=list)
    docs_dir: Path | None = None
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        """Every dataset passed."""
        return all(d.success for d in self.datasets.values())

    @property
    def failures(self) -> list[CheckResult]:
        """Every counted failure, dataset by dataset."""
        return [c for d in self.datasets.values() for c in d.failures]

    def error_message(self) -> str:
        """One message: a summary line, then one line per failed expectation naming dataset and file."""
        failed = [d for d in self.datasets.values() if not d.success]
        lines = [f"data validation failed: {len(self.failures)} failed check(s) in "
                 + ", ".join(f"{d.name} ({d.uri})" for d in failed)]
        for d in failed:
            for c in d.failures:
                target = c.gx_column or c.column
                lines.append(f"  - {d.name}: {c.message} [{c.expectation}{'(' + target + ')' if target else ''}]")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`DataValidationError` if any dataset failed."""
        if not self.success:
            raise DataValidationError(self.error_message(), self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (GX's raw results are kept apart, in ``gx_results``)."""
        return _jsonable({
            "success": self.success, "suite_version": SUITE_VERSION, "gx_version": _gx_version(),
            "seconds": round(self.seconds, 3),
            "datasets": {n: {**{k: v for k, v in asdict(d).items() if k != "checks"}, "success": d.success,
                             "checks": [asdict(c) for c in d.checks]} for n, d in self.datasets.items()},
        })

    def to_markdown(self) -> str:
        """A short Markdown summary: one row per dataset, then each failure."""
        lines = [f"# Data validation: {'PASSED' if self.success else 'FAILED'}", "",
                 "| dataset | file(s) | rows | checks | failed | status |", "|---|---|---:|---:|---:|---|"]
        for d in self.datasets.values():
            counted = [c for c in d.checks if c.skipped is None]
            lines.append(f"| {d.name} | {', '.join(f'`{f}`' for f in d.files) or f'`{d.uri}`'} | "
                         f"{'' if d.rows is None else f'{d.rows:,}'} | {len(counted)} | {len(d.failures)} | "
                         f"{'pass' if d.success else '**FAIL**'} |")
        if not self.success:
            lines += ["", "## Failures", ""]
            lines += [f"- **{c.dataset}** `{c.expectation}`{' on `' + c.column + '`' if c.column else ''}: "
                      f"{c.message}" for c in self.failures]
        notes = [f"- {d.name}: {n}" for d in self.datasets.values() for n in d.notes]
        if notes:
            lines += ["", "## Notes", "", *notes]
        lines += ["", f"Suites `kdflow-*-v{SUITE_VERSION}`, Great Expectations {_gx_version()}, "
                      f"{self.seconds:.2f} s. Full results: `validation/` artifacts of the MLflow run "
                      "(summary.json, gx_results.json, report.html, data_docs/)."]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML page (no external CSS/JS) with every check of every dataset."""
        rows = []
        for d in self.datasets.values():
            for c in d.checks:
                state = "pass" if c.success else ("skipped" if c.skipped else "FAIL")
                cells = (d.name, c.expectation, c.column or "", state,
                         "" if c.unexpected_count is None else c.unexpected_count, c.message or c.skipped or "")
                rows.append(f"<tr class='{state.lower()}'>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells)
                            + "</tr>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>kdflow data validation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:left}tr.fail{background:#fdd}tr.skipped{color:#888}</style></head><body>"
            f"<h1>Data validation: {'PASSED' if self.success else 'FAILED'}</h1>"
            f"<pre>{html.escape(self.to_markdown())}</pre><h2>Every check</h2><table><tr><th>dataset</th>"
            "<th>expectation</th><th>column</th><th>result</th><th>offending rows</th><th>message</th></tr>"
            + "".join(rows) + "</table></body></html>")

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write summary.json, gx_results.json, report.md, report.html and data_docs/ under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"summary": out / "summary.json", "gx_results": out / "gx_results.json",
                 "markdown": out / "report.md", "html": out / "report.html"}
        paths["summary"].write_text(json.dumps(self.to_dict(), indent=2))
        paths["gx_results"].write_text(json.dumps(_jsonable(self.gx_results), indent=2))
        paths["markdown"].write_text(self.to_markdown())
        paths["html"].write_text(self.to_html())
        if self.docs_dir and Path(self.docs_dir).is_dir():
            if Path(self.docs_dir).resolve() != (out / "data_docs").resolve():
                # The site's static/ folder holds ~4 MB of GIFs and fonts the pages do not need to be read.
                shutil.copytree(self.docs_dir, out / "data_docs", dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.gif", "fonts", "*.otf", "*.png"))
            paths["data_docs"] = out / "data_docs"
        return paths


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars, NaN and other odd values so ``json.dumps`` accepts them."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _gx_version() -> str:
    from importlib.metadata import version

    return version("great_expectations")


# ----------------------------------------------------------------------------------- reading and schema


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
    out += [(c, f"column {c!r} re-typed from {reference[c]} to {other[c]}")
            for c in reference if c in other and reference[c] != other[c]]
    return out


# ------------------------------------------------------------------------------------ derived columns


@dataclass
class FeatureProfile:
    """Row-level derived columns for GX, and the well-formed finite rows as a float matrix (for ranges)."""

    derived: dict[str, Any]     # column name -> values (numpy array or pandas Categorical)
    matrix: np.ndarray          # (m, d): rows that are numeric, of the expected width and finite
    rows: np.ndarray            # (m,): their row numbers in the frame
    names: list[str]            # the d feature names: ``x[0]`` ... ``x[d-1]``, or the named columns
    width: int | None           # the expected width used
    range_column: str           # derived column that holds the sampled range status


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
    if n and set(map(type, values)) == {np.ndarray} and {(v.dtype.kind, v.ndim) for v in values} <= {
            ("f", 1), ("i", 1), ("u", 1)}:
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


def add_range_status(profile: FeatureProfile, ranges: FeatureRanges, n_rows: int, sample_size: int,
                     seed: int) -> int:
    """Fill ``profile.derived[range_column]`` with the range status of a deterministic sample of the
    well-formed rows (null elsewhere, so GX counts only sampled rows); returns the sample size."""
    codes = np.full(n_rows, -1, dtype=np.int32)
    categories: list[str] = ["in range"]
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
    kurtosis: np.ndarray     # m4 / m2^2 (3 for a normal feature); 1 where the feature is constant

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
    mean_shift: float        # |mean - train mean| / pooled sd
    mean_limit: float        # max(max_mean_shift, scale_z x its standard error)
    log_sd_ratio: float      # |ln(sd / train sd)|, sds floored
    log_sd_limit: float      # max(max_log_sd_ratio, scale_z x its standard error)

    @property
    def severity(self) -> float:
        """How far past its limit the worse statistic is (> 1 for every reported difference)."""
        return max(self.mean_shift / self.mean_limit, self.log_sd_ratio / self.log_sd_limit)

    def describe(self) -> str:
        """e.g. ``x[3]: sd 9.8 vs train 0.98 (|ln sd ratio| 2.30, allowed <= 0.69)``."""
        parts = []
        if self.log_sd_ratio > self.log_sd_limit:
            parts.append(f"sd {self.sd:.4g} vs train {self.train_sd:.4g} "
                         f"(|ln sd ratio| {self.log_sd_ratio:.2f}, allowed <= {self.log_sd_limit:.2f})")
        if self.mean_shift > self.mean_limit:
            parts.append(f"mean {self.mean:.4g} vs train {self.train_mean:.4g} "
                         f"(standardized mean difference {self.mean_shift:.2f}, allowed <= {self.mean_limit:.2f})")
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
    floor = max(config.scale_sd_floor * float(np.sqrt(np.mean(train.sd ** 2))), 1e-12)
    sd_t, sd_o = np.maximum(train.sd, floor), np.maximum(other.sd, floor)
    pooled = np.maximum(np.sqrt((train.sd ** 2 + other.sd ** 2) / 2), floor)
    mean_shift = np.abs(other.mean - train.mean) / pooled
    log_ratio = np.abs(np.log(sd_o / sd_t))
    inv_n = 1.0 / other.n + 1.0 / train.n
    mean_limit = max(config.max_mean_shift, config.scale_z * float(np.sqrt(inv_n)))
    log_limit = np.maximum(config.max_log_sd_ratio, config.scale_z * np.sqrt((train.kurtosis - 1.0) / 4.0 * inv_n))
    out = [ScaleDifference(train.names[j], float(other.mean[j]), float(train.mean[j]), float(other.sd[j]),
                           float(train.sd[j]), float(mean_shift[j]), mean_limit, float(log_ratio[j]),
                           float(log_limit[j]))
           for j in np.flatnonzero((mean_shift > mean_limit) | (log_ratio > log_limit))]
    return sorted(out, key=lambda d: -d.severity)


# ------------------------------------------------------------------------------------------- suites


def _exp(name: str, check: str, source: str | None, rank: int, gate: bool = False, **kwargs: Any):
    """A GX expectation tagged (in ``meta``) with kdflow's check id, its source column and its rank there.

    A failed ``gate`` expectation supersedes the later (higher-rank) failures on the same source column."""
    import great_expectations as gx

    meta = {"kdflow_check": check, "kdflow_column": source, "kdflow_rank": rank, "kdflow_gate": gate}
    return getattr(gx.expectations, name)(meta=meta, **kwargs)


def _columns_expectation(roles: dict[str, str]) -> Any:
    """One schema expectation for every required column (``roles``: column -> what it is, for messages);
    a missing column supersedes every other failure on it. An array column is required through its
    derived ``__kind`` column (the raw list column is not handed to GX)."""
    required = {f"{c}__kind" if role in ("feature array", "probabilities") else c: [role, c]
                for c, role in roles.items()}
    expectation = _exp("ExpectTableColumnsToMatchSet", "schema.columns", None, 0, column_set=list(required),
                       exact_match=False)
    expectation.meta["kdflow_roles"] = required
    return expectation


def _feature_roles(spec: FeatureSpec) -> dict[str, str]:
    return {c: "feature" for c in spec.columns} if spec.columns else {spec.column: "feature array"}


def _id_expectations(id_column: str) -> list:
    return [_exp("ExpectColumnValuesToNotBeNull", "id.not_null", id_column, 1, column=id_column),
            _exp("ExpectColumnValuesToBeUnique", "id.unique", id_column, 2, column=id_column)]


def _feature_expectations(spec: FeatureSpec, width: int | None, range_mostly: float | None) -> list:
    """Features present, numeric arrays of ``width`` (or numeric columns), finite; ranges when
    ``range_mostly`` is given (on the sampled ``*__range`` column)."""
    out = []
    if spec.columns:
        for c in spec.columns:
            out += [_exp("ExpectColumnValuesToBeInTypeList", "feature.numeric", c, 1, True, column=c,
                         type_list=NUMERIC_TYPES),
                    _exp("ExpectColumnValuesToBeInSet", "features.finite", c, 2, column=f"{c}__finite",
                         value_set=["finite"])]
        source, range_column = "features", "features__range"
    else:
        c = source = spec.column
        range_column = f"{c}__range"
        out.append(_exp("ExpectColumnValuesToBeInSet", "features.kind", c, 1, column=f"{c}__kind", value_set=["array"]))
        if width is not None:
            out.append(_exp("ExpectColumnValuesToBeInSet", "features.length", c, 2, column=f"{c}__length",
                            value_set=[float(width)]))
        out.append(_exp("ExpectColumnValuesToBeInSet", "features.finite", c, 3, column=f"{c}__finite",
                        value_set=["finite"]))
    if range_mostly is not None:
        out.append(_exp("ExpectColumnValuesToBeInSet", "features.range", source, 4, column=range_column,
                        value_set=["in range"], mostly=range_mostly))
    return out


def _label_expectations(label: str, num_classes: int, all_classes: bool, optional_per_row: bool = False) -> list:
    out = []
    if optional_per_row:  # inference logs: labels arrive late, so nulls (hence a float column) are allowed
        out.append(_exp("ExpectColumnValuesToBeInSet", "label.integer", label, 1,
                        column=f"{label}__integral", value_set=[True]))
    else:
        out += [_exp("ExpectColumnValuesToNotBeNull", "label.not_null", label, 1, True, column=label),
                _exp("ExpectColumnValuesToBeInTypeList", "label.integer", label, 2, True, column=label,
                     type_list=INTEGER_TYPES)]
    out.append(_exp("ExpectColumnValuesToBeBetween", "label.range", label, 3, column=label,
                    min_value=0, max_value=num_classes - 1))
    if all_classes:
        out.append(_exp("ExpectColumnDistinctValuesToContainSet", "label.classes", label, 4, column=label,
                        value_set=list(range(num_classes))))
    return out


def labeled_suite(data: DataConfig, width: int | None, min_rows: int, all_classes: bool,
                  range_mostly: float | None = None) -> list:
    """``kdflow-labeled``: rows >= min_rows; ids; features; integer labels in [0, C) (all classes present)."""
    roles = {data.id_column: "id", **_feature_roles(data.features), data.label_column: "label"}
    return ([_exp("ExpectTableRowCountToBeBetween", "rows.min", None, 0, min_value=min_rows),
             _columns_expectation(roles)]
            + _id_expectations(data.id_column) + _feature_expectations(data.features, width, range_mostly)
            + _label_expectations(data.label_column, data.num_classes, all_classes))


def transfer_suite(data: DataConfig, width: int | None, min_rows: int, range_mostly: float | None = None) -> list:
    """``kdflow-transfer``: rows >= min_rows; ids; features (no label)."""
    roles = {data.id_column: "id", **_feature_roles(data.features)}
    return ([_exp("ExpectTableRowCountToBeBetween", "rows.min", None, 0, min_value=min_rows),
             _columns_expectation(roles)]
            + _id_expectations(data.id_column) + _feature_expectations(data.features, width, range_mostly))


def inference_log_suite(num_classes: int, spec: FeatureSpec, width: int | None, columns: dict[str, str],
                        has_label: bool, config: ValidationConfig, with_ranges: bool = False) -> list:
    """``kdflow-inference-logs``: timestamp, model version, features, predicted probabilities (length C,
    finite, in [0, 1], summing to 1 within ``probability_tolerance``), optional label."""
    ts, mv, p = columns["timestamp"], columns["model_version"], columns["probabilities"]
    tol = config.probability_tolerance
    roles = {ts: "timestamp", mv: "model version", p: "probabilities", **_feature_roles(spec)}
    return ([_exp("ExpectTableRowCountToBeBetween", "rows.min", None, 0, min_value=1), _columns_expectation(roles),
             _exp("ExpectColumnValuesToNotBeNull", "timestamp.not_null", ts, 1, True, column=ts),
             _exp("ExpectColumnValuesToBeInSet", "timestamp.valid", ts, 2, column=f"{ts}__valid", value_set=[True]),
             _exp("ExpectColumnValuesToNotBeNull", "model_version.not_null", mv, 1, column=mv),
             _exp("ExpectColumnValuesToBeInSet", "probabilities.kind", p, 1, column=f"{p}__kind", value_set=["array"]),
             _exp("ExpectColumnValuesToBeInSet", "probabilities.length", p, 2, column=f"{p}__length",
                  value_set=[float(num_classes)]),
             _exp("ExpectColumnValuesToBeInSet", "probabilities.finite", p, 3, column=f"{p}__finite",
                  value_set=["finite"]),
             _exp("ExpectColumnValuesToBeInSet", "probabilities.unit", p, 4, column=f"{p}__unit", value_set=[True]),
             _exp("ExpectColumnValuesToBeBetween", "probabilities.sum", p, 5, column=f"{p}__sum",
                  min_value=1.0 - tol, max_value=1.0 + tol, mostly=config.probability_mostly)]
            + _feature_expectations(spec, width, config.range_mostly if with_ranges else None)
            + (_label_expectations(columns["label"], num_classes, False, optional_per_row=True) if has_label else []))


# -------------------------------------------------------------------------------------- running GX


class _GXRunner:
    """One ephemeral GX context per validation call: progress bars off, Data Docs built into ``docs_dir``."""

    def __init__(self, docs_dir: Path | None):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.docs_dir = docs_dir
        if docs_dir is not None:  # the ephemeral context's default site is a random temp dir: point it at ours
            site = dict(self.context.list_data_docs_sites()[_DOCS_SITE])
            site["store_backend"] = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}
            self.context.update_data_docs_site(_DOCS_SITE, site)
        self.source = self.context.data_sources.add_pandas("kdflow")
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, suite_name: str, expectations: list, frame: pd.DataFrame,
            index_columns: list[str], max_examples: int) -> list:
        """Validate ``frame`` with a suite of ``expectations`` through a checkpoint; the expectation results."""
        gx = self.gx
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        # Expectations passed to the constructor: adding them one by one to a stored suite re-saves it each time.
        suite = self.context.suites.add(gx.ExpectationSuite(
            name=f"{suite_name}.{name}", expectations=expectations,
            meta={"kdflow_suite": suite_name, "kdflow_suite_version": SUITE_VERSION}))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=name))
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": max_examples}
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{name}-checkpoint", validation_definitions=[definition], result_format=result_format))
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        results = []
        for run_result in outcome.run_results.values():
            self.results.append({"dataset": name, "suite": suite.name, **run_result.to_json_dict()})
            results += run_result.results
        return results

    def build_docs(self) -> None:
        """Render the Data Docs site once for every stored validation result (faster than per checkpoint)."""
        if self.docs_dir is not None and self.results:
            self.context.build_data_docs(site_names=[_DOCS_SITE])


@dataclass
class _Failure:
    """What a message template may use about one failed expectation."""

    uri: str
    column: str | None
    n: int | None
    res: dict[str, Any]
    examples: list[Any]
    ids: list[Any]
    extra: dict[str, Any]
    roles: dict[str, str] = field(default_factory=dict)  # dataset column -> role ("id", "feature", ...)

    @property
    def eg(self) -> str:
        return f"; e.g. ids {self.ids}" if self.ids else ""

    @property
    def kinds(self) -> list[str]:
        return sorted({str(e) for e in self.examples})


# One template per check; the wording of kdflow.data's pre-GX errors is kept where it existed.
_MESSAGES: dict[str, Callable[[_Failure], str]] = {
    "rows.min": lambda f: f"{f.res.get('observed_value')} row(s), expected at least {f.extra['min_rows']}",
    "schema.columns": lambda f: (
        ", ".join(f"missing {f.roles.get(c, 'required').replace(' array', '')} column {c!r}" for c in f.examples)
        + f"; found columns {f.extra['columns']}"),
    "id.not_null": lambda f: f"id column {f.column!r} has {f.n} null value(s)",
    "id.unique": lambda f: (f"id column {f.column!r} has {f.n} row(s) with duplicated id(s), "
                            f"e.g. {sorted(set(f.examples), key=str)}"),
    "features.kind": lambda f: (f"feature column {f.column!r} must hold float arrays, found {f.kinds} "
                                f"in {f.n} row(s){f.eg}"),
    "features.length": lambda f: (f"feature column {f.column!r} has arrays of different lengths: expected "
                                  f"{f.extra['width']}, found {sorted({int(e) for e in f.examples})} "
                                  f"in {f.n} row(s){f.eg}"),
    "feature.numeric": lambda f: (f"feature column(s) must be numeric, "
                                  f"found {{{f.column!r}: '{f.res.get('observed_value')}'}}"),
    "features.finite": lambda f: f"{f.n} row(s) with NaN or infinite features in {f.column!r} (e.g. {f.kinds}){f.eg}",
    "features.range": lambda f: (
        f"{f.n} of {f.res.get('element_count', 0) - f.res.get('missing_count', 0)} sampled row(s) "
        f"({f.res.get('unexpected_percent_nonmissing') or 0:.2f}%) have a feature outside the range learned from "
        f"train, more than the {100 * (1 - f.extra['range_mostly']):.2f}% allowed, e.g. {f.examples}{f.eg}"),
    "label.not_null": lambda f: f"label column {f.column!r} has {f.n} null value(s){f.eg}",
    "label.integer": lambda f: (f"label column {f.column!r} must be integer, found {f.res['observed_value']}"
                                if f.res.get("observed_value")
                                else f"label column {f.column!r} has {f.n} non-integer value(s){f.eg}"),
    "label.range": lambda f: (f"{f.n} label(s) outside [0, {f.extra['num_classes']}), "
                              f"e.g. {sorted(set(f.examples), key=float)}{f.eg}"),
    "label.classes": lambda f: (f"label column {f.column!r} is missing class(es) {f.res.get('partial_missing_list')} "
                                f"of [0, {f.extra['num_classes']}): every class must be present"),
    "timestamp.not_null": lambda f: f"timestamp column {f.column!r} has {f.n} null value(s){f.eg}",
    "timestamp.valid": lambda f: f"timestamp column {f.column!r} has {f.n} value(s) that are not timestamps{f.eg}",
    "model_version.not_null": lambda f: f"model version column {f.column!r} has {f.n} null value(s){f.eg}",
    "probabilities.kind": lambda f: (f"probabilities column {f.column!r} must hold float arrays, found {f.kinds} "
                                     f"in {f.n} row(s){f.eg}"),
    "probabilities.length": lambda f: (f"probabilities column {f.column!r}: expected {f.extra['num_classes']} per row, "
                                       f"found {sorted({int(e) for e in f.examples})} in {f.n} row(s){f.eg}"),
    "probabilities.finite": lambda f: (f"probabilities column {f.column!r}: {f.n} row(s) with NaN or infinite "
                                       f"values{f.eg}"),
    "probabilities.unit": lambda f: f"probabilities column {f.column!r}: {f.n} row(s) with values outside [0, 1]{f.eg}",
    "probabilities.sum": lambda f: (
        f"probabilities column {f.column!r}: {f.n} of {f.res.get('element_count')} row(s) do not sum to 1 within "
        f"{f.extra['tolerance']}, e.g. sums {[round(float(e), 6) for e in f.examples]}{f.eg}"),
}


def _example_ids(result: dict[str, Any], id_column: str | None, limit: int) -> list[Any]:
    """Example ids of offending rows (row numbers without an id column; ``id in file`` across files)."""
    out = []
    for entry in (result.get("partial_unexpected_index_list") or [])[:limit]:
        if isinstance(entry, dict):
            value = _jsonable(entry.get(id_column)) if id_column else None
            out.append(f"{value} in {entry['__file']}" if "__file" in entry else value)
        else:
            out.append(_jsonable(entry))
    return out


def _raised(info: dict[str, Any] | None) -> bool:
    """Whether GX caught an exception while evaluating an expectation (flat or per-metric info)."""
    if not info:
        return False
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _collect(name: str, uri: str, results: list, id_column: str | None, limit: int,
             extra: dict[str, Any]) -> list[CheckResult]:
    """Turn GX expectation results into :class:`CheckResult` (messages for failures), a gate failure
    superseding later failures on the same source column."""
    out, rank, gates = [], {}, set()
    for r in results:
        cfg, res = r.expectation_config, r.result or {}
        meta = cfg.meta or {}
        check, column = meta.get("kdflow_check", cfg.type), meta.get("kdflow_column")
        rank[check] = meta.get("kdflow_rank", 99)
        if meta.get("kdflow_gate"):
            gates.add(check)
        examples, ids, message = [], [], ""
        if not r.success:
            examples = _jsonable(list(res.get("partial_unexpected_list") or [])[:limit])
            ids = _example_ids(res, id_column, limit)
            required = meta.get("kdflow_roles") or {}
            if check == "schema.columns":  # the dataset's names of the missing columns (``x``, not ``x__kind``)
                examples = [required.get(c, [None, c])[1]
                            for c in ((res.get("details") or {}).get("mismatched") or {}).get("missing") or []]
            failure = _Failure(uri, column, res.get("unexpected_count"), res, examples, ids, extra,
                               {name: role for role, name in required.values()})
            if _raised(r.exception_info):
                message = f"{uri}: {check} could not be evaluated on column {column!r}"
            else:
                message = f"{uri}: {_MESSAGES[check](failure)}" if check in _MESSAGES else f"{uri}: {check} failed"
        out.append(CheckResult(dataset=name, check=check, expectation=cfg.type, column=column,
                               success=bool(r.success), message=message, gx_column=cfg.kwargs.get("column"),
                               unexpected_count=res.get("unexpected_count"), examples=examples, example_ids=ids,
                               sampled=check.endswith(".range")))
    missing = {m for c in out if c.check == "schema.columns" and not c.success for m in c.examples}
    empty = any(c.check == "rows.min" and not c.success and extra.get("rows") == 0 for c in out)
    for c in out:
        if c.success or c.check == "schema.columns":
            continue
        if c.column in missing:
            c.skipped = f"superseded by schema.columns: column {c.column!r} is missing"
        elif empty and c.check == "label.classes":
            c.skipped = "superseded by rows.min: the dataset has no rows"
    return _supersede(out, rank, gates)


def _supersede(checks: list[CheckResult], rank: dict[str, int], gates: set[str]) -> list[CheckResult]:
    """Per source column, the first failed gate check marks later failures there skipped, so a missing or
    mistyped column is one failure, not a pile of consequences. Sorted by column, then rank."""
    checks = sorted(checks, key=lambda c: (c.column is not None, c.column or "", rank.get(c.check, 99)))
    blocker: CheckResult | None = None
    for c in checks:
        if blocker is not None and c.column != blocker.column:
            blocker = None
        if c.success or c.column is None:
            continue
        if blocker is not None:
            c.skipped = f"superseded by {blocker.check} on {c.column!r}"
        elif c.check in gates:
            blocker = c
    return checks


def _plain(name: str, check: str, column: str | None, success: bool, message: str = "", count: int | None = None,
           ids: list | None = None) -> CheckResult:
    """A check kdflow runs itself (file readable, schema drift, logits), in the same report format."""
    return CheckResult(dataset=name, check=check, expectation=f"kdflow.{check}", column=column, success=success,
                       message=message, unexpected_count=count, example_ids=_jsonable(ids or []))


# -------------------------------------------------------------------------------- validating datasets


def dataset_uris(data: DataConfig, with_transfer: bool = True) -> dict[str, tuple[str, bool]]:
    """``name -> (uri, labeled)`` of the datasets a config names."""
    out = {name: (getattr(data, name), True) for name in LABELED_SPLITS}
    if with_transfer and data.transfer:
        out["transfer"] = (data.transfer, False)
    if with_transfer and data.recent:
        out["recent"] = (data.recent, False)
    if data.recent_labeled:
        out["recent_labeled"] = (data.recent_labeled, True)
    return out


def _gx_frame(df: pd.DataFrame, columns: list[str], derived: dict[str, Any],
              files: np.ndarray | None = None) -> pd.DataFrame:
    """The frame GX validates: the scalar ``columns`` the suite reads (those present) plus the derived ones
    (and ``__file`` per row when a dataset has several files). List columns stay out: GX cannot check them
    and fingerprints a batch by hashing it, which falls back to pickling (minutes at 1M rows) for arrays."""
    frame = df[[c for c in dict.fromkeys(columns) if c in df.columns]].copy()
    for name, values in derived.items():
        frame[name] = values
    if files is not None:
        frame["__file"] = pd.Categorical(files)
    return frame


def validate_splits(splits: dict[str, SplitFrames], data: DataConfig, config: ValidationConfig,
                    docs_dir: Path | None = None) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    """Validate datasets already read, train first (the reference for feature width, ranges and schema).

    Returns the report and each valid-schema dataset's frame (the transfer set's label column dropped)."""
    start = time.perf_counter()
    report = ValidationReport(docs_dir=docs_dir if config.data_docs else None)
    frames: dict[str, pd.DataFrame] = {}
    schemas: dict[str, dict[str, str]] = {}
    runner: _GXRunner | None = None
    spec = data.features
    width = int(np.prod(spec.shape)) if spec.shape else (len(spec.columns) if spec.columns else None)
    ranges: FeatureRanges | None = None
    train_moments: FeatureMoments | None = None
    for name in sorted(splits, key=lambda n: n != REFERENCE):
        split = splits[name]
        files = list(split.frames)
        ds = report.datasets[name] = DatasetReport(
            name=name, uri=split.uri, files=files, rows=None,
            suite=f"kdflow-{'labeled' if split.labeled else 'transfer'}-v{SUITE_VERSION}")
        if split.error:
            ds.checks.append(_plain(name, "file.readable", None, False, split.error))
            continue
        ignore = () if split.labeled else (data.label_column,)
        file_schemas = {f: frame_schema(df, ignore) for f, df in split.frames.items()}
        ds.schema = file_schemas[files[0]]
        mixed = [(f, d) for f in files[1:] for d in schema_drift(file_schemas[files[0]], file_schemas[f])]
        for f, (column, what) in mixed:
            ds.checks.append(_plain(name, "schema.drift", column, False,
                                    f"{f}: schema drift between the files of {name}: {what} (vs {files[0]})"))
        if mixed:
            ds.notes.append("suite not run: the files of this dataset do not share one schema")
            continue
        df = split.frame()
        ds.rows = len(df)
        if not split.labeled and data.label_column in df.columns:
            ds.notes.append(f"column {data.label_column!r} ignored: the transfer set is unlabeled")
            df = df.drop(columns=[data.label_column])
        frames[name], schemas[name] = df, ds.schema
        profile = profile_features(df, spec, width)
        if name == REFERENCE:
            width = width or profile.width
            sample = deterministic_sample(len(profile.matrix), config.sample_size, config.sample_seed)
            if config.feature_ranges:
                ranges = FeatureRanges.learn(profile.names, profile.matrix[sample], config.range_margin)
                ds.notes.append(f"feature ranges learned from {len(sample):,} sampled row(s) "
                                f"(seed {config.sample_seed})")
            if config.feature_scale:
                train_moments = FeatureMoments.of(profile.names, profile.matrix[sample])
        range_mostly = None
        if ranges is not None and name != REFERENCE:
            sampled = add_range_status(profile, ranges, len(df), config.sample_size, config.sample_seed)
            range_mostly = config.range_mostly
            ds.notes.append(f"feature ranges checked on {sampled:,} sampled row(s) (seed {config.sample_seed})")
        min_rows = max(data.min_rows, config.min_rows.get(name, 1))
        suite = (labeled_suite(data, profile.width, min_rows, name in config.require_all_classes, range_mostly)
                 if split.labeled else transfer_suite(data, profile.width, min_rows, range_mostly))
        id_col = data.id_column if data.id_column in df.columns else None
        index_cols = [c for c in (id_col, "__file" if len(files) > 1 else None) if c]
        file_of_row = np.repeat(files, [len(f) for f in split.frames.values()]) if len(files) > 1 else None
        runner = runner or _GXRunner(report.docs_dir)
        scalar = [data.id_column, *(spec.columns or []), *([data.label_column] if split.labeled else [])]
        results = runner.run(name, ds.suite, suite, _gx_frame(df, scalar, profile.derived, file_of_row), index_cols,
                             config.max_examples)
        extra = {"columns": list(df.columns), "rows": len(df), "min_rows": min_rows, "width": profile.width,
                 "num_classes": data.num_classes, "range_mostly": config.range_mostly}
        ds.checks += _collect(name, split.uri, results, id_col, config.max_examples, extra)
        if train_moments is not None and name != REFERENCE and name in config.scale_datasets:
            scale = _scale_check(ds, profile, train_moments, report.datasets[REFERENCE].uri, spec, config)
            if scale is not None:
                ds.checks.append(scale)
    _cross_split_drift(report, schemas, {n: s.labeled for n, s in splits.items()}, data.label_column)
    if config.disjoint_ids:
        _split_overlaps(report, frames, data.id_column, config)
    if runner is not None:
        runner.build_docs()
        report.gx_results = runner.results
    report.seconds = time.perf_counter() - start
    return report, frames


def _cross_split_drift(report: ValidationReport, schemas: dict[str, dict[str, str]], labeled: dict[str, bool],
                       label_column: str) -> None:
    """Report columns added, removed or re-typed relative to train, unless an expectation already failed on
    that column in train or in the dataset (then that failure is the message)."""
    if REFERENCE not in schemas:
        return
    failing = {(c.dataset, c.column) for c in report.failures}
    failing |= {(c.dataset, m) for c in report.failures if c.check == "schema.columns" for m in c.examples}
    ref = report.datasets[REFERENCE]
    for name, schema in schemas.items():
        if name == REFERENCE:
            continue
        reference = {c: k for c, k in schemas[REFERENCE].items() if labeled[name] or c != label_column}
        for column, what in schema_drift(reference, schema):
            if (REFERENCE, column) not in failing and (name, column) not in failing:
                report.datasets[name].checks.append(_plain(
                    name, "schema.drift", column, False,
                    f"{report.datasets[name].uri}: schema drift: {what} ({name} vs train {ref.uri})"))


def _scale_check(ds: DatasetReport, profile: FeatureProfile, train: FeatureMoments, train_uri: str,
                 spec: FeatureSpec, config: ValidationConfig) -> CheckResult | None:
    """``features.scale`` for one dataset against train's moments (on the deterministic sample), or None when
    its features cannot be compared (no well-formed rows, or another width: already reported). Superseded
    when an expectation on the feature column (e.g. the range check) already failed in this dataset."""
    source = "features" if spec.columns else spec.column
    sample = deterministic_sample(len(profile.matrix), config.sample_size, config.sample_seed)
    moments = FeatureMoments.of(profile.names, profile.matrix[sample])
    if moments is None or moments.names != train.names:
        ds.notes.append("feature scale not compared with train: too few well-formed rows or another feature width")
        return None
    found = scale_differences(train, moments, config)
    check = CheckResult(dataset=ds.name, check="features.scale", expectation="kdflow.features.scale", column=source,
                        success=not found, unexpected_count=len(found), sampled=True,
                        examples=[d.feature for d in found[:config.max_examples]])
    ds.notes.append(f"feature scale compared with train on {moments.n:,} vs {train.n:,} sampled row(s)")
    if found:
        shown = "; ".join(d.describe() for d in found[:config.max_examples])
        more = f"; and {len(found) - config.max_examples} more" if len(found) > config.max_examples else ""
        check.message = (f"{ds.uri}: feature scale differs from train's ({train_uri}) in {len(found)} of "
                         f"{len(train.names)} feature(s), compared on {moments.n:,} vs {train.n:,} sampled row(s): "
                         f"{shown}{more}")
        earlier = next((c for c in ds.failures if c.column == source), None)
        if earlier is not None:
            check.skipped = f"superseded by {earlier.check} on {source!r}"
    return check


def _split_overlaps(report: ValidationReport, frames: dict[str, pd.DataFrame], id_column: str,
                    config: ValidationConfig) -> None:
    """``ids.disjoint``: for each pair of train, val, test and transfer (those read with an id column), the
    ids they share. Reported on the later split of the pair, naming both, the count and a few ids; the
    transfer set may share ids with the splits in ``config.transfer_overlap_allowed``."""
    names = [n for n in DISJOINT_SPLITS if n in frames and id_column in frames[n].columns]
    ids = {n: pd.Index(pd.unique(frames[n][id_column].dropna().to_numpy())) for n in names}
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if second == "transfer" and first in config.transfer_overlap_allowed:
                continue
            try:
                shared = ids[first].intersection(ids[second])
                shown = list(shared.sort_values()[:config.max_examples])
            except TypeError:  # ids of different types: schema drift reports it; nothing is shared
                shared, shown = pd.Index([]), []
            ds, other = report.datasets[second], report.datasets[first]
            message = ""
            if len(shared):
                hint = (f" (validation.transfer_overlap_allowed lists the splits the transfer set may share ids "
                        f"with: now {config.transfer_overlap_allowed})" if second == "transfer" else "")
                message = (f"{ds.uri}: {len(shared):,} of {len(ids[second]):,} id(s) in {second} are also in {first} "
                           f"({other.uri}): splits must not share ids (a leak that inflates every figure measured "
                           f"on them){hint}; e.g. ids {_jsonable(shown)}")
            ds.checks.append(_plain(second, "ids.disjoint", id_column, not len(shared), message, len(shared), shown))


def validate_data(data: DataConfig, config: ValidationConfig, endpoint_url: str | None = None,
                  with_transfer: bool = True, only: str | None = None,
                  docs_dir: Path | None = None) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    """Read and validate the datasets of ``data`` (or just ``only``, with train read as its reference).

    Bad data never raises here: call ``report.raise_for_failures()``. Returns the report and the frames."""
    uris = dataset_uris(data, with_transfer)
    if only is not None and only not in uris:
        raise DataError(f"unknown dataset {only!r}: this config names {sorted(uris)}")
    names = list(uris) if only is None else [REFERENCE] + ([only] if only != REFERENCE else [])
    splits = {n: read_split(n, uris[n][0], uris[n][1], endpoint_url) for n in names}
    report, frames = validate_splits(splits, data, config, docs_dir)
    if only is not None and only != REFERENCE:
        report.datasets = {only: report.datasets[only]}
        frames = {only: frames[only]} if only in frames else {}
    return report, frames


# ------------------------------------------------------------------------- inference logs and logits


def validate_inference_logs(df: pd.DataFrame, num_classes: int, features: FeatureSpec | None = None,
                            config: ValidationConfig | None = None, *, name: str = "inference_logs",
                            uri: str = "<frame>", timestamp_column: str = "timestamp",
                            model_version_column: str = "model_version",
                            probabilities_column: str = "probabilities", label_column: str = "label",
                            id_column: str = "id", ranges: FeatureRanges | None = None,
                            docs_dir: Path | None = None) -> ValidationReport:
    """Validate production inference logs (one row per prediction) with the ``kdflow-inference-logs`` suite.

    The label is optional: the column may be absent, or null per row (labels arrive late); a present label
    must be integral and in [0, C). ``ranges`` (e.g. learned from the training set) adds the sampled
    feature-range check. Returns the report; ``report.raise_for_failures()`` stops on bad logs."""
    start = time.perf_counter()
    config = config or ValidationConfig()
    features = features or FeatureSpec()
    columns = {"timestamp": timestamp_column, "model_version": model_version_column,
               "probabilities": probabilities_column, "label": label_column}
    width = len(features.columns) if features.columns else (int(np.prod(features.shape)) if features.shape else None)
    profile = profile_features(df, features, width)
    if ranges is not None:
        add_range_status(profile, ranges, len(df), config.sample_size, config.sample_seed)
    derived = dict(profile.derived)
    if timestamp_column in df.columns:
        ts = df[timestamp_column]
        parsed = (ts if pd.api.types.is_datetime64_any_dtype(ts)
                  else pd.to_datetime(ts, errors="coerce", utc=True, format="mixed"))
        derived[f"{timestamp_column}__valid"] = np.where(ts.isna(), None, parsed.notna()).astype(object)
    if probabilities_column in df.columns:
        probs = profile_features(df, FeatureSpec(column=probabilities_column), num_classes)
        derived.update(probs.derived)
        sums, unit = np.full(len(df), np.nan), np.full(len(df), None, dtype=object)
        sums[probs.rows] = probs.matrix.sum(axis=1)
        unit[probs.rows] = ((probs.matrix >= 0) & (probs.matrix <= 1)).all(axis=1)
        derived[f"{probabilities_column}__sum"], derived[f"{probabilities_column}__unit"] = sums, unit
    has_label = label_column in df.columns
    if has_label:
        values = pd.to_numeric(df[label_column], errors="coerce").to_numpy(dtype=np.float64)
        integral = np.where(df[label_column].isna(), None, np.isfinite(values) & (values == np.round(values)))
        derived[f"{label_column}__integral"] = integral.astype(object)
    report = ValidationReport(docs_dir=docs_dir if config.data_docs else None)
    ds = report.datasets[name] = DatasetReport(name=name, uri=uri, files=[uri], rows=len(df),
                                               suite=f"kdflow-inference-logs-v{SUITE_VERSION}", schema=frame_schema(df))
    suite = inference_log_suite(num_classes, features, profile.width, columns, has_label, config, ranges is not None)
    id_col = id_column if id_column in df.columns else None
    runner = _GXRunner(report.docs_dir)
    scalar = [id_column, timestamp_column, model_version_column, label_column, *(features.columns or [])]
    results = runner.run(name, ds.suite, suite, _gx_frame(df, scalar, derived), [id_col] if id_col else [],
                         config.max_examples)
    extra = {"columns": list(df.columns), "min_rows": 1, "width": profile.width, "num_classes": num_classes,
             "range_mostly": config.range_mostly, "tolerance": config.probability_tolerance}
    ds.checks += _collect(name, uri, results, id_col, config.max_examples, extra)
    runner.build_docs()
    report.gx_results = runner.results
    report.seconds = time.perf_counter() - start
    return report


def validate_teacher_logits(logits: np.ndarray, rows: int, num_classes: int, *, name: str = "teacher_logits",
                            uri: str = "<array>", ids: np.ndarray | None = None,
                            max_examples: int = 5) -> ValidationReport:
    """Check teacher logits read back from the store: shape ``(rows, num_classes)``, numeric, all finite.

    Plain numpy checks (a GX context is not worth it for three checks on an array), same report format."""
    start = time.perf_counter()
    logits = np.asarray(logits)
    ds = DatasetReport(name=name, uri=uri, files=[uri], rows=int(logits.shape[0]) if logits.ndim else 0,
                       suite=f"kdflow-teacher-logits-v{SUITE_VERSION}")
    expected = (rows, num_classes)
    shape_ok = logits.ndim == 2 and tuple(logits.shape) == expected
    ds.checks.append(_plain(name, "logits.shape", None, shape_ok, "" if shape_ok else
                            f"{uri}: logits of shape {tuple(logits.shape)}, expected {expected} (rows x classes)"))
    numeric = np.issubdtype(logits.dtype, np.number)
    ds.checks.append(_plain(name, "logits.numeric", None, numeric, "" if numeric else
                            f"{uri}: logits must be numeric, found {logits.dtype}"))
    if numeric and logits.ndim == 2:
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        labels = ids if ids is not None and len(ids) == len(logits) else np.arange(len(logits))
        eg = labels[bad[:max_examples]].tolist()
        ds.checks.append(_plain(name, "logits.finite", None, not len(bad), "" if not len(bad) else
                                f"{uri}: {len(bad)} row(s) with NaN or infinite logits, e.g. ids {eg}",
                                count=int(len(bad)), ids=eg))
    return ValidationReport(datasets={name: ds}, seconds=time.perf_counter() - start)
