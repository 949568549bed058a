"""The distillation report: what a run produced (:class:`DistillReport`), its provenance, one JSON document and
its Markdown and HTML renderings."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdflow import html
from kdflow.config import DistillConfig, config_hash
from kdflow.redact import redact
from kdflow.report_methods import method_markdown

if TYPE_CHECKING:
    from kdflow.data import Datasets
    from kdflow.ensemble import TeacherEnsemble
    from kdflow.evaluation import Calibration, Evaluation
    from kdflow.precompute import TeacherOutputs
    from kdflow.selective import CascadeFit
    from kdflow.sla import Gate
    from kdflow.train import TrainResult


@dataclass(frozen=True)
class Registration:
    """A candidate's registration: its version (``None`` when not registered, with ``reason``) and aliases."""

    name: str
    version: str | None = None
    aliases: tuple[str, ...] = ()
    model_uri: str | None = None
    reason: str | None = None

    def with_alias(self, alias: str) -> Registration:
        """The same registration with ``alias`` added (``champion`` once promoted)."""
        return replace(self, aliases=(*self.aliases, alias))

    def as_dict(self) -> dict[str, Any]:
        """The report's ``registration`` section."""
        if self.version is None:
            return {"version": None, "aliases": list(self.aliases), "reason": self.reason}
        return {"version": self.version, "aliases": list(self.aliases), "model_uri": self.model_uri, "name": self.name}


def describe_provenance(
    cfg: DistillConfig,
    ensemble: TeacherEnsemble,
    datasets: Datasets,
    teacher_outs: list[TeacherOutputs],
    temperature: float,
) -> dict[str, Any]:
    """What produced this student: teacher version(s) and weights, data fingerprints, logit stores, config hash,
    the calibrated and the training temperature, and what its reference profile describes."""
    primary = ensemble.primary
    provenance: dict[str, Any] = {
        "teacher_uri": primary.uri,
        "teacher_version": primary.version,
        "config_hash": config_hash(cfg),
        "data_fingerprints": datasets.fingerprints(),
        "logit_store_keys": teacher_outs[0].store_uris,
        "calibrated_temperature": temperature,
        "training_temperature": cfg.train.temperature,
        "reference": "validation",
    }
    if datasets.recent_labeled is not None:  # a retrain: the reference profile is the recent labeled traffic
        provenance["reference"] = "production"
        if cfg.data.recent_window:
            provenance["reference_window_start"], provenance["reference_window_end"] = cfg.data.recent_window
    if len(ensemble.teachers) > 1:
        provenance["teachers"] = [
            {**d, "logit_store_keys": out.store_uris} for d, out in zip(ensemble.describe(), teacher_outs)
        ]
        provenance["teacher_weighting"] = cfg.teacher_weighting
    return provenance


@dataclass(frozen=True, eq=False)
class DistillReport:
    """Everything one distill run produced, assembled once after promotion; :meth:`as_dict` is the report."""

    student_name: str
    run_id: str
    ensemble: TeacherEnsemble
    teacher_outs: list[TeacherOutputs]
    training: TrainResult
    calibration: Calibration
    evaluation: Evaluation
    gate: Gate
    registration: Registration
    provenance: dict[str, Any]
    promotion: dict[str, Any] | None = field(default=None)
    cascade: CascadeFit | None = field(default=None)  # None: serving.cascade disabled

    def registration_after_promotion(self) -> Registration:
        """The registration with ``champion`` among its aliases once promoted."""
        return self.registration.with_alias("champion") if self.promotion is not None else self.registration

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (report.json, the flow's return value)."""
        teacher = self.ensemble.primary
        report = {
            "student_name": self.student_name,
            "run_id": self.run_id,
            "teacher": {
                "uri": teacher.uri,
                "name": teacher.name,
                "version": teacher.version,
                "loaded": any(out.teacher_loaded for out in self.teacher_outs),
            },
            "teachers": [
                {**d, "loaded": out.teacher_loaded, "logits": {n: asdict(s) for n, s in out.stats.items()}}
                for d, out in zip(self.ensemble.describe(), self.teacher_outs)
            ],
            "logits": {n: asdict(s) for n, s in self.teacher_outs[0].stats.items()},
            "training": {
                "best_epoch": self.training.best_epoch,
                "best_val_accuracy": self.training.best_val_accuracy,
                "steps": self.training.steps,
                "history": self.training.history,
                **({"hard_examples": self.training.hard_examples} if self.training.hard_examples else {}),
            },
            "calibration": self.calibration.as_dict(),
            "evaluation": self.evaluation.as_dict(),
            "per_class": per_class_table(self.evaluation.as_dict()),
            "sla_checks": [c.as_dict() for c in self.gate.checks],
            "gate_passed": self.gate.passed,
            "decision": asdict(self.gate.decision),
            "registration": self.registration_after_promotion().as_dict(),
            "provenance": self.provenance,
        }
        if self.promotion is not None:
            report["promotion"] = self.promotion
        if self.cascade is not None:
            report["cascade"] = cascade_section(self.cascade)
        return report


TEACHER_SHARES = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)  # the report's system-accuracy-vs-teacher-call-share rows


