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

Modules, in the order a validation runs: :mod:`~kdflow.validation.reading` (files and schemas),
:mod:`~kdflow.validation.features` (derived columns, ranges, scale), :mod:`~kdflow.validation.suites` (the GX
suites), :mod:`~kdflow.validation.runner` (GX context, results to messages), :mod:`~kdflow.validation.datasets`
(the datasets of a config, cross-split checks), :mod:`~kdflow.validation.inference` (inference logs, teacher
logits) and :mod:`~kdflow.validation.results` (the report). Import public names from this package.

Split of duties with :mod:`kdflow.data`: every rule on what a dataset holds is an expectation here, written once;
``kdflow.data`` only reads a file (failing on one it cannot read at all: missing, empty, not Parquet, recorded
here as ``file.readable``) and converts a frame that passed (:func:`kdflow.data.dataset_from_frame`).
"""

from __future__ import annotations

import os

from kdflow.validation.datasets import (
    DISJOINT_SPLITS,
    LABELED_SPLITS,
    REFERENCE,
    dataset_uris,
    validate_data,
    validate_splits,
)
from kdflow.validation.features import (
    FINITE,
    FeatureMoments,
    FeatureProfile,
    FeatureRanges,
    ScaleDifference,
    add_range_status,
    array_kinds,
    deterministic_sample,
    profile_features,
    scale_differences,
)
from kdflow.validation.inference import validate_inference_logs, validate_teacher_logits
from kdflow.validation.reading import SplitFrames, column_kind, expand_uri, frame_schema, read_split, schema_drift
from kdflow.validation.results import SUITE_VERSION, CheckResult, DatasetReport, DataValidationError, ValidationReport
from kdflow.validation.suites import INTEGER_TYPES, NUMERIC_TYPES, inference_log_suite, labeled_suite, transfer_suite

# GX is imported lazily (in suites and runner), so this still comes first.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

__all__ = [
    "DISJOINT_SPLITS",
    "FINITE",
    "INTEGER_TYPES",
    "LABELED_SPLITS",
    "NUMERIC_TYPES",
    "REFERENCE",
    "SUITE_VERSION",
    "CheckResult",
    "DataValidationError",
    "DatasetReport",
    "FeatureMoments",
    "FeatureProfile",
    "FeatureRanges",
    "ScaleDifference",
    "SplitFrames",
    "ValidationReport",
    "add_range_status",
    "array_kinds",
    "column_kind",
    "dataset_uris",
    "deterministic_sample",
    "expand_uri",
    "frame_schema",
    "inference_log_suite",
    "labeled_suite",
    "profile_features",
    "read_split",
    "scale_differences",
    "schema_drift",
    "transfer_suite",
    "validate_data",
    "validate_inference_logs",
    "validate_splits",
    "validate_teacher_logits",
]
