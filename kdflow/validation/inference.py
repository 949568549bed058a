"""Validating production inference logs (GX suite) and teacher logits read back from the store (plain checks)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from kdflow.config import FeatureSpec, ValidationConfig
from kdflow.validation.features import FeatureRanges, add_range_status, profile_features
from kdflow.validation.reading import frame_schema
from kdflow.validation.results import SUITE_VERSION, DatasetReport, ValidationReport, _plain
from kdflow.validation.runner import _collect, _gx_frame, _GXRunner
from kdflow.validation.suites import inference_log_suite


def validate_inference_logs(
    df: pd.DataFrame,
    num_classes: int,
    features: FeatureSpec | None = None,
    config: ValidationConfig | None = None,
    *,
    name: str = "inference_logs",
    uri: str = "<frame>",
    timestamp_column: str = "timestamp",
    model_version_column: str = "model_version",
    probabilities_column: str = "probabilities",
    label_column: str = "label",
    id_column: str = "id",
    ranges: FeatureRanges | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate production inference logs (one row per prediction) with the ``kdflow-inference-logs`` suite.

    The label is optional: the column may be absent, or null per row (labels arrive late); a present label
    must be integral and in [0, C). ``ranges`` (e.g. learned from the training set) adds the sampled
    feature-range check. Returns the report; ``report.raise_for_failures()`` stops on bad logs."""
    start = time.perf_counter()
    config = config or ValidationConfig()
    features = features or FeatureSpec()
    columns = {
        "timestamp": timestamp_column,
        "model_version": model_version_column,
        "probabilities": probabilities_column,
        "label": label_column,
    }
    width = len(features.columns) if features.columns else (int(np.prod(features.shape)) if features.shape else None)
    profile = profile_features(df, features, width)
    if ranges is not None:
        add_range_status(profile, ranges, len(df), config.sample_size, config.sample_seed)
    derived = dict(profile.derived)
    if timestamp_column in df.columns:
        ts = df[timestamp_column]
        parsed = (
            ts
            if pd.api.types.is_datetime64_any_dtype(ts)
            else pd.to_datetime(ts, errors="coerce", utc=True, format="mixed")
        )
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
    ds = report.datasets[name] = DatasetReport(
        name=name,
        uri=uri,
        files=[uri],
        rows=len(df),
        suite=f"kdflow-inference-logs-v{SUITE_VERSION}",
        schema=frame_schema(df),
    )
    suite = inference_log_suite(num_classes, features, profile.width, columns, has_label, config, ranges is not None)
    id_col = id_column if id_column in df.columns else None
    runner = _GXRunner(report.docs_dir)
    scalar = [id_column, timestamp_column, model_version_column, label_column, *(features.columns or [])]
    results = runner.run(
        name, ds.suite, suite, _gx_frame(df, scalar, derived), [id_col] if id_col else [], config.max_examples
    )
    extra = {
        "columns": list(df.columns),
        "min_rows": 1,
        "width": profile.width,
        "num_classes": num_classes,
        "range_mostly": config.range_mostly,
        "tolerance": config.probability_tolerance,
    }
    ds.checks += _collect(name, uri, results, id_col, config.max_examples, extra)
    runner.build_docs()
    report.gx_results = runner.results
    report.seconds = time.perf_counter() - start
    return report


def validate_teacher_logits(
    logits: np.ndarray,
    rows: int,
    num_classes: int,
    *,
    name: str = "teacher_logits",
    uri: str = "<array>",
    ids: np.ndarray | None = None,
    max_examples: int = 5,
) -> ValidationReport:
    """Check teacher logits read back from the store: shape ``(rows, num_classes)``, numeric, all finite.

    Plain numpy checks (a GX context is not worth it for three checks on an array), same report format."""
    start = time.perf_counter()
    logits = np.asarray(logits)
    ds = DatasetReport(
        name=name,
        uri=uri,
        files=[uri],
        rows=int(logits.shape[0]) if logits.ndim else 0,
        suite=f"kdflow-teacher-logits-v{SUITE_VERSION}",
    )
    expected = (rows, num_classes)
    shape_ok = logits.ndim == 2 and tuple(logits.shape) == expected
    ds.checks.append(
        _plain(
            name,
            "logits.shape",
            None,
            shape_ok,
            "" if shape_ok else f"{uri}: logits of shape {tuple(logits.shape)}, expected {expected} (rows x classes)",
        )
    )
    numeric = np.issubdtype(logits.dtype, np.number)
    ds.checks.append(
        _plain(
            name,
            "logits.numeric",
            None,
            numeric,
            "" if numeric else f"{uri}: logits must be numeric, found {logits.dtype}",
        )
    )
    if numeric and logits.ndim == 2:
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        labels = ids if ids is not None and len(ids) == len(logits) else np.arange(len(logits))
        eg = labels[bad[:max_examples]].tolist()
        ds.checks.append(
            _plain(
                name,
                "logits.finite",
                None,
                not len(bad),
                "" if not len(bad) else f"{uri}: {len(bad)} row(s) with NaN or infinite logits, e.g. ids {eg}",
                count=int(len(bad)),
                ids=eg,
            )
        )
    return ValidationReport(datasets={name: ds}, seconds=time.perf_counter() - start)
