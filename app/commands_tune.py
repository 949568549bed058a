"""``kdflow tune``: Bayesian search of the student's training settings; prints where the best ones are written."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from app.common import GATE_FAILED_EXIT, embedded_defaults, fail, preflight, run


def tune(
    config: Path = typer.Option(..., help="Distillation config YAML (its tune: section declares the search space)"),
    trials: Optional[int] = typer.Option(None, min=1, help="Trials in all workers together (default: tune.trials)"),
    storage: Optional[str] = typer.Option(
        None,
        help="Optuna RDB storage shared by workers and processes, e.g. postgresql://user@host:5432/optuna "
        "(default: in memory, one worker)",
    ),
    study: Optional[str] = typer.Option(
        None,
        help="Study name; processes given the same --storage and --study share its trials "
        "(default: kdflow-tune-<run id>)",
    ),
    subset: Optional[float] = typer.Option(
        None, help="Tune on this stratified fraction of the train and transfer rows (default: tune.subset, else all)"
    ),
    workers: int = typer.Option(1, min=1, help="Concurrent workers (Prefect tasks), each running its share of trials"),
) -> None:
    """Search tune.space (TPE sampler, median pruner per epoch) for the most accurate student whose calibrated
    validation ECE meets sla.max_ece; write the best settings as a partial config. Exit 3 when no trial is feasible."""
    embedded_defaults()
    from kdflow.tune import check_tune_options

    run(check_tune_options, storage, workers, subset)
    preflight(config)
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.tune import tune_flow

    flow = tune_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(workers, 2)))
    result = run(flow, str(config), trials, storage, study, subset, workers)
    states = ", ".join(f"{n} {s.lower()}" for s, n in result["states"].items())
    typer.echo(f"study {result['study']}: {result['trials']} trial(s): {states}")
    if result["infeasible"]:
        typer.echo(f"infeasible (val ECE > sla.max_ece {result['max_ece']}): trials {result['infeasible']}")
    typer.echo(f"trials: {result['paths']['trials']}")
    best = result["best"]
    if best is None:
        fail("no complete trial met sla.max_ece: nothing to apply", GATE_FAILED_EXIT)
    typer.echo(f"best trial {best['number']}: val accuracy {best['value']:.4f}, val ECE {best['val_ece']:.4f}")
    for key, value in sorted(best["params"].items()):
        typer.echo(f"  train.{key}: {value}")
    typer.echo(f"best settings: {result['paths']['overlay']}")
    typer.echo(
        "apply: copy its train: keys into the train: section of your distill config (they replace the same keys), "
        "then run kdflow distill --config <that config>"
    )
