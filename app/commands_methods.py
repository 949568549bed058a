"""The distillation methods at the command line: born-again generations (``kdflow distill`` with
``self_distill.generations`` > 1) and online (mutual) distillation (``kdflow distill-online``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from app.common import GATE_FAILED_EXIT, embedded_defaults, print_report, run, with_runner


def distill_flow_for(config: Path) -> Any:
    """The flow ``kdflow distill`` runs for ``config``: the born-again flow when ``self_distill.generations`` > 1,
    else the distill flow (a bad config exits 2 here, before Prefect starts)."""
    from kdflow.config import DistillConfig, load_config

    if run(load_config, config, DistillConfig).self_distill.generations > 1:
        from flows.self_distill import self_distill_flow

        return self_distill_flow
    from flows.distill import distill_flow

    return distill_flow


def print_method_sections(report: dict[str, Any]) -> None:
    """Print the born-again generations table or the co-trained teacher's summary, when the report has one."""
    if report.get("self_distill"):
        section = report["self_distill"]
        typer.echo(f"\nborn-again generations (selected by {section['select']}):")
        typer.echo(
            f"  {'gen':>3}  {'version':>7}  {'val acc':>7}  {'test acc':>8}  {'ECE':>6}  {'agree T':>7}  {'agree P':>7}"
        )
        for r in section["table"]:
            typer.echo(
                f"  {r['generation']:>3}  {r['version']:>7}  {r['val_accuracy']:>7.4f}  {r['test_accuracy']:>8.4f}  "
                f"{r['test_ece']:>6.4f}  {r['teacher_agreement']:>7.4f}  {r['parent_agreement']:>7.4f}"
                f"{'  <- selected' if r['selected'] else ''}"
            )
    if report.get("online"):
        t = report["online"]["teacher"]
        state = f"promoted to {t['alias']}" if t["promoted"] else f"not promoted: {t['reason']}"
        typer.echo(
            f"\nco-trained teacher: {t['name']} v{t['version']}, test accuracy {t['test_accuracy']:.4f}, {state}"
        )


def distill_online(config: Path = typer.Option(..., help="Distillation config YAML with an online: section")) -> None:
    """Online (mutual) distillation for a domain with no teacher: co-train ``online.teacher`` and the student on the
    labeled data, register the teacher as ``teacher_uri``'s model, then gate, register and promote the student.
    Exit 3 when the student's SLA gate fails, 2 on a bad config."""
    embedded_defaults()
    from flows.online import online_flow
    from kdflow.config import DistillConfig, load_config
    from kdflow.config_methods import online_teacher

    run(online_teacher, run(load_config, config, DistillConfig), str(config))  # exit 2 before Prefect starts
    report = run(with_runner(online_flow, config), str(config))
    print_report(report)
    print_method_sections(report)
    if not report["gate_passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)
