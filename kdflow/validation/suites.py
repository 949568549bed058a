"""The GX expectation suites, one per dataset role, each expectation tagged with kdflow's check id."""

from __future__ import annotations

from typing import Any

from kdflow.config import DataConfig, FeatureSpec, ValidationConfig

INTEGER_TYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
]
NUMERIC_TYPES = INTEGER_TYPES + ["float16", "float32", "float64", "Float32", "Float64"]


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
    required = {
        f"{c}__kind" if role in ("feature array", "probabilities") else c: [role, c] for c, role in roles.items()
    }
    expectation = _exp(
        "ExpectTableColumnsToMatchSet", "schema.columns", None, 0, column_set=list(required), exact_match=False
    )
    expectation.meta["kdflow_roles"] = required
    return expectation


def _feature_roles(spec: FeatureSpec) -> dict[str, str]:
    return {c: "feature" for c in spec.columns} if spec.columns else {spec.column: "feature array"}


def _id_expectations(id_column: str) -> list:
    return [
        _exp("ExpectColumnValuesToNotBeNull", "id.not_null", id_column, 1, column=id_column),
        _exp("ExpectColumnValuesToBeUnique", "id.unique", id_column, 2, column=id_column),
    ]


def _feature_expectations(spec: FeatureSpec, width: int | None, range_mostly: float | None) -> list:
    """Features present, numeric arrays of ``width`` (or numeric columns), finite; ranges when
    ``range_mostly`` is given (on the sampled ``*__range`` column)."""
    out = []
    if spec.columns:
        for c in spec.columns:
            out += [
                _exp(
                    "ExpectColumnValuesToBeInTypeList", "feature.numeric", c, 1, True, column=c, type_list=NUMERIC_TYPES
                ),
                _exp(
                    "ExpectColumnValuesToBeInSet", "features.finite", c, 2, column=f"{c}__finite", value_set=["finite"]
                ),
            ]
        source, range_column = "features", "features__range"
    else:
        c = source = spec.column
        range_column = f"{c}__range"
        out.append(_exp("ExpectColumnValuesToBeInSet", "features.kind", c, 1, column=f"{c}__kind", value_set=["array"]))
        if width is not None:
            out.append(
                _exp(
                    "ExpectColumnValuesToBeInSet",
                    "features.length",
                    c,
                    2,
                    column=f"{c}__length",
                    value_set=[float(width)],
                )
            )
        out.append(
            _exp("ExpectColumnValuesToBeInSet", "features.finite", c, 3, column=f"{c}__finite", value_set=["finite"])
        )
    if range_mostly is not None:
        out.append(
            _exp(
                "ExpectColumnValuesToBeInSet",
                "features.range",
                source,
                4,
                column=range_column,
                value_set=["in range"],
                mostly=range_mostly,
            )
        )
    return out


def _label_expectations(label: str, num_classes: int, all_classes: bool, optional_per_row: bool = False) -> list:
    out = []
    if optional_per_row:  # inference logs: labels arrive late, so nulls (hence a float column) are allowed
        out.append(
            _exp(
                "ExpectColumnValuesToBeInSet", "label.integer", label, 1, column=f"{label}__integral", value_set=[True]
            )
        )
    else:
        out += [
            _exp("ExpectColumnValuesToNotBeNull", "label.not_null", label, 1, True, column=label),
            _exp(
                "ExpectColumnValuesToBeInTypeList",
                "label.integer",
                label,
                2,
                True,
                column=label,
                type_list=INTEGER_TYPES,
            ),
        ]
    out.append(
        _exp(
            "ExpectColumnValuesToBeBetween",
            "label.range",
            label,
            3,
            column=label,
            min_value=0,
            max_value=num_classes - 1,
        )
    )
    if all_classes:
        out.append(
            _exp(
                "ExpectColumnDistinctValuesToContainSet",
                "label.classes",
                label,
                4,
                column=label,
                value_set=list(range(num_classes)),
            )
        )
    return out


def labeled_suite(
    data: DataConfig, width: int | None, min_rows: int, all_classes: bool, range_mostly: float | None = None
) -> list:
    """``kdflow-labeled``: rows >= min_rows; ids; features; integer labels in [0, C) (all classes present)."""
    roles = {data.id_column: "id", **_feature_roles(data.features), data.label_column: "label"}
    return (
        [_exp("ExpectTableRowCountToBeBetween", "rows.min", None, 0, min_value=min_rows), _columns_expectation(roles)]
        + _id_expectations(data.id_column)
        + _feature_expectations(data.features, width, range_mostly)
        + _label_expectations(data.label_column, data.num_classes, all_classes)
    )


def transfer_suite(data: DataConfig, width: int | None, min_rows: int, range_mostly: float | None = None) -> list:
    """``kdflow-transfer``: rows >= min_rows; ids; features (no label)."""
    roles = {data.id_column: "id", **_feature_roles(data.features)}
    return (
        [_exp("ExpectTableRowCountToBeBetween", "rows.min", None, 0, min_value=min_rows), _columns_expectation(roles)]
        + _id_expectations(data.id_column)
        + _feature_expectations(data.features, width, range_mostly)
    )


def inference_log_suite(
    num_classes: int,
    spec: FeatureSpec,
    width: int | None,
    columns: dict[str, str],
    has_label: bool,
    config: ValidationConfig,
    with_ranges: bool = False,
) -> list:
    """``kdflow-inference-logs``: timestamp, model version, features, predicted probabilities (length C,
    finite, in [0, 1], summing to 1 within ``probability_tolerance``), optional label."""
    ts, mv, p = columns["timestamp"], columns["model_version"], columns["probabilities"]
    tol = config.probability_tolerance
    roles = {ts: "timestamp", mv: "model version", p: "probabilities", **_feature_roles(spec)}
    return (
        [
            _exp("ExpectTableRowCountToBeBetween", "rows.min", None, 0, min_value=1),
            _columns_expectation(roles),
            _exp("ExpectColumnValuesToNotBeNull", "timestamp.not_null", ts, 1, True, column=ts),
            _exp("ExpectColumnValuesToBeInSet", "timestamp.valid", ts, 2, column=f"{ts}__valid", value_set=[True]),
            _exp("ExpectColumnValuesToNotBeNull", "model_version.not_null", mv, 1, column=mv),
            _exp("ExpectColumnValuesToBeInSet", "probabilities.kind", p, 1, column=f"{p}__kind", value_set=["array"]),
            _exp(
                "ExpectColumnValuesToBeInSet",
                "probabilities.length",
                p,
                2,
                column=f"{p}__length",
                value_set=[float(num_classes)],
            ),
            _exp(
                "ExpectColumnValuesToBeInSet", "probabilities.finite", p, 3, column=f"{p}__finite", value_set=["finite"]
            ),
            _exp("ExpectColumnValuesToBeInSet", "probabilities.unit", p, 4, column=f"{p}__unit", value_set=[True]),
            _exp(
                "ExpectColumnValuesToBeBetween",
                "probabilities.sum",
                p,
                5,
                column=f"{p}__sum",
                min_value=1.0 - tol,
                max_value=1.0 + tol,
                mostly=config.probability_mostly,
            ),
        ]
        + _feature_expectations(spec, width, config.range_mostly if with_ranges else None)
        + (_label_expectations(columns["label"], num_classes, False, optional_per_row=True) if has_label else [])
    )
