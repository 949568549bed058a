"""Validating datasets that are never held whole: chunk by chunk, straight from their Parquet files.

For a precomputation over more rows than one process should hold (``data.out_of_core``), each dataset is read
as chunks of whole row groups (at most ``validation.chunk_rows`` rows each, local files or S3 ranged reads). GX
runs the dataset's suite (the same suites, checkpoint and messages as
:func:`kdflow.validation.datasets.validate_splits`) on every chunk, and the chunks' results are merged into one
result per expectation: counts summed, examples kept up to ``max_examples``, ``mostly`` judged on the totals.
What no single chunk can see is computed across chunks:

- ``rows.min`` on the rows of every chunk;
- ``id.unique`` and ``ids.disjoint``: the ids are spilled to local temporary disk in hash buckets
  (:class:`IdSpill`, 8 bytes per integer id) and compared one bucket at a time: memory holds one bucket;
- ``label.classes`` from the distinct labels of every chunk;
- feature ranges (learned from train) and the scale check, on the same deterministic sample of row numbers as
  in memory: identical results when every row is well formed (rows that are not fail validation anyway);
- the content fingerprint, the very digest of :attr:`kdflow.data.Dataset.fingerprint` (so a logit store computed
  out of core is the store an in-memory run reuses): the ids first (a first pass reads the id and label columns
  only), then the shape and the features chunk by chunk, then the labels (kept on disk by the first pass).

Schema drift between the files of a dataset is found from each file's first chunk (the suite is then not run,
as in memory). Each dataset that validates becomes a :class:`kdflow.rowgroups.ParquetSplit`.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from kdflow.config import DataConfig, ValidationConfig
from kdflow.data import DataError
from kdflow.rowgroups import ParquetSplit, file_chunks, split_layout, table_arrays
from kdflow.validation.datasets import (
    REFERENCE,
    _cross_split_drift,
    _scale_check,
    dataset_uris,
    disjoint_pairs,
    report_overlap,
    suite_name,
)
from kdflow.validation.features import (
    FeatureMoments,
    FeatureRanges,
    add_range_status,
    deterministic_sample,
    profile_features,
)
from kdflow.validation.reading import frame_schema, schema_drift
from kdflow.validation.results import DatasetReport, ValidationReport, _plain
from kdflow.validation.runner import _collect, _gx_frame, _GXRunner, _raised
from kdflow.validation.suites import labeled_suite, transfer_suite

IDS_PER_BUCKET = 1_000_000  # ids per spill bucket of the largest dataset: what one comparison holds in memory


@dataclass(frozen=True)
class IdTally:
    """What :meth:`IdSpill.tally` found: rows with a duplicated id, a few of those ids, distinct ids."""

    duplicated_rows: int
    examples: list[Any]
    unique: int


class IdSpill:
    """One dataset's ids on local disk in ``buckets`` hash buckets (``pd.util.hash_array``, the same bucket for the
    same id in every spill), integer ids as 8 bytes each, others as text: duplicates within a dataset and ids
    shared by two datasets are found one bucket at a time."""

    def __init__(self, directory: Path, buckets: int):
        self.dir, self.buckets = directory, buckets
        directory.mkdir(parents=True)

    def add(self, values: np.ndarray) -> None:
        """Spill ids (nulls already dropped; integral floats, as a null turns an integer column, count as integers)."""
        if not len(values):
            return
        if values.dtype.kind == "f" and np.all(values == np.round(values)):
            values = values.astype(np.int64)
        kind = "int" if values.dtype.kind in "iu" else "str"
        values = values.astype(np.int64) if kind == "int" else values.astype(str)
        bucket = pd.util.hash_array(values.astype(object) if kind == "str" else values) % np.uint64(self.buckets)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1, dtype=np.uint64))
        for b in range(self.buckets):
            part = values[order[bounds[b] : bounds[b + 1]]]
            if len(part):
                with open(self.dir / f"{kind}-{b}", "ab") as f:
                    f.write(part.astype("<i8").tobytes() if kind == "int" else ("\n".join(part) + "\n").encode())

    def bucket(self, name: str) -> np.ndarray:
        """The ids of one bucket file (``int-3``, ``str-0``, ...), empty when it does not exist."""
        path = self.dir / name
        if not path.exists():
            return np.zeros(0, dtype=np.int64)
        if name.startswith("int-"):
            return np.fromfile(path, dtype="<i8")
        return np.array(path.read_text().split("\n")[:-1])

    def names(self) -> list[str]:
        """The bucket files written."""
        return sorted(p.name for p in self.dir.iterdir())

    def tally(self, limit: int) -> IdTally:
        """One pass over the buckets: the rows whose id occurs more than once, the ids of up to ``limit`` of those
        rows (smallest first) and the distinct ids."""
        rows, examples, unique = 0, [], 0
        for name in self.names():
            values, counts = np.unique(self.bucket(name), return_counts=True)
            rows += int(counts[counts > 1].sum())
            examples += np.repeat(values[counts > 1], counts[counts > 1])[:limit].tolist()  # a value per row, as GX
            unique += len(values)
        return IdTally(rows, sorted(examples, key=lambda v: (isinstance(v, str), v))[:limit], unique)

    def shared(self, other: IdSpill, limit: int) -> tuple[int, list[Any]]:
        """(ids in both spills, up to ``limit`` of them, smallest first)."""
        count, examples = 0, []
        for name in set(self.names()) & set(other.names()):
            both = np.intersect1d(self.bucket(name), other.bucket(name))
            count += len(both)
            examples += both[:limit].tolist()
        return count, sorted(examples, key=lambda v: (isinstance(v, str), v))[:limit]


class _Fingerprint:
    """:attr:`kdflow.data.Dataset.fingerprint` fed in pieces, in its order: ids, shape, features, labels. Any piece
    that :func:`kdflow.data.dataset_from_frame` could not convert (a null id or label, mixed id kinds, a bad
    feature row) leaves no fingerprint: such a dataset fails validation anyway."""

    def __init__(self, labels_path: Path):
        self.h = hashlib.sha256()
        self.kind: str | None = None
        self.valid = True
        self.shape: tuple[int, ...] | None = None  # per-row feature shape, from the first chunk
        self.labels_path = labels_path

    def ids(self, ids: pd.Series) -> None:
        if ids.isna().any():
            self.valid = False
        if not self.valid or not len(ids):
            return
        values = ids.to_numpy()
        kind = "int" if values.dtype.kind in "iu" else "str"
        if self.kind is None:
            self.h.update(b"int-ids" if kind == "int" else b"str-ids")
        elif kind != self.kind:
            self.valid = False
        elif kind == "str":
            self.h.update(b"\n")
        if kind == "int":
            self.h.update(np.ascontiguousarray(values, dtype="<i8").tobytes())
        else:
            self.h.update("\n".join(map(str, values.astype(str))).encode())
        self.kind = self.kind or kind

    def labels(self, labels: pd.Series) -> None:
        if labels.isna().any() or not pd.api.types.is_integer_dtype(labels):
            self.valid = False
            return
        with open(self.labels_path, "ab") as f:
            f.write(np.ascontiguousarray(labels.to_numpy(), dtype="<i8").tobytes())

    def features(self, x: np.ndarray, rows: int) -> None:
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
            self.h.update(repr((rows, *self.shape)).encode())
        self.h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())

    def digest(self, labeled: bool) -> str | None:
        if not self.valid or self.shape is None:
            return None
        if labeled:
            self.h.update(b"labels")
            if self.labels_path.exists():
                with open(self.labels_path, "rb") as f:
                    while block := f.read(1 << 24):
                        self.h.update(block)
        return self.h.hexdigest()


@dataclass
class _Merged:
    """One expectation's results over every chunk, shaped as :func:`kdflow.validation.runner._collect` reads them."""

    expectation_config: Any
    success: bool
    result: dict[str, Any]
    exception_info: dict[str, Any] | None


