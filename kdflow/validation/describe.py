"""What each check verifies, in words a reader of the report understands without knowing GX or the derived per-row
columns (``x__length``, ``x__finite``) the expectations run on: the one wording of every rule, beside
:data:`kdflow.validation.runner._MESSAGES` (which words the failures)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def _width(p: Mapping[str, Any]) -> str:
    return ", ".join(str(int(v)) for v in p.get("value_set") or [])


def _mostly(p: Mapping[str, Any]) -> str:
    mostly = p.get("mostly")
    return "" if mostly is None or mostly >= 1 else f" (at least {100 * mostly:g}% of rows)"


def _classes(p: Mapping[str, Any]) -> str:
    return f"0 to {int(p['max_value'])}" if p.get("max_value") is not None else "[0, C)"


_DESCRIPTIONS: dict[str, Callable[[str, Mapping[str, Any]], str]] = {
    "rows.min": lambda c, p: f"the dataset has at least {p.get('min_value', 1):,} row(s)",
    "schema.columns": lambda c, p: "every required column is present: " + ", ".join(p.get("required") or []),
    "schema.drift": lambda c, p: f"{c}: the same column type in every file and as in train",
    "file.readable": lambda c, p: "every file can be read as a table",
    "id.not_null": lambda c, p: f"{c}: every row has an id",
    "id.unique": lambda c, p: f"{c}: no id appears twice",
    "ids.disjoint": lambda c, p: f"{c}: no id is shared with {p.get('other', 'another split')}",
    "features.kind": lambda c, p: f"{c}: every row is an array of numbers",
    "features.length": lambda c, p: f"{c}: every row's array has length {_width(p)}",
    "feature.numeric": lambda c, p: f"{c}: the column is numeric",
    "features.finite": lambda c, p: f"{c}: no NaN or infinite value in any row",
    "features.range": lambda c, p: f"{c}: sampled rows' features lie within the range seen in train{_mostly(p)}",
    "features.scale": lambda c, p: f"{c}: each feature's mean and spread match train's (on a sample)",
    "label.not_null": lambda c, p: f"{c}: every row has a label",
    "label.integer": lambda c, p: f"{c}: labels are whole numbers",
    "label.range": lambda c, p: f"{c}: every label is a class index from {_classes(p)}",
    "label.classes": lambda c, p: f"{c}: each of the {len(p.get('value_set') or [])} classes appears at least once",
    "timestamp.not_null": lambda c, p: f"{c}: every row has a timestamp",
    "timestamp.valid": lambda c, p: f"{c}: every value is a timestamp",
    "model_version.not_null": lambda c, p: f"{c}: every row names the model version",
    "probabilities.kind": lambda c, p: f"{c}: every row is an array of numbers",
    "probabilities.length": lambda c, p: f"{c}: every row holds {_width(p)} probabilities (one per class)",
    "probabilities.finite": lambda c, p: f"{c}: no NaN or infinite probability",
    "probabilities.unit": lambda c, p: f"{c}: every probability lies in [0, 1]",
    "probabilities.sum": lambda c, p: (
        f"{c}: each row's probabilities sum to 1 within {p.get('max_value', 1) - 1:g}{_mostly(p)}"
    ),
    "logits.shape": lambda c, p: "one row of logits per example, one column per class",
    "logits.numeric": lambda c, p: "the logits are numbers",
    "logits.finite": lambda c, p: "no NaN or infinite logit",
}


def describe(check: str, column: str | None, params: Mapping[str, Any] | None = None) -> str:
    """What ``check`` verifies on ``column``, in words (``params``: the expectation's arguments, such as
    ``value_set`` or ``min_value``, and ``required`` for the schema check); the check id for an unknown check."""
    if check not in _DESCRIPTIONS:
        return f"{column}: {check}" if column else check
    return _DESCRIPTIONS[check](column or "", params or {})
