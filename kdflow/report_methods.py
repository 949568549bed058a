"""The report sections of the distillation methods (``self_distill``: one row per born-again generation; ``online``:
the co-trained teacher), rendered into the Markdown (and so the HTML) report by :func:`kdflow.report.to_markdown`."""

from __future__ import annotations

from typing import Any


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def self_distill_markdown(section: dict[str, Any]) -> list[str]:
    """The "Born-again generations" section: the rule, the selected generation, a row per generation."""
    rule = {"best_val": "the highest validation accuracy", "last": "the last generation"}.get(section["select"])
    lines = [
        "",
        "## Born-again generations",
        "",
        f"{section['generations']} generation(s) of the same architecture; generation k+1 learned from generation "
        f"k's stored logits. Gated and promoted: generation {section['selected_generation']} (version "
        f"{section['selected_version']}), by {rule or section['select']}. Every generation is registered with its "
        "lineage and SLA record; agreement is on the test split.",
        "",
        "| gen | version | parent | val accuracy | test accuracy | test ECE | teacher agreement | parent agreement "
        "| SLAs | selected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in section["table"]:
        lines.append(
            f"| {row['generation']} | {_f(row['version'])} | {row['parent_uri']} | {_f(row['val_accuracy'])} | "
            f"{_f(row['test_accuracy'])} | {_f(row['test_ece'])} | {_f(row['teacher_agreement'])} | "
            f"{_f(row['parent_agreement'])} | {'pass' if row['sla_passed'] else 'FAIL'} | "
            f"{'**yes**' if row['selected'] else ''} |"
        )
    return lines


def online_markdown(section: dict[str, Any]) -> list[str]:
    """The "Online (mutual) distillation" section: the co-trained teacher, its gate and where it is registered."""
    t = section["teacher"]
    promoted = f"became `{t['alias']}`" if t["promoted"] else f"stayed `challenger` ({t['reason']})"
    return [
        "",
        "## Online (mutual) distillation",
        "",
        f"Teacher and student were trained together (deep mutual learning, beta {section['beta']}, teacher learning "
        f"rate {section['teacher_lr_ratio']} x the student's) for {section['epochs']} epoch(s). The co-trained "
        f"teacher ({t['params']:,} parameters, best validation accuracy {_f(t['best_val_accuracy'])}, test accuracy "
        f"{_f(t['test_accuracy'])}) is registered as `{t['name']}` version {t['version']} and {promoted}; the "
        "student's teacher figures above are this teacher's.",
    ]


def method_markdown(report: dict[str, Any]) -> list[str]:
    """The method sections a report holds (none for plain distillation)."""
    lines: list[str] = []
    if report.get("self_distill"):
        lines += self_distill_markdown(report["self_distill"])
    if report.get("online"):
        lines += online_markdown(report["online"])
    return lines
