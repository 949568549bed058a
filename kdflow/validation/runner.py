"""Running a suite through an ephemeral GX context, and turning GX's results into :class:`CheckResult`
with one message per failed check (a gate failure superseding later failures on its column)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from kdflow.validation.describe import describe
from kdflow.validation.results import SUITE_VERSION, CheckResult, _jsonable

_DOCS_SITE = "local_site"


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

    def run(
        self,
        name: str,
        suite_name: str,
        expectations: list,
        frame: pd.DataFrame,
        index_columns: list[str],
        max_examples: int,
    ) -> list:
        """Validate ``frame`` with a suite of ``expectations`` through a checkpoint; the expectation results."""
        return self.checkpoint(name, suite_name, expectations, index_columns, max_examples)(frame)

    def checkpoint(
        self, name: str, suite_name: str, expectations: list, index_columns: list[str], max_examples: int
    ) -> Callable[[pd.DataFrame], list]:
        """A suite of ``expectations`` behind one checkpoint, as a function that validates a frame and returns the
        expectation results: called once per frame (a dataset validated chunk by chunk reuses it)."""
        gx = self.gx
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        # Expectations passed to the constructor: adding them one by one to a stored suite re-saves it each time.
        suite = self.context.suites.add(
            gx.ExpectationSuite(
                name=f"{suite_name}.{name}",
                expectations=expectations,
                meta={"kdflow_suite": suite_name, "kdflow_suite_version": SUITE_VERSION},
            )
        )
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=name)
        )
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": max_examples}
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(name=f"{name}-checkpoint", validation_definitions=[definition], result_format=result_format)
        )

        def validate(frame: pd.DataFrame) -> list:
            outcome = checkpoint.run(batch_parameters={"dataframe": frame})
            results = []
            for run_result in outcome.run_results.values():
                self.results.append({"dataset": name, "suite": suite.name, **run_result.to_json_dict()})
                results += run_result.results
            return results

        return validate

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


# One template per check: the only wording of these rules (kdflow.data reads and converts, it checks nothing).
_MESSAGES: dict[str, Callable[[_Failure], str]] = {
    "rows.min": lambda f: f"{f.res.get('observed_value')} row(s), expected at least {f.extra['min_rows']}",
    "schema.columns": lambda f: (
        ", ".join(f"missing {f.roles.get(c, 'required').replace(' array', '')} column {c!r}" for c in f.examples)
        + f"; found columns {f.extra['columns']}"
    ),
    "id.not_null": lambda f: f"id column {f.column!r} has {f.n} null value(s)",
    "id.unique": lambda f: (
        f"id column {f.column!r} has {f.n} row(s) with duplicated id(s), e.g. {sorted(set(f.examples), key=str)}"
    ),
    "features.kind": lambda f: (
        f"feature column {f.column!r} must hold float arrays, found {f.kinds} in {f.n} row(s){f.eg}"
    ),
    "features.length": lambda f: (
        f"feature column {f.column!r} has arrays of different lengths: expected "
        f"{f.extra['width']}, found {sorted({int(e) for e in f.examples})} "
        f"in {f.n} row(s){f.eg}"
    ),
    "feature.numeric": lambda f: (
        f"feature column(s) must be numeric, found {{{f.column!r}: '{f.res.get('observed_value')}'}}"
    ),
    "features.finite": lambda f: f"{f.n} row(s) with NaN or infinite features in {f.column!r} (e.g. {f.kinds}){f.eg}",
    "features.range": lambda f: (
        f"{f.n} of {f.res.get('element_count', 0) - f.res.get('missing_count', 0)} sampled row(s) "
        f"({f.res.get('unexpected_percent_nonmissing') or 0:.2f}%) have a feature outside the range learned from "
        f"train, more than the {100 * (1 - f.extra['range_mostly']):.2f}% allowed, e.g. {f.examples}{f.eg}"
    ),
    "label.not_null": lambda f: f"label column {f.column!r} has {f.n} null value(s){f.eg}",
    "label.integer": lambda f: (
        f"label column {f.column!r} must be integer, found {f.res['observed_value']}"
        if f.res.get("observed_value")
        else f"label column {f.column!r} has {f.n} non-integer value(s){f.eg}"
    ),
    "label.range": lambda f: (
        f"{f.n} label(s) outside [0, {f.extra['num_classes']}), e.g. {sorted(set(f.examples), key=float)}{f.eg}"
    ),
    "label.classes": lambda f: (
        f"label column {f.column!r} is missing class(es) {f.res.get('partial_missing_list')} "
        f"of [0, {f.extra['num_classes']}): every class must be present"
    ),
    "timestamp.not_null": lambda f: f"timestamp column {f.column!r} has {f.n} null value(s){f.eg}",
    "timestamp.valid": lambda f: f"timestamp column {f.column!r} has {f.n} value(s) that are not timestamps{f.eg}",
    "model_version.not_null": lambda f: f"model version column {f.column!r} has {f.n} null value(s){f.eg}",
    "probabilities.kind": lambda f: (
        f"probabilities column {f.column!r} must hold float arrays, found {f.kinds} in {f.n} row(s){f.eg}"
    ),
    "probabilities.length": lambda f: (
        f"probabilities column {f.column!r}: expected {f.extra['num_classes']} per row, "
        f"found {sorted({int(e) for e in f.examples})} in {f.n} row(s){f.eg}"
    ),
    "probabilities.finite": lambda f: (
        f"probabilities column {f.column!r}: {f.n} row(s) with NaN or infinite values{f.eg}"
    ),
    "probabilities.unit": lambda f: f"probabilities column {f.column!r}: {f.n} row(s) with values outside [0, 1]{f.eg}",
    "probabilities.sum": lambda f: (
        f"probabilities column {f.column!r}: {f.n} of {f.res.get('element_count')} row(s) do not sum to 1 within "
        f"{f.extra['tolerance']}, e.g. sums {[round(float(e), 6) for e in f.examples]}{f.eg}"
    ),
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


def _collect(
    name: str, uri: str, results: list, id_column: str | None, limit: int, extra: dict[str, Any]
) -> list[CheckResult]:
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
        required = meta.get("kdflow_roles") or {}
        if not r.success:
            examples = _jsonable(list(res.get("partial_unexpected_list") or [])[:limit])
            ids = _example_ids(res, id_column, limit)
            if check == "schema.columns":  # the dataset's names of the missing columns (``x``, not ``x__kind``)
                examples = [
                    required.get(c, [None, c])[1]
                    for c in ((res.get("details") or {}).get("mismatched") or {}).get("missing") or []
                ]
            failure = _Failure(
                uri,
                column,
                res.get("unexpected_count"),
                res,
                examples,
                ids,
                extra,
                {name: role for role, name in required.values()},
            )
            if _raised(r.exception_info):
                message = f"{uri}: {check} could not be evaluated on column {column!r}"
            else:
                message = f"{uri}: {_MESSAGES[check](failure)}" if check in _MESSAGES else f"{uri}: {check} failed"
        out.append(
            CheckResult(
                dataset=name,
                check=check,
                expectation=cfg.type,
                column=column,
                success=bool(r.success),
                message=message,
                description=describe(check, column, {**cfg.kwargs, "required": [c for _, c in required.values()]}),
                gx_column=cfg.kwargs.get("column"),
                unexpected_count=res.get("unexpected_count"),
                examples=examples,
                example_ids=ids,
                sampled=check.endswith(".range"),
            )
        )
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


def _gx_frame(
    df: pd.DataFrame, columns: list[str], derived: dict[str, Any], files: np.ndarray | None = None
) -> pd.DataFrame:
    """The frame GX validates: the scalar ``columns`` the suite reads (those present) plus the derived ones
    (and ``__file`` per row when a dataset has several files). List columns stay out: GX cannot check them
    and fingerprints a batch by hashing it, which falls back to pickling (minutes at 1M rows) for arrays."""
    frame = df[[c for c in dict.fromkeys(columns) if c in df.columns]].copy()
    for name, values in derived.items():
        frame[name] = values
    if files is not None:
        frame["__file"] = pd.Categorical(files)
    return frame
