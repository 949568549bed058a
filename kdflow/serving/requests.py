"""Request bodies of the scoring server, parsed and validated: one :class:`RequestError` naming the problem.

Scoring follows MLflow's protocol (``POST /invocations``, ``Content-Type: application/json``), rows of ``d``
numbers (``d`` = the product of the served model's input shape) in one of

- ``{"inputs": [[x_0, ..., x_{d-1}], ...]}`` (also ``{"instances": [...]}``);
- ``{"dataframe_split": {"columns": [c_0, ..., c_{d-1}], "data": [[...], ...]}}`` (``columns`` optional).

Rows are numbered from 0 in messages, as in the JSON array. Late labels (``POST /labels``) are
``{"labels": [{"request_id": "...", "label": k}, ...]}`` with ``0 <= k < C``.

The common case is checked in bulk (one ``numpy.array`` call on the parsed rows); only a body that fails it is
walked row by row to say exactly what is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

ROW_FIELDS = ("inputs", "instances", "dataframe_split")
JSON_TYPES = {"application/json"}
FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(ValueError):
    """A request the server refuses: ``status`` (4xx) and a one-line message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_content_type(content_type: str | None) -> None:
    """Refuse a body that is not declared JSON (415); a request without ``Content-Type`` is read as JSON."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media not in JSON_TYPES:
        raise RequestError(415, f"Content-Type {media!r} is not supported; send application/json")


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; 400 if it is empty or not JSON (``NaN``/``Infinity`` are not JSON)."""
    if not body.strip():
        raise RequestError(400, "empty body: expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"invalid JSON: {exc}") from None


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number"


def _rows(payload: Any, width: int) -> tuple[Any, str]:
    """The row list of a scoring payload and the field it came from."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"expected a JSON object with one of {list(ROW_FIELDS)}, found {_json_type(payload)}")
    present = [f for f in ROW_FIELDS if f in payload]
    if not present:
        raise RequestError(400, f"missing field: expected one of {list(ROW_FIELDS)}, found keys {sorted(payload)[:10]}")
    if len(present) > 1:
        raise RequestError(400, f"give only one of {list(ROW_FIELDS)}, found {present}")
    field = present[0]
    if field != "dataframe_split":
        return payload[field], field
    split = payload[field]
    if not isinstance(split, dict) or "data" not in split:
        raise RequestError(400, "dataframe_split must be an object with 'data' (and optionally 'columns')")
    columns = split.get("columns")
    if columns is not None and (not isinstance(columns, list) or len(columns) != width):
        found = f"{len(columns)} columns" if isinstance(columns, list) else _json_type(columns)
        raise RequestError(400, f"dataframe_split.columns has {found}, expected {width}")
    return split["data"], "dataframe_split.data"


def _diagnose(rows: list, width: int, field: str) -> None:
    """Raise the :class:`RequestError` for the first bad row or value (a slow walk, for failed bodies only)."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise RequestError(400, f"{field} row {i} is {_json_type(row)}, expected a list of {width} numbers")
        if len(row) != width:
            raise RequestError(400, f"row {i} has {len(row)} values, expected {width}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RequestError(400, f"row {i} value {j} is {_json_type(v)}, expected a number")
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                raise RequestError(400, f"row {i} value {j} ({v}) is not a finite float32")


def parse_inputs(body: bytes, width: int, max_rows: int) -> np.ndarray:
    """The ``(n, width)`` float32 rows of a scoring body; :class:`RequestError` (400, or 413 for more than
    ``max_rows`` rows) naming the first problem: field, row, value, expected vs found."""
    rows, field = _rows(parse_json(body), width)
    if not isinstance(rows, list):
        raise RequestError(400, f"{field} must be a list of rows, found {_json_type(rows)}")
    if not rows:
        raise RequestError(400, f"{field} is empty: expected at least one row of {width} numbers")
    if len(rows) > max_rows:
        raise RequestError(413, f"{len(rows)} rows in one request, at most serving.max_rows_per_request={max_rows}")
    # Booleans would pass numpy's conversion as 0/1: a body that may hold one is walked value by value.
    if b"true" not in body and b"false" not in body:
        try:
            arr = np.array(rows)
        except (ValueError, TypeError):  # ragged rows
            arr = None
        if arr is not None and arr.ndim == 2 and arr.dtype.kind in "fi" and arr.shape[1] == width:
            with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: refused below, by name
                out = arr.astype(np.float32)
            if np.isfinite(out).all():
                return out
    _diagnose(rows, width, field)
    return np.array(rows, dtype=np.float64).astype(np.float32)  # every value checked: numbers within float32


def parse_labels(body: bytes, num_classes: int) -> tuple[list[str], list[int]]:
    """``(request_ids, labels)`` of a ``/labels`` body; :class:`RequestError` naming the first bad item."""
    payload = parse_json(body)
    if not isinstance(payload, dict) or "labels" not in payload:
        raise RequestError(400, 'missing field: expected {"labels": [{"request_id": ..., "label": k}, ...]}')
    items = payload["labels"]
    if not isinstance(items, list) or not items:
        raise RequestError(400, f"labels must be a non-empty list, found {_json_type(items)}")
    ids: list[str] = []
    labels: list[int] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(400, f"labels[{i}] is {_json_type(item)}, expected an object")
        rid, label = item.get("request_id"), item.get("label")
        if not isinstance(rid, str) or not rid.strip():
            raise RequestError(400, f"labels[{i}].request_id must be a non-empty string, found {_json_type(rid)}")
        if isinstance(label, bool) or not isinstance(label, int):
            raise RequestError(400, f"labels[{i}].label must be an integer class, found {_json_type(label)}")
        if not 0 <= label < num_classes:
            raise RequestError(400, f"labels[{i}].label {label} is not a known class (0..{num_classes - 1})")
        ids.append(rid)
        labels.append(label)
    return ids, labels
