"""Validation results: one :class:`CheckResult` per check, grouped per dataset, and the report written
as JSON, Markdown, HTML and Data Docs (see :mod:`kdflow.validation`)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdflow import html
from kdflow.data import DataError
from kdflow.validation.describe import describe

SUITE_VERSION = 1


class DataValidationError(DataError):
    """One or more datasets failed validation; ``report`` holds every check, the message lists the failures.

    (Constructed as ``DataValidationError(message, report)`` so it pickles: the message survives, the report
    does not cross a process boundary.)"""

    def __init__(self, message: str, report: "ValidationReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class CheckResult:
    """One expectation (or plain check) on one dataset, as a person reads it."""

    dataset: str
    check: str  # kdflow check id, e.g. "label.range", "schema.drift"
    expectation: str  # GX expectation type, or "kdflow.<check>" for plain checks
    column: str | None  # the dataset column concerned
    success: bool
    message: str = ""
    description: str = ""  # what the check verifies, in words (:func:`kdflow.validation.describe.describe`)
    gx_column: str | None = None  # the column GX checked (a derived one such as ``x__finite``)
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    example_ids: list[Any] = field(default_factory=list)
    sampled: bool = False  # ran on the deterministic sample, not every row
    skipped: str | None = None  # why a failure is not reported (an earlier check on the column failed)

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
        lines = [
            f"data validation failed: {len(self.failures)} failed check(s) in "
            + ", ".join(f"{d.name} ({d.uri})" for d in failed)
        ]
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
        return _jsonable(
            {
                "success": self.success,
                "suite_version": SUITE_VERSION,
                "gx_version": _gx_version(),
                "seconds": round(self.seconds, 3),
                "datasets": {
                    n: {
                        **{k: v for k, v in asdict(d).items() if k != "checks"},
                        "success": d.success,
                        "checks": [asdict(c) for c in d.checks],
                    }
                    for n, d in self.datasets.items()
                },
            }
        )

    def to_markdown(self) -> str:
        """A short Markdown summary: one row per dataset, then each failure."""
        lines = [
            f"# Data validation: {'PASSED' if self.success else 'FAILED'}",
            "",
            "| dataset | file(s) | rows | checks | failed | status |",
            "|---|---|---:|---:|---:|---|",
        ]
        for d in self.datasets.values():
            counted = [c for c in d.checks if c.skipped is None]
            lines.append(
                f"| {d.name} | {', '.join(f'`{f}`' for f in d.files) or f'`{d.uri}`'} | "
                f"{'' if d.rows is None else f'{d.rows:,}'} | {len(counted)} | {len(d.failures)} | "
                f"{'pass' if d.success else '**FAIL**'} |"
            )
        if not self.success:
            lines += ["", "## Failures", ""]
            lines += [
                f"- **{c.dataset}**, {c.description or c.check}: {c.message} (`{c.expectation}`"
                f"{' on `' + (c.gx_column or c.column) + '`' if c.gx_column or c.column else ''})"
                for c in self.failures
            ]
        notes = [f"- {d.name}: {n}" for d in self.datasets.values() for n in d.notes]
        if notes:
            lines += ["", "## Notes", "", *notes]
        lines += [
            "",
            f"Suites `kdflow-*-v{SUITE_VERSION}`, Great Expectations {_gx_version()}, "
            f"{self.seconds:.2f} s. Full results: `validation/` artifacts of the MLflow run "
            "(summary.json, gx_results.json, report.html, data_docs/).",
        ]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML page (no external CSS/JS): the summary, then every check of every dataset in
        words, with its outcome and the GX expectation (and the derived column it ran on) beside it."""
        verdict = "PASSED" if self.success else "FAILED"
        parts = [html.render(self.to_markdown())]
        for d in self.datasets.values():
            rows, kinds = [], []
            for c in d.checks:
                state = "pass" if c.success else ("skipped" if c.skipped else "FAIL")
                gx = html.Raw(
                    f"<code>{html.escape(c.expectation)}</code>"
                    + (f" on <code>{html.escape(c.gx_column)}</code>" if c.gx_column else "")
                )
                found = "" if c.unexpected_count is None else f"{c.unexpected_count:,}"
                rows.append([c.description or c.check, state, found, c.message or c.skipped or "", gx])
                kinds.append(state.lower())
            files = ", ".join(d.files) or d.uri
            parts += [
                html.Raw(f"<h2>{html.escape(d.name)}: {'pass' if d.success else 'FAIL'}</h2>"),
                html.Raw(
                    f"<p class='muted'>{html.escape(files)}; "
                    f"{'rows unknown' if d.rows is None else f'{d.rows:,} rows'}; suite {html.escape(d.suite or '-')}"
                    + "".join(f"<br>{html.escape(n)}" for n in d.notes)
                    + "</p>"
                ),
                html.table(
                    ["what is checked", "result", "offending rows", "details", "GX expectation"],
                    rows,
                    kinds,
                    ["", "result", "num", "", ""],
                ),
            ]
        return html.page(f"kdflow data validation: {verdict}", *parts)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write summary.json, gx_results.json, report.md, report.html and data_docs/ under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "summary": out / "summary.json",
            "gx_results": out / "gx_results.json",
            "markdown": out / "report.md",
            "html": out / "report.html",
        }
        paths["summary"].write_text(json.dumps(self.to_dict(), indent=2))
        paths["gx_results"].write_text(json.dumps(_jsonable(self.gx_results), indent=2))
        paths["markdown"].write_text(self.to_markdown())
        paths["html"].write_text(self.to_html())
        if self.docs_dir and Path(self.docs_dir).is_dir():
            if Path(self.docs_dir).resolve() != (out / "data_docs").resolve():
                # The site's static/ folder holds ~4 MB of GIFs and fonts the pages do not need to be read.
                shutil.copytree(
                    self.docs_dir,
                    out / "data_docs",
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.gif", "fonts", "*.otf", "*.png"),
                )
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


def _plain(
    name: str,
    check: str,
    column: str | None,
    success: bool,
    message: str = "",
    count: int | None = None,
    ids: list | None = None,
    params: dict[str, Any] | None = None,
) -> CheckResult:
    """A check kdflow runs itself (file readable, schema drift, logits), in the same report format (``params``
    for its description, :func:`kdflow.validation.describe.describe`)."""
    return CheckResult(
        dataset=name,
        check=check,
        expectation=f"kdflow.{check}",
        column=column,
        success=success,
        message=message,
        description=describe(check, column, params),
        unexpected_count=count,
        example_ids=_jsonable(ids or []),
    )