def teacher_share_table(fit: CascadeFit, shares: tuple[float, ...] = TEACHER_SHARES) -> list[dict[str, float]]:
    """System accuracy when the least confident ``share`` of the validation rows go to the teacher, read off the
    fit's curve at coverage ``m / n`` with ``m = n - round(share * n)`` (``m = 0``: the teacher's accuracy)."""
    n, rows = fit.rows, []
    for share in shares:
        m = n - int(round(share * n))
        accuracy = fit.curve_system_accuracy[m - 1] if m > 0 else fit.teacher_accuracy
        rows.append({"teacher_share": share, "coverage": m / n, "system_accuracy": float(accuracy)})
    return rows


def cascade_section(fit: CascadeFit) -> dict[str, Any]:
    """The report's ``cascade`` section: the fit's scalars (:meth:`~kdflow.selective.CascadeFit.summary`) and
    :func:`teacher_share_table`."""
    return {**fit.summary(), "teacher_share_table": teacher_share_table(fit)}


def per_class_table(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's per-class table from its ``evaluation`` section: per true class of the test split, its rows and
    the student's and the teacher's accuracy on them (``None`` where an older report lacks the figure; NaN for a
    class without test rows)."""
    teacher = evaluation.get("teacher_per_class_accuracy") or {}
    rows = evaluation.get("per_class_rows") or {}
    return [
        {"class": c, "rows": rows.get(c), "student_accuracy": v, "teacher_accuracy": teacher.get(c)}
        for c, v in (evaluation.get("per_class_accuracy") or {}).items()
    ]


def _per_class_markdown(report: dict[str, Any]) -> list[str]:
    """The "Per-class accuracy" section; with ``sla.min_class_accuracy`` a column says which classes meet it."""
    table = report.get("per_class") or per_class_table(report["evaluation"])
    if not table:
        return []
    check = next((c for c in report.get("sla_checks", []) if c["name"] == "min_class_accuracy"), None)
    head = "| class | test rows | student accuracy | teacher accuracy |" + (" SLA |" if check else "")
    lines = ["", "## Per-class accuracy (test set)", "", head, "|---|---|---|---|" + ("---|" if check else "")]
    for r in table:
        cells = [r["class"], _fmt(r["rows"]) if r["rows"] is not None else "n/a", _fmt(r["student_accuracy"])]
        cells.append(_fmt(r["teacher_accuracy"]) if r["teacher_accuracy"] is not None else "n/a")
        if check:
            value = r["student_accuracy"]
            cells.append("n/a" if value != value else "PASS" if value >= check["threshold"] else "FAIL")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if check:
        lines += ["", f"Every class must reach `sla.min_class_accuracy` {check['threshold']:g}: {check.get('detail')}."]
    return lines


def _hard_examples_markdown(report: dict[str, Any]) -> list[str]:
    """The "Hard examples" section (only when the run emphasised hard examples)."""
    h = (report.get("training") or {}).get("hard_examples")
    if not h:
        return []
    how = f"repeated {h['factor']:g} times per epoch" if h["mode"] == "oversample" else f"loss weight {h['factor']:g}"
    rare = f", rare classes {h['rare_classes']}" if h["classes"] == "rare" else ""
    return [
        "",
        "## Hard examples",
        "",
        f"{h['selected_rows']:,} of {h['eligible_rows']:,} eligible training rows ({h['candidate_rows']:,} candidates, "
        f"classes {h['classes']}{rare}) selected by the teacher's entropy at T=1 (top {h['fraction']:g}), "
        f"{how} (mode `{h['mode']}`): mean entropy {_fmt(h['mean_entropy'])} nats against "
        f"{_fmt(h['candidate_mean_entropy'])} over all candidates; selected by split: "
        + ", ".join(f"{name} {n:,}" for name, n in h["by_split"].items())
        + ".",
    ]


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


def _served_line(ev: dict[str, Any]) -> list[str]:
    """Which artifact the student's figures were measured on (absent from reports of an older kdflow)."""
    if not ev.get("runtime"):
        return []
    return [
        f"Student figures measured on the served artifact in its `{ev['runtime']}` runtime (max |p - p_module| "
        f"{ev['artifact_max_abs_diff']:.1e} on the test split).",
        "",
    ]


def to_markdown(report: dict[str, Any]) -> str:
    """Render the report as Markdown: summary table, calibration, per-class accuracy, hard examples (when used), SLA
    checks, decision."""
    ev, cal = report["evaluation"], report["calibration"]
    lines = [
        f"# kdflow distillation report: {report['student_name']}",
        "",
        f"{_teachers_line(report)}; "
        f"flip rate {ev['flip_rate']:.4f}, accuracy gap {ev['teacher_gap']:.4f}, size ratio {ev['size_ratio']:.4f}.",
        "",
        *_served_line(ev),
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
    lines += _per_class_markdown(report) + _hard_examples_markdown(report)
    lines += ["", "## SLA gate", "", "| check | value | threshold | result |", "|---|---|---|---|"]
    for c in report["sla_checks"]:
        lines.append(
            f"| {c['name']} | {c['value']:.4f} | {c['op']} {c['threshold']} | {'PASS' if c['passed'] else 'FAIL'} |"
        )
    reg = report["registration"]
    lines += [
        "",
        f"**Gate: {'PASSED' if report['gate_passed'] else 'FAILED'}.** {report['decision']['reason']}.",
        "",
        f"Registered version: {reg.get('version') or 'none'}; aliases: {', '.join(reg.get('aliases', [])) or 'none'}.",
    ]
    if report.get("cascade"):
        lines += _cascade_markdown(report["cascade"])
    lines += method_markdown(report)  # born-again generations, online distillation (kdflow.report_methods)
    return "\n".join(lines) + "\n"


def _cascade_markdown(c: dict[str, Any]) -> list[str]:
    """The "Confidence fallback" section: the threshold and what it gives on the validation split."""
    met = "met" if c["target_met"] else "NOT met (threshold of the highest system accuracy)"
    lines = [
        "",
        "## Confidence fallback (validation set)",
        "",
        f"The student answers when its calibrated confidence is >= **{c['threshold']:.4f}**, the teacher otherwise: "
        f"coverage {c['coverage']:.4f}, deferral rate {c['deferral_rate']:.4f}, system accuracy "
        f"{c['system_accuracy']:.4f} (student alone {c['student_accuracy']:.4f}, teacher {c['teacher_accuracy']:.4f}). "
        f"Target system accuracy {c['target_accuracy']:.4f}: {met}. AURC {c['aurc']:.4f} on {c['rows']} rows.",
        "",
        "| teacher-call share | coverage | system accuracy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['teacher_share']:.0%} | {r['coverage']:.4f} | {r['system_accuracy']:.4f} |"
        for r in c["teacher_share_table"]
    ]
    return lines + ["", "Risk-coverage curve: `plots/risk_coverage.png` in the MLflow run."]


PLOT_CAPTIONS = {  # the run's plots/ artifacts shown in report.html, in this order
    "reliability_diagram.png": "Reliability diagram on the validation set, before and after temperature scaling",
    "student_training_curves.png": "Student training: losses and validation accuracy per epoch",
    "risk_coverage.png": "Risk-coverage curve of the confidence fallback (validation set)",
}


def _verdict_html(report: dict[str, Any]) -> html.Raw:
    """The decision first: gate verdict, its reason, what was registered and promoted."""
    reg, passed = report["registration"], report["gate_passed"]
    aliases = ", ".join(reg.get("aliases", [])) or "none"
    return html.Raw(
        f"<p class='verdict{'' if passed else ' fail'}'><strong>Gate {'PASSED' if passed else 'FAILED'}.</strong> "
        f"{html.escape(report['decision']['reason'])}.<br>Registered version: "
        f"{html.escape(reg.get('version') or 'none')}; aliases: {html.escape(aliases)}.</p>"
    )


def _training_html(report: dict[str, Any]) -> list[str]:
    """Training figures (when the report has them); the per-class table comes with the Markdown tables."""
    t = report.get("training")
    parts: list[str] = []
    if t:
        epochs = len(t.get("history") or [])
        parts += [
            html.Raw("<h2>Training</h2>"),
            html.Raw(
                f"<p>Best epoch {t['best_epoch']} of {epochs} (validation accuracy {_fmt(t['best_val_accuracy'])}), "
                f"{t['steps']:,} optimiser steps; training temperature "
                f"{_fmt((report.get('provenance') or {}).get('training_temperature'))}.</p>"
            ),
        ]
    return parts


def to_html(report: dict[str, Any], plots_dir: str | Path | None = None) -> str:
    """The report as one self-contained HTML page: the decision, the Markdown report's tables rendered
    (:func:`kdflow.html.render`), training figures, and the PNG plots found in ``plots_dir`` embedded."""
    title, _, rest = to_markdown(report).partition("\n")
    parts = [html.render(title), _verdict_html(report), html.render(rest), *_training_html(report)]
    pngs = sorted(Path(plots_dir).glob("*.png")) if plots_dir and Path(plots_dir).is_dir() else []
    order = list(PLOT_CAPTIONS)
    pngs.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    if pngs:
        parts.append(html.Raw("<h2>Plots</h2>"))
        parts += [html.figure(p, PLOT_CAPTIONS.get(p.name, p.stem.replace("_", " "))) for p in pngs]
    prov = report.get("provenance") or {}
    rows = [(k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in prov.items()]
    parts += [html.Raw("<h2>Provenance</h2>"), html.table(["", "value"], rows)]
    return html.page(f"kdflow distillation report: {report['student_name']}", *parts)


def write_report(report: dict[str, Any], directory: str | Path) -> tuple[Path, Path, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` (with the PNGs of ``directory/plots`` embedded)
    into ``directory``; return the three paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "report.json"
    md_path = directory / "report.md"
    html_path = directory / "report.html"
    report = redact(report)  # a URI with a password (a PostgreSQL tracking URI, say) never reaches a reader
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    md_path.write_text(to_markdown(report))
    html_path.write_text(to_html(report, directory / "plots"))
    return json_path, md_path, html_path