def merge_results(chunks: list[list], limit: int, rows: int, classes: set | None) -> list[_Merged]:
    """Merge each expectation's per-chunk GX results: counts summed, example values and ids concatenated up to
    ``limit``, ``mostly`` judged on the totals; the row count is ``rows`` and the classes seen are ``classes``."""
    out = []
    for per in zip(*chunks):
        cfg, results = per[0].expectation_config, [r.result or {} for r in per]
        failed = [r for r in per if not r.success]
        res = dict((failed[0].result if failed else per[0].result) or {})
        for key in ("element_count", "missing_count", "unexpected_count"):
            if any(key in r for r in results):
                res[key] = sum(r.get(key) or 0 for r in results)
        for key in ("partial_unexpected_list", "partial_unexpected_index_list"):
            if any(key in r for r in results):
                res[key] = [v for r in results for v in (r.get(key) or [])][:limit]
        success = not failed
        mostly = cfg.kwargs.get("mostly")
        if mostly is not None and "unexpected_count" in res:
            judged = res.get("element_count", 0) - res.get("missing_count", 0)
            res["unexpected_percent_nonmissing"] = 100 * res["unexpected_count"] / judged if judged else None
            success = not judged or (judged - res["unexpected_count"]) / judged >= mostly
        if cfg.type == "expect_table_row_count_to_be_between":
            res, success = {"observed_value": rows}, rows >= (cfg.kwargs.get("min_value") or 0)
        if cfg.type == "expect_column_distinct_values_to_contain_set" and classes is not None:
            missing = sorted(set(cfg.kwargs["value_set"]) - classes)
            res, success = (
                {"observed_value": None, "missing_count": len(missing), "partial_missing_list": missing},
                not missing,
            )
        raised = next((r.exception_info for r in per if _raised(r.exception_info)), None)
        out.append(_Merged(cfg, success and raised is None, res, raised or per[0].exception_info))
    return out


