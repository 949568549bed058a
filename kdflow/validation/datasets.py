"""Validating the datasets a config names (train, val, test, transfer, recent): one suite per dataset,
train first as the reference, plus the cross-split checks (schema drift, shared ids, feature scale)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.config import DataConfig, FeatureSpec, ValidationConfig
from kdflow.data import DataError
from kdflow.validation.describe import describe
from kdflow.validation.features import (
    FeatureMoments,
    FeatureRanges,
    add_range_status,
    deterministic_sample,
    profile_features,
    scale_differences,
)
from kdflow.validation.reading import SplitFrames, frame_schema, read_split, schema_drift
from kdflow.validation.results import SUITE_VERSION, CheckResult, DatasetReport, ValidationReport, _jsonable, _plain
from kdflow.validation.runner import _collect, _gx_frame, _GXRunner
from kdflow.validation.suites import labeled_suite, transfer_suite

LABELED_SPLITS = ("train", "val", "test")
DISJOINT_SPLITS = ("train", "val", "test", "transfer")  # checked pairwise for shared ids
REFERENCE = "train"


def dataset_uris(data: DataConfig, with_transfer: bool = True) -> dict[str, tuple[str, bool]]:
    """``name -> (uri, labeled)`` of the datasets a config names."""
    out = {name: (getattr(data, name), True) for name in LABELED_SPLITS}
    if with_transfer and data.transfer:
        out["transfer"] = (data.transfer, False)
    if with_transfer and data.recent:
        out["recent"] = (data.recent, False)
    if data.recent_labeled:
        out["recent_labeled"] = (data.recent_labeled, True)
    if data.recent_val:
        out["recent_val"] = (data.recent_val, True)
    return out


def suite_name(labeled: bool) -> str:
    """The versioned name of a dataset's suite: ``kdflow-labeled-v1`` or ``kdflow-transfer-v1``."""
    return f"kdflow-{'labeled' if labeled else 'transfer'}-v{SUITE_VERSION}"


def validate_splits(
    splits: dict[str, SplitFrames], data: DataConfig, config: ValidationConfig, docs_dir: Path | None = None
) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
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
            name=name,
            uri=split.uri,
            files=files,
            rows=None,
            suite=suite_name(split.labeled),
        )
        if split.error:
            ds.checks.append(_plain(name, "file.readable", None, False, split.error))
            continue
        ignore = () if split.labeled else (data.label_column,)
        file_schemas = {f: frame_schema(df, ignore) for f, df in split.frames.items()}
        ds.schema = file_schemas[files[0]]
        mixed = [(f, d) for f in files[1:] for d in schema_drift(file_schemas[files[0]], file_schemas[f])]
        for f, (column, what) in mixed:
            ds.checks.append(
                _plain(
                    name,
                    "schema.drift",
                    column,
                    False,
                    f"{f}: schema drift between the files of {name}: {what} (vs {files[0]})",
                )
            )
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
                ds.notes.append(
                    f"feature ranges learned from {len(sample):,} sampled row(s) (seed {config.sample_seed})"
                )
            if config.feature_scale:
                train_moments = FeatureMoments.of(profile.names, profile.matrix[sample])
        range_mostly = None
        if ranges is not None and name != REFERENCE:
            sampled = add_range_status(profile, ranges, len(df), config.sample_size, config.sample_seed)
            range_mostly = config.range_mostly
            ds.notes.append(f"feature ranges checked on {sampled:,} sampled row(s) (seed {config.sample_seed})")
        min_rows = max(data.min_rows, config.min_rows.get(name, 1))
        suite = (
            labeled_suite(data, profile.width, min_rows, name in config.require_all_classes, range_mostly)
            if split.labeled
            else transfer_suite(data, profile.width, min_rows, range_mostly)
        )
        id_col = data.id_column if data.id_column in df.columns else None
        index_cols = [c for c in (id_col, "__file" if len(files) > 1 else None) if c]
        file_of_row = np.repeat(files, [len(f) for f in split.frames.values()]) if len(files) > 1 else None
        runner = runner or _GXRunner(report.docs_dir)
        scalar = [data.id_column, *(spec.columns or []), *([data.label_column] if split.labeled else [])]
        results = runner.run(
            name, ds.suite, suite, _gx_frame(df, scalar, profile.derived, file_of_row), index_cols, config.max_examples
        )
        extra = {
            "columns": list(df.columns),
            "rows": len(df),
            "min_rows": min_rows,
            "width": profile.width,
            "num_classes": data.num_classes,
            "range_mostly": config.range_mostly,
        }
        ds.checks += _collect(name, split.uri, results, id_col, config.max_examples, extra)
        if train_moments is not None and name != REFERENCE and name in config.scale_datasets:
            sample = deterministic_sample(len(profile.matrix), config.sample_size, config.sample_seed)
            moments = FeatureMoments.of(profile.names, profile.matrix[sample])
            scale = _scale_check(ds, moments, train_moments, report.datasets[REFERENCE].uri, spec, config)
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


