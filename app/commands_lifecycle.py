"""Life in production: simulated traffic, drift checks, retraining, recalibration, deployments and serving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from app.common import AS_OF_HELP, check_times, embedded_defaults, preflight, print_report, run, with_runner

drift_app = typer.Typer(no_args_is_help=True, help="Drift checks on production inference logs.")
simulate_app = typer.Typer(no_args_is_help=True, help="Simulated production traffic.")
deployments_app = typer.Typer(no_args_is_help=True, help="The Prefect deployments (schedules, drift trigger).")


@drift_app.command("check")
def drift_check(
    config: Path = typer.Option(..., help="Distillation config YAML"),
    as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
    retrain_via: str = typer.Option("auto", help="auto | event | subflow | none"),
) -> None:
    """Check the champion's recent traffic for drift; on a retrain decision emit the event and retrain."""
    embedded_defaults()
    from flows.drift import drift_check_flow

    check_times(as_of)
    preflight(config)
    result = run(drift_check_flow, str(config), as_of, retrain_via)
    typer.echo(f"{result['model']} v{result['version']} at {result['as_of']}: {result['status']}")
    if "served" in result:
        from kdflow.served import served_text

        typer.echo(f"served: {served_text(result['served'], result['version']) or 'no rows'}")
        typer.echo(f"  {result['scope']}")
    for name, value in result["signals"].items():
        typer.echo(f"  {name:<22} {'n/a' if value is None else f'{value:.4f}'}")
    typer.echo(f"decision: {result['decision']['action']} - {result['decision']['reason']}")
    if result.get("recalibration"):
        typer.echo(f"recalibration: {result['recalibration']['reason']}")
    if result.get("retrain"):
        reg = result["retrain"]["report"]["registration"]
        typer.echo(
            f"retrained: {reg['name']} v{reg['version']} aliases {', '.join(reg['aliases'])}"
            if reg.get("version")
            else "retrained: nothing registered"
        )


def retrain(
    config: Path = typer.Option(..., help="Distillation config YAML"),
    as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
    reason: str = typer.Option("manual", help="Why (recorded)"),
) -> None:
    """Distil again with recent production inputs added to the transfer set; gate also on recent traffic."""
    embedded_defaults()
    from flows.retrain import retrain_flow

    check_times(as_of)
    result = run(with_runner(retrain_flow, config), str(config), as_of, reason)
    print_report(result["report"])


def recalibrate(
    config: Path = typer.Option(..., help="Distillation config YAML"),
    as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
    since: Optional[str] = typer.Option(
        None, help="Use no traffic before this ISO date/time (UTC), e.g. the start of a known shift"
    ),
) -> None:
    """Refit the champion's temperature on the recent labeled window; register + promote only if ECE improves
    and every SLA still passes."""
    embedded_defaults()
    from flows.recalibrate import recalibration_flow

    check_times(as_of, since)
    preflight(config)
    outcome = run(recalibration_flow, str(config), as_of, since, "manual")
    typer.echo(outcome["reason"])
    if outcome.get("version"):
        typer.echo(f"registered and promoted version {outcome['version']} (parent {outcome['parent_version']})")


@simulate_app.command("traffic")
def simulate_traffic_cmd(
    config: Path = typer.Option(..., help="Distillation config YAML (model, teacher, logs)"),
    days: int = typer.Option(7, help="Days of traffic"),
    start: Optional[str] = typer.Option(None, help="First day (YYYY-MM-DD; default: today)"),
    rows_per_day: int = typer.Option(1000, help="Predictions per day"),
    schedule: str = typer.Option("stable", help="Drift preset or a YAML/JSON schedule file"),
    shadow_fraction: float = typer.Option(0.1, help="Share shadow-scored by the teacher"),
    label_fraction: float = typer.Option(0.2, help="Share whose label arrives later"),
    seed: int = typer.Option(0),
) -> None:
    """Score generated MNIST-1D traffic with the champion and write inference logs day by day."""
    from datetime import date

    from kdflow.config import DistillConfig, load_config
    from kdflow.registry import configure_tracking, load_torch_model, resolve
    from kdflow.simulate import simulate_traffic

    cfg = run(load_config, config, DistillConfig)
    configure_tracking(cfg.mlflow.tracking_uri)
    name = cfg.registry.student_name
    ref = run(resolve, f"models:/{name}@champion")
    teacher = run(load_torch_model, run(resolve, cfg.teacher_uri)) if shadow_fraction > 0 else None
    try:
        summary = simulate_traffic(
            run(load_torch_model, ref),
            name,
            ref.version,
            cfg.logs.root,
            date.fromisoformat(start) if start else date.today(),
            days,
            rows_per_day,
            schedule,
            shadow_fraction,
            label_fraction,
            teacher,
            seed,
            cfg.logs.endpoint_url,
        )
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    for day in summary["per_day"]:
        typer.echo(f"{day['date']}: {day['rows']} rows, accuracy {day['accuracy']:.4f}")
    typer.echo(f"logs: {cfg.logs.root}")


def serve(config: Path = typer.Option(..., help="Distillation config YAML the deployments run with")) -> None:
    """Serve the distill, retrain, drift-check and recalibration deployments (schedules and the drift trigger)
    from this process against the Prefect server at $PREFECT_API_URL."""
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho(
            "error: PREFECT_API_URL is not set; start a server (infra/start-stack.sh) and point "
            "PREFECT_API_URL at it (the embedded API cannot schedule)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    from flows.deployments import serve_all

    preflight(config)
    run(serve_all, str(config.resolve()))


def worker(
    pool: str = typer.Option("kdflow-pool", help="Work pool to poll (prefect.yaml's deployments use kdflow-pool)"),
    limit: Optional[int] = typer.Option(None, help="Most flow runs at once (default: unlimited)"),
    name: Optional[str] = typer.Option(None, help="Worker name (default: Prefect's)"),
) -> None:
    """Run a process worker on POOL against $PREFECT_API_URL; SIGTERM or Ctrl-C stops it within seconds
    (``prefect worker start`` ignores a SIGTERM until it is killed)."""
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho("error: PREFECT_API_URL is not set; a worker needs a Prefect server", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    from flows.deployments import run_worker

    run_worker(pool, limit, name)


@deployments_app.command("export")
def deployments_export(
    config: str = typer.Option(
        "infra/kdflow-production.yaml",
        help="Distillation config the deployments run with, as the "
        "worker sees it (relative to the checkout, or absolute)",
    ),
) -> None:
    """Print prefect.yaml for a work pool (``prefect deploy --all``): the same five deployments as ``kdflow
    serve``, crons from the config. The repository's prefect.yaml is this output for the default,
    infra/kdflow-production.yaml."""
    from flows.deployments import prefect_yaml

    typer.echo(run(prefect_yaml, config), nl=False)
