"""The distillation report: one JSON document and its Markdown rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kdflow.redact import redact


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, student, teacher) rows shown by the CLI and in Markdown."""
    ev = report["evaluation"]
    return [
        ("test accuracy", _fmt(ev["student_accuracy"]), _fmt(ev["teacher_accuracy"])),
        ("ECE (served T)", _fmt(ev["student_ece"]), _fmt(ev["teacher_ece"])),
        ("latency p50 ms (batch 1)", _fmt(ev["student_latency_p50_ms"]), _fmt(ev["teacher_latency_p50_ms"])),
        ("latency p95 ms (batch 1)", _fmt(ev["student_latency_p95_ms"]), _fmt(ev["teacher_latency_p95_ms"])),
        ("throughput /s (batch 256)", _fmt(ev["student_throughput"]), _fmt(ev["teacher_throughput"])),
        ("parameters", f"{ev['student_params']:,}", f"{ev['teacher_params']:,}"),
    ]


def _teachers_line(report: dict[str, Any]) -> str:
    teachers = report.get("teachers") or []
    if len(teachers) < 2:
        return f"Teacher `{report['teacher']['uri']}` (version {report['teacher']['version']})"
    return "Teachers " + ", ".join("`{uri}` (v{version}, weight {weight:.3f})".format(**t) for t in teachers)


def to_markdown(report: dict[str, Any]) -> str:
    """Render the report as Markdown: summary table, calibration, SLA checks, decision."""
    ev, cal = report["evaluation"], report["calibration"]
    lines = [
        f"# kdflow distillation report: {report['student_name']}",
        "",
        f"{_teachers_line(report)}; "
        f"flip rate {ev['flip_rate']:.4f}, accuracy gap {ev['teacher_gap']:.4f}, size ratio {ev['size_ratio']:.4f}.",
        "",
        "| metric | student | teacher |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in summary_rows(report)],
        "",
        f"## Calibration (validation set, served temperature {cal['temperature']:.4f})",
        "",
        "| | ECE | MCE | NLL | Brier |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("before (T=1)", "before"), ("after", "after")):
        m = cal[key]
        lines.append(f"| {label} | {m['ece']:.4f} | {m['mce']:.4f} | {m['nll']:.4f} | {m['brier']:.4f} |")
    lines += ["", "## SLA gate", "", "| check | value | threshold | result |", "|---|---|---|---|"]
    for c in report["sla_checks"]:
        lines.append(f"| {c['name']} | {c['value']:.4f} | {c['op']} {c['threshold']} | {'PASS' if c['passed'] else 'FAIL'} |")
    reg = report["registration"]
    lines += [
        "",
        f"**Gate: {'PASSED' if report['gate_passed'] else 'FAILED'}.** {report['decision']['reason']}.",
        "",
        f"Registered version: {reg.get('version') or 'none'}; aliases: {', '.join(reg.get('aliases', [])) or 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``directory``; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "report.json"
    md_path = directory / "report.md"
    report = redact(report)  # a URI with a password (a PostgreSQL tracking URI, say) never reaches a reader
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    md_path.write_text(to_markdown(report))
    return json_path, md_path