def _cross_split_drift(
    report: ValidationReport, schemas: dict[str, dict[str, str]], labeled: dict[str, bool], label_column: str
) -> None:
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
                report.datasets[name].checks.append(
                    _plain(
                        name,
                        "schema.drift",
                        column,
                        False,
                        f"{report.datasets[name].uri}: schema drift: {what} ({name} vs train {ref.uri})",
                    )
                )


def _scale_check(
    ds: DatasetReport,
    moments: FeatureMoments | None,
    train: FeatureMoments,
    train_uri: str,
    spec: FeatureSpec,
    config: ValidationConfig,
) -> CheckResult | None:
    """``features.scale`` for one dataset (``moments`` of its deterministic sample) against train's, or None when
    its features cannot be compared (no well-formed rows, or another width: already reported). Superseded
    when an expectation on the feature column (e.g. the range check) already failed in this dataset."""
    source = "features" if spec.columns else spec.column
    if moments is None or moments.names != train.names:
        ds.notes.append("feature scale not compared with train: too few well-formed rows or another feature width")
        return None
    found = scale_differences(train, moments, config)
    check = CheckResult(
        dataset=ds.name,
        check="features.scale",
        expectation="kdflow.features.scale",
        column=source,
        success=not found,
        description=describe("features.scale", source),
        unexpected_count=len(found),
        sampled=True,
        examples=[d.feature for d in found[: config.max_examples]],
    )
    ds.notes.append(f"feature scale compared with train on {moments.n:,} vs {train.n:,} sampled row(s)")
    if found:
        shown = "; ".join(d.describe() for d in found[: config.max_examples])
        more = f"; and {len(found) - config.max_examples} more" if len(found) > config.max_examples else ""
        check.message = (
            f"{ds.uri}: feature scale differs from train's ({train_uri}) in {len(found)} of "
            f"{len(train.names)} feature(s), compared on {moments.n:,} vs {train.n:,} sampled row(s): "
            f"{shown}{more}"
        )
        earlier = next((c for c in ds.failures if c.column == source), None)
        if earlier is not None:
            check.skipped = f"superseded by {earlier.check} on {source!r}"
    return check


def _split_overlaps(
    report: ValidationReport, frames: dict[str, pd.DataFrame], id_column: str, config: ValidationConfig
) -> None:
    """``ids.disjoint``: for each pair of train, val, test and transfer (those read with an id column), the
    ids they share (:func:`report_overlap`)."""
    names = [n for n in DISJOINT_SPLITS if n in frames and id_column in frames[n].columns]
    ids = {n: pd.Index(pd.unique(frames[n][id_column].dropna().to_numpy())) for n in names}
    for first, second in disjoint_pairs(names, config):
        try:
            shared = ids[first].intersection(ids[second])
            shown = list(shared.sort_values()[: config.max_examples])
        except TypeError:  # ids of different types: schema drift reports it; nothing is shared
            shared, shown = pd.Index([]), []
        report_overlap(report, first, second, len(shared), len(ids[second]), shown, id_column, config)


def disjoint_pairs(names: list[str], config: ValidationConfig) -> list[tuple[str, str]]:
    """The pairs of ``names`` (in :data:`DISJOINT_SPLITS` order) that must not share ids: every pair but the
    transfer set with the splits in ``config.transfer_overlap_allowed``."""
    names = [n for n in DISJOINT_SPLITS if n in names]
    return [
        (first, second)
        for i, first in enumerate(names)
        for second in names[i + 1 :]
        if not (second == "transfer" and first in config.transfer_overlap_allowed)
    ]


def report_overlap(
    report: ValidationReport,
    first: str,
    second: str,
    shared: int,
    unique: int,
    shown: list,
    id_column: str,
    config: ValidationConfig,
) -> None:
    """One ``ids.disjoint`` check: ``shared`` of the ``unique`` ids of ``second`` are also in ``first``
    (``shown``: a few of them). Reported on the later split of the pair, naming both, the count and the ids."""
    ds, other = report.datasets[second], report.datasets[first]
    message = ""
    if shared:
        hint = (
            f" (validation.transfer_overlap_allowed lists the splits the transfer set may share ids "
            f"with: now {config.transfer_overlap_allowed})"
            if second == "transfer"
            else ""
        )
        message = (
            f"{ds.uri}: {shared:,} of {unique:,} id(s) in {second} are also in {first} "
            f"({other.uri}): splits must not share ids (a leak that inflates every figure measured "
            f"on them){hint}; e.g. ids {_jsonable(shown)}"
        )
    ds.checks.append(_plain(second, "ids.disjoint", id_column, not shared, message, shared, shown, {"other": first}))


def validate_data(
    data: DataConfig,
    config: ValidationConfig,
    endpoint_url: str | None = None,
    with_transfer: bool = True,
    only: str | None = None,
    docs_dir: Path | None = None,
) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
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