def _unique_result(merged: list[_Merged], tally: IdTally, id_column: str) -> None:
    """``id.unique`` across chunks: the rows whose id occurs twice anywhere in the dataset (the spill's tally)."""
    for m in merged:
        if m.expectation_config.type == "expect_column_values_to_be_unique" and not _raised(m.exception_info):
            m.success = tally.duplicated_rows == 0
            m.result = {
                **m.result,
                "unexpected_count": tally.duplicated_rows,
                "partial_unexpected_list": tally.examples,
                "partial_unexpected_index_list": [{id_column: v} for v in tally.examples],
            }


def _first_pass(
    name: str,
    layout: list[tuple[str, int]],
    data: DataConfig,
    labeled: bool,
    endpoint_url: str | None,
    work: Path,
    chunk_rows: int,
    buckets: int,
) -> tuple[IdSpill, _Fingerprint, set | None]:
    """Read the id (and label) column of every chunk: spill the ids, hash them, keep the labels, collect classes."""
    spill = IdSpill(work / f"{name}-ids", buckets)
    fp = _Fingerprint(work / f"{name}-labels")
    classes: set | None = set() if labeled else None
    for uri, _ in layout:
        for table in file_chunks(uri, endpoint_url, chunk_rows, [data.id_column, data.label_column]):
            frame = table.to_pandas()
            if data.id_column in frame.columns:
                fp.ids(frame[data.id_column])
                spill.add(frame[data.id_column].dropna().to_numpy())
            else:
                fp.valid = False
            if labeled and data.label_column in frame.columns:
                fp.labels(frame[data.label_column])
                classes |= set(pd.unique(frame[data.label_column].dropna()).tolist())
            elif labeled:
                fp.valid = False
    return spill, fp, classes


def validate_out_of_core(
    data: DataConfig,
    config: ValidationConfig,
    endpoint_url: str | None = None,
    with_transfer: bool = True,
    docs_dir: Path | None = None,
) -> tuple[ValidationReport, dict[str, ParquetSplit]]:
    """Validate the datasets of ``data`` chunk by chunk (module docstring), train first as the reference: the
    report (as :func:`kdflow.validation.validate_data` makes it) and a :class:`ParquetSplit` per dataset that
    validated. Bad data never raises here: call ``report.raise_for_failures()``."""
    start = time.perf_counter()
    report = ValidationReport(docs_dir=docs_dir if config.data_docs else None)
    uris = dataset_uris(data, with_transfer)
    layouts: dict[str, list[tuple[str, int]]] = {}
    for name, (uri, labeled) in uris.items():
        report.datasets[name] = DatasetReport(
            name=name,
            uri=uri,
            files=[],
            rows=None,
            suite=suite_name(labeled),
        )
        try:
            layouts[name] = split_layout(uri, endpoint_url)
            if not layouts[name]:
                raise DataError(f"dataset file not found or unreadable: {uri} (no file matches)")
            report.datasets[name].files = [f for f, _ in layouts[name]]
        except DataError as exc:
            report.datasets[name].checks.append(_plain(name, "file.readable", None, False, str(exc)))
            layouts.pop(name, None)
    most = max((sum(r for _, r in layout) for layout in layouts.values()), default=0)
    buckets = int(np.clip(-(-most // IDS_PER_BUCKET), 1, 1024))
    state = _State(data, config, endpoint_url, report)
    with tempfile.TemporaryDirectory(prefix="kdflow-validation-ids-") as work:
        for name in sorted(layouts, key=lambda n: n != REFERENCE):
            state.dataset(name, uris[name][0], uris[name][1], layouts[name], Path(work), buckets)
        _cross_split_drift(report, state.schemas, {n: flag for n, (_, flag) in uris.items()}, data.label_column)
        if config.disjoint_ids:
            for first, second in disjoint_pairs(list(state.spills), config):
                shared, shown = state.spills[first].shared(state.spills[second], config.max_examples)
                report_overlap(report, first, second, shared, state.unique[second], shown, data.id_column, config)
    if state.runner is not None:
        state.runner.build_docs()
        report.gx_results = state.runner.results
    report.seconds = time.perf_counter() - start
    return report, state.splits


class _State:
    """What validating one dataset after another carries: train's width, ranges and moments, each dataset's
    schema, id spill and (when valid) :class:`ParquetSplit`, and the GX runner."""

    def __init__(self, data: DataConfig, config: ValidationConfig, endpoint_url: str | None, report: ValidationReport):
        self.data, self.config, self.endpoint_url, self.report = data, config, endpoint_url, report
        spec = data.features
        self.width = int(np.prod(spec.shape)) if spec.shape else (len(spec.columns) if spec.columns else None)
        self.ranges: FeatureRanges | None = None
        self.train_moments: FeatureMoments | None = None
        self.schemas: dict[str, dict[str, str]] = {}
        self.spills: dict[str, IdSpill] = {}
        self.unique: dict[str, int] = {}  # distinct ids per dataset, from its spill's tally
        self.splits: dict[str, ParquetSplit] = {}
        self.runner: _GXRunner | None = None

    def dataset(
        self, name: str, uri: str, labeled: bool, layout: list[tuple[str, int]], work: Path, buckets: int
    ) -> None:
        """Validate one dataset: the first pass (ids, labels), then the suite on every chunk, then the merge."""
        data, config, spec = self.data, self.config, self.data.features
        ds, n = self.report.datasets[name], sum(r for _, r in layout)
        ds.rows = n
        spill, fp, classes = _first_pass(
            name, layout, data, labeled, self.endpoint_url, work, config.chunk_rows, buckets
        )
        sample = deterministic_sample(n, config.sample_size, config.sample_seed)
        ignore = () if labeled else (data.label_column,)
        chunk_results: list[list] = []
        sampled: list[np.ndarray] = []
        validate, names, columns, offset, mixed = None, None, None, 0, False
        multi = len(layout) > 1
        for uri_f, _ in layout:
            for i, table in enumerate(file_chunks(uri_f, self.endpoint_url, config.chunk_rows)):
                df = table.to_pandas()
                df.index = pd.RangeIndex(offset, offset + len(df))
                if i == 0:
                    schema = frame_schema(df, ignore)
                    if columns is None:
                        ds.schema, columns = schema, list(df.columns)
                    for column, what in schema_drift(ds.schema, schema):
                        mixed = True
                        ds.checks.append(
                            _plain(
                                name,
                                "schema.drift",
                                column,
                                False,
                                f"{uri_f}: schema drift between the files of {name}: {what} (vs {ds.files[0]})",
                            )
                        )
                if mixed:
                    break  # the other files' first chunks are still read: every drift is named
                if not labeled and data.label_column in df.columns:
                    note = f"column {data.label_column!r} ignored: the transfer set is unlabeled"
                    ds.notes += [note] if note not in ds.notes else []
                    df = df.drop(columns=[data.label_column])
                profile = profile_features(df, spec, self.width)
                if name == REFERENCE and self.width is None:
                    self.width = profile.width
                names = names or profile.names
                here = sample[(sample >= offset) & (sample < offset + len(df))] - offset
                picks = np.flatnonzero(np.isin(profile.rows, here))
                sampled.append(profile.matrix[picks])
                range_mostly = None
                if self.ranges is not None and name != REFERENCE:
                    add_range_status(profile, self.ranges, len(df), config.sample_size, config.sample_seed, picks)
                    range_mostly = config.range_mostly
                if validate is None:
                    index_cols = [data.id_column] if data.id_column in df.columns else []  # example ids, as in memory
                    index_cols += ["__file"] if multi else []
                    validate = self._checkpoint(name, ds, labeled, profile.width, range_mostly, index_cols)
                scalar = [data.id_column, *(spec.columns or []), *([data.label_column] if labeled else [])]
                files = np.repeat(np.array([uri_f], dtype=object), len(df)) if multi else None
                chunk_results.append(validate(_gx_frame(df, scalar, profile.derived, files)))
                if fp.valid:
                    try:
                        fp.features(table_arrays(table, data, uri_f)[1], n)
                    except (DataError, ValueError, TypeError, KeyError, pa.ArrowException):
                        fp.valid = False
                offset += len(df)
        if mixed:
            ds.rows = None
            ds.notes.append("suite not run: the files of this dataset do not share one schema")
            return
        self.schemas[name] = ds.schema
        if data.id_column in columns:  # as in memory: only datasets read with an id column are compared
            self.spills[name] = spill
        self._finish(name, ds, labeled, layout, chunk_results, spill, classes, sampled, names, columns, fp)

    def _checkpoint(
        self,
        name: str,
        ds: DatasetReport,
        labeled: bool,
        width: int | None,
        range_mostly: float | None,
        index_cols: list[str],
    ) -> Callable[[pd.DataFrame], list]:
        """The dataset's suite behind one GX checkpoint, run on each chunk (:meth:`_GXRunner.checkpoint`)."""
        data, config = self.data, self.config
        min_rows = max(data.min_rows, config.min_rows.get(name, 1))
        suite = (
            labeled_suite(data, width, min_rows, name in config.require_all_classes, range_mostly)
            if labeled
            else transfer_suite(data, width, min_rows, range_mostly)
        )
        self.runner = self.runner or _GXRunner(self.report.docs_dir)
        return self.runner.checkpoint(name, ds.suite, suite, index_cols, config.max_examples)

    def _finish(
        self,
        name: str,
        ds: DatasetReport,
        labeled: bool,
        layout: list[tuple[str, int]],
        chunk_results: list[list],
        spill: IdSpill,
        classes: set | None,
        sampled: list[np.ndarray],
        names: list[str] | None,
        columns: list[str],
        fp: _Fingerprint,
    ) -> None:
        """Merge the chunks' results into the dataset's checks, learn or apply train's ranges and moments on the
        sample, and hand on a :class:`ParquetSplit` when the dataset validated."""
        data, config = self.data, self.config
        merged = merge_results(chunk_results, config.max_examples, ds.rows, classes)
        tally = spill.tally(config.max_examples)  # the spill read once: id.unique here, ids.disjoint later
        self.unique[name] = tally.unique
        _unique_result(merged, tally, data.id_column)
        extra = {
            "columns": columns,
            "rows": ds.rows,
            "min_rows": max(data.min_rows, config.min_rows.get(name, 1)),
            "width": self.width,
            "num_classes": data.num_classes,
            "range_mostly": config.range_mostly,
        }
        ds.checks += _collect(name, ds.uri, merged, data.id_column, config.max_examples, extra)
        matrix = np.concatenate(sampled) if sampled else np.zeros((0, 0))
        if name == REFERENCE:
            if config.feature_ranges:
                self.ranges = FeatureRanges.learn(names or [], matrix, config.range_margin)
                ds.notes.append(
                    f"feature ranges learned from {len(matrix):,} sampled row(s) (seed {config.sample_seed})"
                )
            if config.feature_scale:
                self.train_moments = FeatureMoments.of(names or [], matrix)
        elif self.ranges is not None:
            ds.notes.append(f"feature ranges checked on {len(matrix):,} sampled row(s) (seed {config.sample_seed})")
        if self.train_moments is not None and name != REFERENCE and name in config.scale_datasets:
            train_uri = self.report.datasets[REFERENCE].uri
            scale = _scale_check(
                ds, FeatureMoments.of(names or [], matrix), self.train_moments, train_uri, data.features, config
            )
            if scale is not None:
                ds.checks.append(scale)
        fingerprint = fp.digest(labeled)
        if fingerprint is not None and ds.success:  # only a dataset that validated is handed on
            split = ParquetSplit(name, ds.uri, labeled, tuple(layout), self.endpoint_url, data, fp.shape, fingerprint)
            self.splits[name] = split
